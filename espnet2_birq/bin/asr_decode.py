#!/usr/bin/env python3
"""Decode with a fine-tuned ESPnet ASR model: greedy CTC, or ESPnet's beam search.

Takes the arguments of ``python -m espnet2.bin.asr_inference`` plus ``--ctc_greedy``
(usually set in the decoding YAML). With ``ctc_greedy: true`` it runs batched
best-path CTC decoding (arg-max per frame, repeats merged, blanks removed), which is
exact for CTC-only models and far faster than a beam search on CPU. Otherwise every
argument goes unchanged to ESPnet's ``asr_inference`` (beam search, CTC/attention,
language models, ``--ngram_file``/``--ngram_weight``). Both write ESPnet's layout:
``<output_dir>/1best_recog/{text,token,token_int,score}``.

An n-gram (``--ngram_file``, ARPA or kenlm binary) is queried by ESPnet's kenlm scorer
with the model's OUTPUT TOKENS (BPE pieces or characters), so it must be trained on text
tokenised with the model's token list (``ssl.sh --use_ngram true`` does). ESPnet's scorer
maps only a token named ``<eos>`` to the n-gram's ``</s>``; the end token of an ESPnet2
token list is ``<sos/eos>``, which kenlm would score as ``<unk>`` (log10 -100 in an ARPA
without ``<unk>``, so hypotheses could hardly end). Here ``<sos/eos>`` is ``</s>`` too,
and units of the token list that the n-gram has never seen are named in a warning.

    python -m espnet2_birq.bin.asr_decode --config conf/decode_ctc_greedy.yaml \
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.cer_ctc.ave.pth \
        --data_path_and_name_and_type dump/fbank/test/feats.scp,speech,kaldi_ark \
        --key_file exp/asr/decode/test/logdir/keys.1.scp --output_dir exp/asr/decode/test/logdir/output.1
"""

import contextlib
import logging
import sys
from unittest import mock
from typing import List

import torch

from espnet2.bin import asr_inference
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter
from espnet2.torch_utils.device_funcs import to_device
from espnet2.utils.types import str2bool
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError

# ESPnet's ASR task plus this project's encoder choices (windowed_conformer): greedy
# decoding builds the model with it, and ESPnet's beam search is handed it too.
from espnet2_birq.bin.asr_train import GuardedASRTask as ASRTask


def get_parser():
    parser = asr_inference.get_parser()
    parser.add_argument(
        "--ctc_greedy",
        type=str2bool,
        default=False,
        help="Best-path CTC decoding (batched) instead of ESPnet's beam search",
    )
    return parser


def _ngram_scorers():
    """ESPnet's kenlm scorers with the ESPnet2 end token read as the n-gram's ``</s>``."""
    from espnet.nets.scorers import ngram

    def fix(scorer):
        scorer.chardict = ["</s>" if t == "<sos/eos>" else t for t in scorer.chardict]
        special = {"<blank>", "</s>", "<s>", "<unk>"}
        missing = [t for t in scorer.chardict if t not in special and t not in scorer.lm]
        if missing:
            logging.warning(
                f"{len(missing)} of {len(scorer.chardict)} units of the token list are not in "
                f"the n-gram (kenlm scores them as <unk>): {' '.join(missing[:20])}"
            )

    class NgramFullScorer(ngram.NgramFullScorer):
        def __init__(self, ngram_model, token_list):
            super().__init__(ngram_model, token_list)
            fix(self)

    class NgramPartScorer(ngram.NgramPartScorer):
        def __init__(self, ngram_model, token_list):
            super().__init__(ngram_model, token_list)
            fix(self)

    return ngram, NgramFullScorer, NgramPartScorer


def collapse_ctc(best_path: List[int], blank_id: int) -> List[int]:
    """Merge repeated labels, then drop blanks (the CTC many-to-one map)."""
    tokens = []
    previous = None
    for label in best_path:
        if label != previous and label != blank_id:
            tokens.append(label)
        previous = label
    return tokens


