#!/usr/bin/env python3
"""Decode with a fine-tuned ESPnet ASR model: greedy CTC, or ESPnet's beam search.

The arguments of ``python -m espnet2.bin.asr_inference`` plus ``--ctc_greedy`` (usually in the
decoding YAML): ``true`` runs batched best-path CTC decoding (exact for CTC-only models, far
faster than a beam search on CPU); otherwise all goes to ESPnet's ``asr_inference``.  Both write
``<output_dir>/1best_recog/{text,token,token_int,score}`` with this project's ASR task
(``windowed_conformer`` encoders).  An n-gram (``--ngram_file``) is queried by ESPnet's kenlm
scorer with the model's tokens (train it on text tokenised with them: ``ssl_asr.sh --use_ngram
true``); the ESPnet2 end token ``<sos/eos>`` is its ``</s>`` here, not ``<unk>``.

    python -m espnet2_birq.bin.asr_decode --config conf/decode_ctc_greedy.yaml \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.cer_ctc.ave.pth \\
        --data_path_and_name_and_type dump/fbank/test/feats.scp,speech,kaldi_ark \\
        --key_file exp/asr/decode/test/logdir/keys.1.scp --output_dir exp/asr/decode/test/logdir/output.1
"""

import contextlib
import itertools
import logging
import sys
from typing import List, Optional
from unittest import mock

import torch

from espnet2.bin import asr_inference
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter
from espnet2.torch_utils.device_funcs import to_device
from espnet2.utils.types import str2bool
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet2_birq.bin.asr_train import GuardedASRTask as ASRTask


def get_parser():
    parser = asr_inference.get_parser()
    parser.add_argument("--ctc_greedy", type=str2bool, default=False,
                        help="Best-path CTC decoding (batched) instead of ESPnet's beam search")
    return parser


def _ngram_scorers():
    """ESPnet's kenlm scorers, with the ESPnet2 end token read as the n-gram's ``</s>``."""
    from espnet.nets.scorers import ngram

    def with_end_token(base):
        class Scorer(base):
            def __init__(self, ngram_model, token_list):
                super().__init__(ngram_model, token_list)
                self.chardict = ["</s>" if t == "<sos/eos>" else t for t in self.chardict]
                special = {"<blank>", "</s>", "<s>", "<unk>"}
                missing = [t for t in self.chardict if t not in special and t not in self.lm]
                if missing:
                    logging.warning(f"{len(missing)} of {len(self.chardict)} units of the token list are not in "
                                    f"the n-gram (kenlm scores them as <unk>): {' '.join(missing[:20])}")

        return Scorer

    return ngram, with_end_token(ngram.NgramFullScorer), with_end_token(ngram.NgramPartScorer)


def collapse_ctc(best_path: List[int], blank_id: int) -> List[int]:
    """Merge repeated labels, then drop blanks (the CTC many-to-one map)."""
    return [label for label, _ in itertools.groupby(best_path) if label != blank_id]


def encode_each(model, speech: torch.Tensor, lengths: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """Encoder output ``(1, T, D)`` of each utterance of a padded batch; None for one too short
    for the encoder's subsampling (it spoils the batch: the others are then encoded one by one)."""
    try:
        encoded, encoded_lengths = model.encode(speech, lengths)
        return [encoded[i: i + 1, : int(n)] for i, n in enumerate(encoded_lengths)]
    except TooShortUttError:
        if len(lengths) == 1:
            return [None]
    return [encode_each(model, speech[i: i + 1, : int(n)], lengths[i: i + 1])[0] for i, n in enumerate(lengths)]


@torch.no_grad()
def greedy_ctc_decode(args) -> None:
    """Best-path CTC over ``args.data_path_and_name_and_type``, written like ESPnet."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    device = "cuda" if args.ngpu >= 1 else "cpu"
    model, train_args = ASRTask.build_model_from_file(args.asr_train_config, args.asr_model_file, device)
    model.eval()
    if model.ctc is None:
        raise ValueError(f"{args.asr_model_file} has no CTC head: use a beam config")
    tokenizer = build_tokenizer(token_type=args.token_type or train_args.token_type,
                                bpemodel=args.bpemodel or train_args.bpemodel)
    converter = TokenIDConverter(token_list=model.token_list)
    loader = ASRTask.build_streaming_iterator(
        args.data_path_and_name_and_type, dtype=args.dtype, batch_size=args.batch_size, key_file=args.key_file,
        num_workers=args.num_workers, preprocess_fn=ASRTask.build_preprocess_fn(train_args, False),
        collate_fn=ASRTask.build_collate_fn(train_args, False),
        allow_variable_data_keys=args.allow_variable_data_keys, inference=True)
    decoded, too_short = 0, []
    with DatadirWriter(args.output_dir) as writer:
        best = writer["1best_recog"]
        for keys, batch in loader:
            batch = to_device(batch, device)
            for key, encoded in zip(keys, encode_each(model, batch["speech"], batch["speech_lengths"])):
                token_int, score = [], 0.0
                if encoded is None:
                    too_short.append(key)
                else:
                    best_scores, best_path = model.ctc.log_softmax(encoded)[0].max(dim=-1)
                    token_int, score = collapse_ctc(best_path.tolist(), model.blank_id), float(best_scores.sum())
                tokens = converter.ids2tokens(token_int)
                best["token"][key] = " ".join(tokens)
                best["token_int"][key] = " ".join(map(str, token_int))
                best["score"][key] = str(score)
                best["text"][key] = tokenizer.tokens2text(tokens)
                decoded += 1
    if too_short:
        logging.warning(f"{len(too_short)} utterance(s) too short for the encoder's subsampling "
                        f"were decoded as empty: {', '.join(too_short[:10])}")
    logging.info(f"decoded {decoded} utterances into {args.output_dir}")


def main(cmd=None) -> None:
    print(" ".join(sys.argv), file=sys.stderr)
    parser = get_parser()
    args = parser.parse_args(cmd)
    if args.ctc_greedy and (args.lm_file or args.lm_train_config or args.word_lm_file or args.ngram_file):
        # refuse rather than write LM-free hypotheses into a directory named after the LM
        parser.error("--ctc_greedy true decodes without a language model, but an LM was given "
                     "(--lm_file/--lm_train_config/--word_lm_file/--ngram_file): use a beam-search "
                     "decoding config (ctc_greedy: false, beam_size, lm_weight)")
    if args.ctc_greedy:
        return greedy_ctc_decode(args)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("config", "ctc_greedy")}
    # Speech2Text builds the model and the n-gram scorers with its modules' names: for this
    # call they are this project's ASR task and the scorers above
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(asr_inference, "ASRTask", ASRTask))
        if kwargs.get("ngram_file"):
            ngram, full, part = _ngram_scorers()
            patches.enter_context(mock.patch.object(ngram, "NgramFullScorer", full))
            patches.enter_context(mock.patch.object(ngram, "NgramPartScorer", part))
        asr_inference.inference(**kwargs)


if __name__ == "__main__":
    main()
