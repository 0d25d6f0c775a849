"""Token n-gram language models: the trainer (kaldingram), ESPnet's kenlm scorer through
espnet2_birq.bin.asr_decode, and ssl_asr.sh's n-gram stage with the real tools.

The decoding test trains a tiny character CTC model for one epoch (as
tests/test_finetune_decode.py does) and decodes it with ESPnet's beam search and an ARPA
file written here, whose units are the model's tokens.
"""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import pytest
import soundfile
import yaml

from espnet2_birq.bin.make_finetune_config import merge_configs

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs2" / "TEMPLATE" / "ssl1"
WORDS = ["ON", "OFF", "UP"]
TOKENS = ["<blank>", "<unk>", "<space>", "F", "N", "O", "P", "U", "<sos/eos>"]


def write_arpa(path: Path, unigrams: dict, bigrams: dict) -> None:
    """An ARPA bigram: ``unigrams`` token -> (log10 p, log10 backoff), ``bigrams``
    (a, b) -> log10 p."""
    lines = ["", "\\data\\", f"ngram 1={len(unigrams)}", f"ngram 2={len(bigrams)}", "",
             "\\1-grams:"]
    lines += [f"{p:.6f}\t{w}\t{b:.6f}" for w, (p, b) in unigrams.items()]
    lines += ["", "\\2-grams:"]
    lines += [f"{p:.6f}\t{a} {b}" for (a, b), p in bigrams.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines))


def up_only_arpa(path: Path, leave_out=()) -> None:
    """A bigram over the character tokens that all but forces "U P </s>"."""
    units = [t for t in TOKENS if t not in ("<blank>", "<sos/eos>") and t not in leave_out]
    share = math.log10(1.0 / (len(units) + 1))
    unigrams = {"<s>": (-99.0, 0.0), "</s>": (share, 0.0)}
    unigrams.update({t: (share, -6.0) for t in units})
    unigrams["<s>"] = (-99.0, -6.0)
    bigrams = {("<s>", "U"): -0.0001, ("U", "P"): -0.0001, ("P", "</s>"): -0.0001}
    write_arpa(path, unigrams, bigrams)