@torch.no_grad()
def greedy_ctc_decode(args) -> None:
    """Best-path CTC over ``args.data_path_and_name_and_type``, written like ESPnet."""
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    device = "cuda" if args.ngpu >= 1 else "cpu"
    model, train_args = ASRTask.build_model_from_file(
        args.asr_train_config, args.asr_model_file, device
    )
    model.eval()
    if model.ctc is None:
        raise ValueError(f"{args.asr_model_file} has no CTC head: use a beam config")
    token_type = args.token_type or train_args.token_type
    bpemodel = args.bpemodel or train_args.bpemodel
    tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel)
    converter = TokenIDConverter(token_list=model.token_list)
    loader = ASRTask.build_streaming_iterator(
        args.data_path_and_name_and_type,
        dtype=args.dtype,
        batch_size=args.batch_size,
        key_file=args.key_file,
        num_workers=args.num_workers,
        preprocess_fn=ASRTask.build_preprocess_fn(train_args, False),
        collate_fn=ASRTask.build_collate_fn(train_args, False),
        allow_variable_data_keys=args.allow_variable_data_keys,
        inference=True,
    )
    num_decoded = 0
    too_short = []
    with DatadirWriter(args.output_dir) as writer:
        best = writer["1best_recog"]
        for keys, batch in loader:
            batch = to_device(batch, device)
            try:
                encoded, encoded_lengths = model.encode(
                    batch["speech"], batch["speech_lengths"]
                )
            except TooShortUttError:
                # One short input spoils the padded batch: decode one at a time.
                encoded, encoded_lengths = None, None
            for index, key in enumerate(keys):
                if encoded is None:
                    length = int(batch["speech_lengths"][index])
                    try:
                        enc, enc_len = model.encode(
                            batch["speech"][index : index + 1, :length],
                            batch["speech_lengths"][index : index + 1],
                        )
                    except TooShortUttError:
                        too_short.append(key)
                        enc = None
                else:
                    enc = encoded[index : index + 1]
                    enc_len = encoded_lengths[index : index + 1]
                if enc is None:
                    token_int = []
                    score = 0.0
                else:
                    log_probs = model.ctc.log_softmax(enc)[0, : int(enc_len[0])]
                    best_scores, best_path = log_probs.max(dim=-1)
                    token_int = collapse_ctc(best_path.tolist(), model.blank_id)
                    score = float(best_scores.sum())
                tokens = converter.ids2tokens(token_int)
                best["token"][key] = " ".join(tokens)
                best["token_int"][key] = " ".join(map(str, token_int))
                best["score"][key] = str(score)
                best["text"][key] = tokenizer.tokens2text(tokens)
                num_decoded += 1
    if too_short:
        logging.warning(
            f"{len(too_short)} utterance(s) too short for the encoder's subsampling "
            f"were decoded as empty: {', '.join(too_short[:10])}"
        )
    logging.info(f"decoded {num_decoded} utterances into {args.output_dir}")


def main(cmd=None) -> None:
    print(" ".join(sys.argv), file=sys.stderr)
    parser = get_parser()
    args = parser.parse_args(cmd)
    if args.ctc_greedy and (args.lm_file or args.lm_train_config or args.word_lm_file or args.ngram_file):
        # best-path decoding has no search for a language model to steer: refuse rather
        # than write LM-free hypotheses into a directory named after the LM
        parser.error(
            "--ctc_greedy true decodes without a language model, but an LM was given "
            "(--lm_file/--lm_train_config/--word_lm_file/--ngram_file): use a beam-search "
            "decoding config (ctc_greedy: false, beam_size, lm_weight)"
        )
    if args.ctc_greedy:
        greedy_ctc_decode(args)
        return
    kwargs = vars(args)
    kwargs.pop("config", None)
    kwargs.pop("ctc_greedy")
    # asr_inference's Speech2Text builds the model with its module's ASRTask, whose
    # encoder choices are ESPnet's; this process hands it the task with ours instead
    # (same build for ESPnet's encoders), so a windowed_conformer model decodes too.
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(asr_inference, "ASRTask", ASRTask))
        if kwargs.get("ngram_file"):
            # Speech2Text imports the n-gram scorers when it builds them: the module's
            # names are replaced for that time by the subclasses above (end token </s>).
            ngram, full, part = _ngram_scorers()
            patches.enter_context(mock.patch.object(ngram, "NgramFullScorer", full))
            patches.enter_context(mock.patch.object(ngram, "NgramPartScorer", part))
        asr_inference.inference(**kwargs)


if __name__ == "__main__":
    main()
