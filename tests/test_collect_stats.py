"""ESPnet's collect_stats + aggregate_stats_dirs give the numbers ssl_asr.sh used before.

Stage 4 of ssl_asr.sh runs the SSL task's and the ASR task's ``--collect_stats true``
(split key files, one job each) and ``espnet2.bin.aggregate_stats_dirs``, as ESPnet's
asr.sh does. These tests run exactly those commands on a few utterances and compare
the global CMVN statistics and the shape files with what the project computed by hand
before: float64 sums over the kaldiio-read features (the former
``bin/compute_cmvn_stats.py``), ``utt frames,80`` speech shapes and
``utt ntokens,vocab`` text shapes.
"""

import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile

from espnet2_birq.bin import extract_fbank as ef

REPO_ROOT = Path(__file__).resolve().parents[1]
SSL_CONFIG = REPO_ROOT / "egs2" / "mini_synth" / "ssl1" / "conf" / "train_ssl_birq_tiny.yaml"
TEXTS = ["A B", "B A A", "AB BA", "A", "B B B A", "BA"]


def _corpus(root: Path):
    """Six utterances of different lengths: data dir, fbank dump, text."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    wavs, texts = [], []
    for i, text in enumerate(TEXTS):
        sec = 0.3 + 0.17 * i
        t = np.arange(int(sec * 16000)) / 16000
        x = 0.2 * (i + 1) / len(TEXTS) * np.sin(2 * np.pi * 250 * (i + 1) * t)
        x = x + 0.02 * rng.standard_normal(t.shape)
        soundfile.write(str(root / f"{i}.wav"), x, 16000, subtype="PCM_16")
        wavs.append(f"utt{i} {root / f'{i}.wav'}\n")
        texts.append(f"utt{i} {text}\n")
    (data / "wav.scp").write_text("".join(wavs))
    (data / "text").write_text("".join(texts))
    (data / "utt2spk").write_text("".join(f"utt{i} utt{i}\n" for i in range(len(TEXTS))))
    dump = root / "dump"
    ef.extract(str(data), str(dump), "feats.1")
    ef.merge(str(dump), 1, data_dir=str(data))
    (dump / "text").write_text((data / "text").read_text())
    tokens = root / "tokens.txt"
    tokens.write_text("<blank>\n<unk>\nA\nB\n<space>\n<sos/eos>\n")
    return data, dump, tokens


def _split(scp: Path, logdir: Path, split: str, nj: int):
    """Contiguous parts of a key file, as ESPnet's utils/split_scp.pl writes them."""
    lines = scp.read_text().splitlines(keepends=True)
    for j in range(nj):
        part = lines[j * len(lines) // nj:(j + 1) * len(lines) // nj]
        (logdir / f"{split}.{j + 1}.scp").write_text("".join(part))


def _collect_stats(module, out: Path, speech: str, nj: int, extra=(), skip_sum=False):
    # (the test's own copy of stage 4's commands, for the raw-audio case the recipe test
    # below does not cover)
    """asr.sh stage 10's pattern: nj collect_stats jobs, then aggregate_stats_dirs."""
    logdir = out / "logdir"
    logdir.mkdir(parents=True)
    scp = Path(speech.split(",")[0])
    _split(scp, logdir, "train", nj)
    _split(scp, logdir, "valid", nj)
    for j in range(1, nj + 1):
        cmd = [sys.executable, "-m", module, "--collect_stats", "true", "--ngpu", "0",
               "--train_data_path_and_name_and_type", speech,
               "--valid_data_path_and_name_and_type", speech,
               "--train_shape_file", str(logdir / f"train.{j}.scp"),
               "--valid_shape_file", str(logdir / f"valid.{j}.scp"),
               "--output_dir", str(logdir / f"stats.{j}"), *extra]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    agg = [sys.executable, "-m", "espnet2.bin.aggregate_stats_dirs", "--output_dir", str(out)]
    for j in range(1, nj + 1):
        agg += ["--input_dir", str(logdir / f"stats.{j}")]
    if skip_sum:
        agg.append("--skip_sum_stats")
    res = subprocess.run(agg, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]


def _mean_var(count, total, total_sq):
    mean = total / count
    return mean, total_sq / count - mean * mean


def _reference_stats(feats_scp: Path):
    """Float64 sums over every matrix, as the former compute_cmvn_stats.py computed them."""
    count, total, total_sq = 0, 0.0, 0.0
    for _, mat in kaldiio.load_scp_sequential(str(feats_scp)):
        mat = np.asarray(mat, dtype=np.float64)
        count += mat.shape[0]
        total = total + mat.sum(0)
        total_sq = total_sq + (mat * mat).sum(0)
    return count, total, total_sq


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus"))


def _check_stats(stats: Path, reference, rtol=1e-9, atol=1e-9):
    count, total, total_sq = reference
    with np.load(stats) as st:
        assert set(st.files) == {"count", "sum", "sum_square"}
        assert int(st["count"]) == count
        mean, var = _mean_var(int(st["count"]), st["sum"].astype(np.float64),
                              st["sum_square"].astype(np.float64))
    ref_mean, ref_var = _mean_var(count, total, total_sq)
    # --train_dtype float64: collect_stats then sums in float64 too. (With float32 data it
    # sums in float32, and var = E[x^2] - mean^2 loses digits: measured on these six
    # utterances, max |d var| 2.2e-4, 0.09 % of the variance.)
    diff_mean = np.abs(mean - ref_mean).max()
    diff_var = np.abs(var - ref_var).max()
    print(f"CMVN collect_stats vs float64: max |d mean| {diff_mean:.3g}, max |d var| {diff_var:.3g}")
    np.testing.assert_allclose(mean, ref_mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(var, ref_var, rtol=rtol, atol=atol)


def test_ssl_collect_stats_of_raw_audio_equals_the_fbank_cmvn(corpus, tmp_path):
    """--feats_type raw: the in-model kaldi_fbank frontend gives the same statistics."""
    data, dump, _ = corpus
    out = tmp_path / "ssl_stats_raw"
    _collect_stats("espnet2_birq.bin.ssl_train", out, f"{data}/wav.scp,speech,sound", nj=1,
                   extra=["--config", str(SSL_CONFIG), "--normalize", "none", "--train_dtype", "float64"])
    # float64 fbank of the audio vs the float32 fbank dump: float32 precision
    _check_stats(out / "train" / "feats_stats.npz", _reference_stats(dump / "feats.scp"), rtol=1e-5, atol=1e-4)
    # raw: the shape is the number of samples
    samples = {line.split()[0]: soundfile.info(line.split()[1]).frames
               for line in (data / "wav.scp").read_text().splitlines()}
    assert (out / "train" / "speech_shape").read_text() == "".join(f"{u} {n}\n" for u, n in samples.items())


def test_ssl_collect_stats_of_resampled_raw_audio_at_another_fs(corpus, tmp_path):
    """--feats_type raw --fs 8000 on 16 kHz audio: stage 2's check writes 8 kHz copies, and
    stage 4's ``--frontend_conf fs=8000`` (over the config's fs: 16000) makes the in-model
    frontend compute what stage 2's fbank at 8 kHz is: the same statistics."""
    data, _, _ = corpus
    raw, dump = tmp_path / "raw", tmp_path / "dump8k"
    ef.check_raw(str(data), str(raw), "wav.1", fs=8000)
    assert len((raw / "resampled.1").read_text().splitlines()) == len(TEXTS)
    ef.merge(str(raw), 1, data_dir=str(data), prefix="wav", kind="raw")
    ef.extract(str(data), str(dump), "feats.1", fs=8000)
    ef.merge(str(dump), 1, data_dir=str(data))
    out = tmp_path / "ssl_stats_raw"
    _collect_stats("espnet2_birq.bin.ssl_train", out, f"{raw}/wav.scp,speech,sound", nj=1,
                   extra=["--config", str(SSL_CONFIG), "--frontend_conf", "fs=8000",
                          "--normalize", "none", "--train_dtype", "float64"])
    _check_stats(out / "train" / "feats_stats.npz", _reference_stats(dump / "feats.scp"), rtol=1e-5, atol=1e-4)
    samples = {line.split()[0]: soundfile.info(line.split()[1]).frames
               for line in (data / "wav.scp").read_text().splitlines()}
    assert (out / "train" / "speech_shape").read_text() == "".join(
        f"{u} {round(n / 2)}\n" for u, n in samples.items())


def _old_text_shape(text: Path, vocab: int) -> str:
    """Stage 4's former hand-written char text shape: utt len(text),vocab."""
    lines = []
    for line in text.read_text().splitlines():
        utt, _, t = line.partition(" ")
        lines.append(f"{utt} {len(t.strip())},{vocab}\n")
    return "".join(lines)


def test_recipe_stage_4_collects_the_stats_and_skips_a_rerun(corpus, tmp_path):
    """ssl_asr.sh stage 4 itself: feats_stats.npz is the float64 CMVN of the pre-training set,
    GlobalMVN with it normalises the features, the shape files are the expected ones, and a
    re-run skips the finished work (redone when an input changes)."""
    import os

    import torch
    from espnet2.layers.global_mvn import GlobalMVN
    from test_recipe import SETS, make_recipe, run_ssl

    data, dump, tokens = corpus
    recipe = make_recipe(tmp_path)
    for dset in ("pretrain", "train", "dev"):
        d = recipe / "dump" / "fbank" / dset
        d.mkdir(parents=True)
        for name in ("feats.scp", "feats_shape", "text"):
            if dset != "pretrain" or name != "text":
                (d / name).write_text((dump / name).read_text())
    (recipe / "data" / "token_list" / "char").mkdir(parents=True)
    (recipe / "data" / "token_list" / "char" / "tokens.txt").write_text(tokens.read_text())
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    args = [*SETS, "--python", "python3", "--stage", "4", "--stop_stage", "4", "--nj", "2",
            "--ssl_config", SSL_CONFIG]
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    ssl_stats = recipe / "exp" / "ssl_stats_fbank"
    asr_stats = recipe / "exp" / "asr_stats_fbank_char"
    assert (ssl_stats / "logdir" / "stats.2").is_dir()  # two jobs, aggregated
    stats = ssl_stats / "train" / "feats_stats.npz"
    _check_stats(stats, _reference_stats(dump / "feats.scp"))
    for split in ("train", "valid"):
        assert (ssl_stats / split / "speech_shape").read_text() == (dump / "feats_shape").read_text()
        assert (asr_stats / split / "speech_shape").read_text() == (dump / "feats_shape").read_text()
        assert (asr_stats / split / "text_shape.char").read_text() == _old_text_shape(dump / "text", 6)
    # GlobalMVN (what training normalises with) on the features: zero mean, unit variance
    feats = torch.cat([torch.from_numpy(m.copy()) for _, m in kaldiio.load_scp_sequential(str(dump / "feats.scp"))])
    assert feats.double().mean(0).abs().max() > 1.0  # the features are far from normalised
    normalised, _ = GlobalMVN(stats_file=str(stats))(feats[None].clone(), torch.tensor([len(feats)]))
    assert normalised[0].double().mean(0).abs().max() < 1e-4
    assert (normalised[0].double().std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert os.access(ssl_stats / "run.sh", os.X_OK)
    # A re-run skips both; a changed token list redoes the ASR shapes only.
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SSL collect stats exp/ssl_stats_fbank: already done, skipping" in result.stdout
    assert "ASR collect stats exp/asr_stats_fbank_char: already done, skipping" in result.stdout
    (recipe / "data" / "token_list" / "char" / "tokens.txt").write_text(tokens.read_text() + "C\n")
    result = run_ssl(recipe, *args, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SSL collect stats exp/ssl_stats_fbank: already done, skipping" in result.stdout
    assert "ASR collect stats exp/asr_stats_fbank_char: inputs changed" in result.stdout
    assert (asr_stats / "train" / "text_shape.char").read_text() == _old_text_shape(dump / "text", 7)