@pytest.fixture(scope="module")
def tiny_ctc_model(tmp_path_factory, single_thread):
    """A character CTC model trained for one epoch on six fbank utterances."""
    import torch

    from conftest import write_audio_set
    from espnet2_birq.bin import asr_train
    from espnet2_birq.features import kaldi_fbank

    root = tmp_path_factory.mktemp("ngram_model")
    audio = write_audio_set(root / "audio", num_utts=6)
    feats, texts = {}, {}
    for i, line in enumerate(Path(audio["wav_scp"]).read_text().splitlines()):
        uid, path = line.split(maxsplit=1)
        wav, fs = soundfile.read(path, dtype="float32")
        feats[uid] = kaldi_fbank(torch.from_numpy(wav), fs).numpy()
        texts[uid] = f"{WORDS[i % 3]} {WORDS[(i + 1) % 3]}"
    kaldiio.save_ark(str(root / "feats.ark"), feats, scp=str(root / "feats.scp"))
    (root / "text").write_text("".join(f"{k} {v}\n" for k, v in sorted(texts.items())))
    (root / "shape").write_text("".join(f"{k} {v.shape[0]},80\n" for k, v in sorted(feats.items())))
    (root / "text_shape").write_text("".join(f"{k} {len(v)}\n" for k, v in sorted(texts.items())))
    (root / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    config = merge_configs(
        {"encoder": "conformer",
         "encoder_conf": {"output_size": 32, "num_blocks": 2, "dropout_rate": 0.0},
         "normalize": "utterance_mvn", "normalize_conf": {}, "loss": [{"name": "best_rq"}]},
        {"model_conf": {"ctc_weight": 1.0}, "decoder": "none", "optim": "adam",
         "optim_conf": {"lr": 0.01}, "batch_type": "unsorted", "batch_size": 3, "max_epoch": 1,
         "num_workers": 0, "best_model_criterion": [["valid", "loss", "min"]],
         "keep_nbest_models": 1},
    )
    (root / "asr.yaml").write_text(yaml.safe_dump(config))
    data = []
    for split in ("train", "valid"):
        data += [f"--{split}_data_path_and_name_and_type", f"{root}/feats.scp,speech,kaldi_ark",
                 f"--{split}_data_path_and_name_and_type", f"{root}/text,text,text",
                 f"--{split}_shape_file", f"{root}/shape", f"--{split}_shape_file", f"{root}/text_shape"]
    asr_train.main(["--config", str(root / "asr.yaml"), "--output_dir", str(root / "exp"),
                    "--input_size", "80", "--token_type", "char", "--token_list", str(root / "tokens.txt"),
                    "--ngpu", "0", *data])
    return root


def read_text(path: Path) -> dict:
    return {k: v for k, _, v in (line.partition(" ") for line in path.read_text().splitlines())}


def test_ngram_steers_espnet_beam_search(tiny_ctc_model, tmp_path, caplog):
    """asr_decode hands --ngram_file to ESPnet's kenlm scorer over the model's tokens: an
    n-gram that all but forces "U P </s>" makes every hypothesis "UP" (the end token
    <sos/eos> is read as the n-gram's </s>), and units the n-gram lacks are named."""
    import logging

    from espnet2_birq.bin import asr_decode

    root = tiny_ctc_model
    arpa = tmp_path / "up.arpa"
    up_only_arpa(arpa, leave_out=("F",))
    common = ["--asr_train_config", f"{root}/exp/config.yaml",
              "--asr_model_file", f"{root}/exp/valid.loss.best.pth",
              "--data_path_and_name_and_type", f"{root}/feats.scp,speech,kaldi_ark", "--ngpu", "0",
              "--beam_size", "3", "--ctc_weight", "1.0"]
    with caplog.at_level(logging.WARNING):
        asr_decode.main([*common, "--ngram_file", str(arpa), "--ngram_weight", "30",
                         "--output_dir", str(tmp_path / "ngram")])
    hyps = read_text(tmp_path / "ngram" / "1best_recog" / "text")
    assert sorted(hyps) == sorted(read_text(root / "text"))
    assert set(hyps.values()) == {"UP"}, hyps
    assert "1 of 9 units of the token list are not in the n-gram" in caplog.text
    assert "not in the n-gram (kenlm scores them as <unk>): F" in caplog.text
    # without the n-gram the same search gives other hypotheses (the n-gram made them "UP")
    asr_decode.main([*common, "--output_dir", str(tmp_path / "plain")])
    assert set(read_text(tmp_path / "plain" / "1best_recog" / "text").values()) != {"UP"}


def test_end_token_is_the_ngram_sentence_end(tmp_path):
    """ESPnet's scorer maps only '<eos>' to '</s>'; asr_decode's maps '<sos/eos>' too."""
    import kenlm
    import torch

    from espnet2_birq.bin.asr_decode import _ngram_scorers

    arpa = tmp_path / "up.arpa"
    up_only_arpa(arpa)
    _, full, _ = _ngram_scorers()
    scorer = full(str(arpa), TOKENS)
    assert scorer.chardict[-1] == "</s>"
    state = scorer.init_state(None)
    p = TOKENS.index("P")
    # after <s> U P: the end token has the n-gram's P(</s> | P), not <unk>'s probability
    _, state = scorer.score(torch.tensor([8]), state, torch.zeros(1))
    _, state = scorer.score(torch.tensor([8, TOKENS.index("U")]), state, torch.zeros(1))
    scores, _ = scorer.score(torch.tensor([8, TOKENS.index("U"), p]), state, torch.zeros(1))
    assert scores[-1].item() == pytest.approx(-0.0001, abs=1e-4)
    model = kenlm.Model(str(arpa))
    assert scores[-1].item() == pytest.approx(model.score("U P", bos=True, eos=True) - model.score("U P", bos=True, eos=False), abs=1e-4)


def test_kaldingram_writes_an_arpa_kenlm_reads(tmp_path):
    """The pip trainer ssl_asr.sh uses without lmplz: a 3-gram over BPE-like UTF-8 pieces that
    kenlm loads with every piece intact and whose distributions sum to one."""
    import kenlm

    text = tmp_path / "tokens.txt"
    lines = ["▁THE ▁CAT ▁SAT", "▁THE ▁DOG ▁SAT ▁DOWN", "▁A ▁CAT ▁SAT ▁DOWN", "▁THE ▁CAT"] * 3
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    arpa = tmp_path / "3gram.arpa"
    subprocess.run([sys.executable, "-m", "kaldingram.cli", "train", "--ngram-order", "3",
                    "--text", str(text), "--lm", str(arpa)], check=True, capture_output=True)
    model = kenlm.Model(str(arpa))
    assert model.order == 3
    vocab = sorted({w for line in lines for w in line.split()})
    assert all(w in model for w in vocab)
    for context in (["<s>"], ["<s>", "▁THE"], ["▁CAT", "▁SAT"]):
        state, out = kenlm.State(), kenlm.State()
        model.NullContextWrite(state)
        for w in context:
            model.BaseScore(state, w, out)
            state, out = out, kenlm.State()
        total = sum(10 ** model.BaseScore(state, w, kenlm.State()) for w in vocab + ["</s>"])
        assert total == pytest.approx(1.0, abs=1e-4), context
    # seen continuations are likelier than unseen ones
    assert model.score("▁THE ▁CAT ▁SAT") > model.score("▁SAT ▁THE ▁A")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("flock") is None, reason="needs bash, flock")
@pytest.mark.parametrize("trainer", ["kaldingram", "lmplz"])
def test_ssl_sh_ngram_stage_with_the_real_tools(tmp_path, trainer):
    """ssl_asr.sh stage 6 with --use_ngram true and this interpreter: the LM text is tokenised
    by ESPnet's tokenize_text with the BPE model and kaldingram (or kenlm's lmplz, when on
    PATH) trains a 3-gram over the pieces, which kenlm loads (fine-tuning is marked done,
    so stage 6 trains the n-gram only)."""
    import kenlm
    import sentencepiece as spm

    recipe = tmp_path / "egs2" / "corpus" / "ssl1"
    recipe.mkdir(parents=True)
    for name in ("ssl_asr.sh", "path.sh", "cmd.sh"):
        (recipe / name).symlink_to(TEMPLATE / name)
    (recipe / "utils").symlink_to(REPO / "utils")
    sentences = ["TURN THE LIGHT ON", "TURN THE RADIO OFF", "SWITCH THE LIGHT OFF",
                 "THE RADIO IS ON", "SWITCH IT ON"]
    train = recipe / "data" / "train"
    train.mkdir(parents=True)
    (train / "text").write_text("".join(f"u{i} {s}\n" for i, s in enumerate(sentences)))
    other = recipe / "data" / "local" / "other_text" / "text"
    other.parent.mkdir(parents=True)
    other.write_text("".join(f"lm{i} {s}\n" for i, s in enumerate(sentences * 4)))
    token_dir = recipe / "data" / "token_list" / "bpe_unigram30"
    token_dir.mkdir(parents=True)
    spm.SentencePieceTrainer.Train(
        input=str(train / "text"), model_prefix=str(token_dir / "bpe"), vocab_size=30,
        model_type="unigram", character_coverage=1.0, minloglevel=2)
    (token_dir / "tokens.txt").write_text("<blank>\n<unk>\n<sos/eos>\n")
    conf = recipe / "conf"
    conf.mkdir()
    (conf / "train_asr.yaml").write_text("{}\n")
    (conf / "train_ssl.yaml").write_text("{}\n")
    asr_exp = recipe / "exp" / "asr_train_asr_scratch_bpe30"
    asr_exp.mkdir(parents=True)
    (asr_exp / ".done").write_text("finished\n")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    if trainer == "lmplz":
        if shutil.which("lmplz") is None:
            pytest.skip("kenlm's lmplz is not on PATH")
        path = f"{Path(shutil.which('lmplz')).parent}:{path}"
    env = dict(os.environ, cmd_backend="local", PATH=path)
    result = subprocess.run(
        ["./ssl_asr.sh", "--pretrain_set", "train", "--train_set", "train", "--valid_set", "train",
         "--test_sets", "train", "--python", sys.executable, "--ngpu", "0", "--pretrained_model", "none",
         "--token_type", "bpe", "--nbpe", "30", "--asr_config", "conf/train_asr.yaml",
         "--ssl_config", "conf/train_ssl.yaml", "--use_ngram", "true", "--ngram_trainer", trainer,
         "--lm_train_text", "data/train/text data/local/other_text/text",
         "--stage", "6", "--stop_stage", "6"],
        cwd=recipe, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    ngram = recipe / "exp" / "ngram_bpe_unigram30"
    sp = spm.SentencePieceProcessor(model_file=str(token_dir / "bpe.model"))
    tokens = (ngram / "data" / "train.tokens").read_text(encoding="utf-8").splitlines()
    assert tokens[0] == " ".join(sp.encode(sentences[0], out_type=str))
    assert len(tokens) == 25
    model = kenlm.Model(str(ngram / "3gram.arpa"))
    assert model.order == 3
    if trainer == "lmplz" and shutil.which("build_binary", path=path):
        assert kenlm.Model(str(ngram / "3gram.bin")).order == 3
    assert all(p in model for p in sp.encode("SWITCH THE RADIO OFF", out_type=str))
    assert "n-gram: 1-grams:" in result.stdout and (ngram / ".done").is_file()
