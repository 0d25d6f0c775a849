"""A broken run never reports success (issue: recipes that never report success on a
broken run): bad audio in every stage, stale markers, concurrent runs, odd paths.

Stages 1-4 run with the real tools on a few generated wavs (seconds); training
stages run with the fake interpreter of test_recipe.py.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import synth_utterance
from test_recipe import SETS, fake_python, make_recipe, run_ssl

PYTHON = sys.executable
# one data set in every role: each stage runs once (the real tools import torch: seconds each)
ONE_SET = ["--pretrain_set", "train", "--train_set", "train", "--valid_set", "train", "--test_sets", "train"]
# stage 4 builds the SSL model for ESPnet's collect_stats: the demo's tiny config
SSL_CONFIG = Path(__file__).resolve().parents[1] / "egs2" / "mini_synth" / "ssl1" / "conf" / "train_ssl_birq_tiny.yaml"


def write_corpus(data: Path, audio_dir: Path, names, bad=None, text=True, seed=0):
    """A Kaldi data dir of good generated wavs; ``bad`` maps utt -> a broken audio kind."""
    rng = np.random.default_rng(seed)
    bad = bad or {}
    audio_dir.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    wav, utt2spk, txt = [], [], []
    for name in sorted(list(names) + list(bad)):
        path = audio_dir / f"{name}.wav"
        kind = bad.get(name)
        if kind is None:
            soundfile.write(path, synth_utterance(rng, 0.6), 16000, subtype="PCM_16")
        elif kind == "stereo":
            soundfile.write(path, np.stack([synth_utterance(rng, 0.6)] * 2, axis=1), 16000, subtype="PCM_16")
        elif kind == "short":
            soundfile.write(path, synth_utterance(rng, 0.6)[:100], 16000, subtype="PCM_16")
        elif kind == "8k":
            soundfile.write(path, synth_utterance(rng, 0.6, 8000), 8000, subtype="PCM_16")
        elif kind == "nan":
            audio = synth_utterance(rng, 0.6)
            audio[100] = np.nan
            soundfile.write(path, audio, 16000, subtype="FLOAT")
        elif kind == "corrupt":
            path.write_bytes(b"RIFF\x00\x00garbage" * 10)
        elif kind == "empty":
            soundfile.write(path, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
        elif kind == "nolength":  # FLAC whose STREAMINFO says 0 total samples ("unknown")
            path = path.with_suffix(".flac")
            soundfile.write(path, synth_utterance(rng, 0.6), 16000, format="FLAC")
            header = bytearray(path.read_bytes())
            header[21] &= 0xF0
            header[22:26] = b"\0\0\0\0"
            path.write_bytes(bytes(header))
        wav.append(f"{name} {path}")
        utt2spk.append(f"{name} {name.split('-')[0]}")
        txt.append(f"{name} A B")
    (data / "wav.scp").write_text("\n".join(wav) + "\n")
    (data / "utt2spk").write_text("\n".join(utt2spk) + "\n")
    spk2utt = {}
    for line in utt2spk:
        utt, spk = line.split()
        spk2utt.setdefault(spk, []).append(utt)
    (data / "spk2utt").write_text("".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk2utt.items())))
    if text:
        (data / "text").write_text("\n".join(txt) + "\n")


def local_data_sh(recipe: Path, body: str):
    (recipe / "local").mkdir(exist_ok=True)
    (recipe / "local" / "data.sh").write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)


@pytest.fixture
def recipe(tmp_path):
    return make_recipe(tmp_path)


def keys(path: Path):
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------
# --skip_bad_audio through every stage
# --------------------------------------------------------------------------


def test_skip_bad_audio_drops_utterances_from_every_later_input(recipe):
    good = [f"s{i}-u{i}" for i in range(3)]
    write_corpus(recipe / "data" / "train", recipe / "audio", good,
                 bad={"s9-stereo": "stereo", "s9-short": "short", "s9-nan": "nan"})
    result = run_ssl(recipe, *ONE_SET, "--python", PYTHON, "--nj", "2", "--stage", "2", "--stop_stage", "4",
                     "--skip_bad_audio", "true", "--feats_normalize", "config", "--ssl_config", SSL_CONFIG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    dump = recipe / "dump" / "fbank" / "train"
    assert sorted(keys(dump / "bad_utts")) == ["s9-nan", "s9-short", "s9-stereo"]
    assert "3 of 6 utterances of data/train skipped" in result.stdout
    assert keys(dump / "text") == keys(dump / "feats.scp") == sorted(good)
    stats = recipe / "exp" / "asr_stats_fbank_char"
    for split in ("train", "valid"):
        assert keys(stats / split / "text_shape.char") == keys(stats / split / "speech_shape") == sorted(good)
    assert "NaN or inf samples" in (dump / "bad_utts").read_text()


def test_raw_mode_checks_the_audio_before_training(recipe):
    write_corpus(recipe / "data" / "pretrain", recipe / "audio", ["s0-a", "s1-b"],
                 bad={"s9-stereo": "stereo", "s9-short": "short"}, text=False)
    write_corpus(recipe / "data" / "train", recipe / "audio_t", ["s0-c", "s1-d"])
    args = ["--pretrain_set", "pretrain", "--train_set", "train", "--valid_set", "train", "--test_sets", "train",
            "--python", PYTHON, "--nj", "1", "--stage", "2", "--stop_stage", "4",
            "--feats_type", "raw", "--feats_normalize", "config", "--ssl_config", SSL_CONFIG]
    result = run_ssl(recipe, *args)
    assert result.returncode != 0
    # every bad file of the set at once, named, with a fix that works
    assert "s9-stereo" in result.stderr and "s9-short" in result.stderr and "2 utterance(s) with bad audio" in result.stderr
    assert "--skip_bad_audio true" in result.stderr
    result = run_ssl(recipe, *args, "--skip_bad_audio", "true")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    raw = recipe / "dump" / "raw" / "pretrain"
    assert keys(raw / "wav.scp") == ["s0-a", "s1-b"]
    assert keys(recipe / "exp" / "ssl_stats_raw" / "train" / "speech_shape") == ["s0-a", "s1-b"]


def test_raw_mode_resamples_another_sampling_rate_and_counts_it(recipe):
    """Audio at another rate than --fs is resampled in stage 2 (as ESPnet's recipes do),
    with its count in a warning and the recordings listed, never refused or dropped."""
    write_corpus(recipe / "data" / "pretrain", recipe / "audio", ["s0-a"], bad={"s9-low": "8k"}, text=False)
    write_corpus(recipe / "data" / "train", recipe / "audio_t", ["s0-c"])
    result = run_ssl(recipe, "--pretrain_set", "pretrain", "--train_set", "train", "--valid_set", "train",
                     "--test_sets", "train", "--python", PYTHON, "--nj", "1", "--stage", "2", "--stop_stage", "2",
                     "--feats_type", "raw", "--skip_bad_audio", "true", "--feats_normalize", "config")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "1 of 2 recordings of data/pretrain are not at 16000 Hz and were resampled" in out
    listed = (recipe / "dump" / "raw" / "pretrain" / "resampled").read_text()
    assert listed.split()[:2] == ["s9-low", "8000"]
    assert keys(recipe / "dump" / "raw" / "pretrain" / "wav.scp") == ["s0-a", "s9-low"]


def test_stage1_skip_option_drops_unreadable_and_empty_recordings(recipe):
    body = f"""
mkdir -p data
rm -rf data/train
cp -r {recipe}/../corpus_src data/train
"""
    write_corpus(recipe / ".." / "corpus_src", recipe / "audio", ["s0-a", "s1-b"],
                 bad={"s9-corrupt": "corrupt", "s9-empty": "empty", "s9-nolength": "nolength"})
    local_data_sh(recipe, body)
    args = [*ONE_SET, "--python", PYTHON, "--nj", "1", "--stage", "1", "--stop_stage", "1"]
    result = run_ssl(recipe, *args)
    assert result.returncode != 0
    assert "3 recording(s) could not be read or are empty" in result.stderr
    assert "s9-corrupt" in result.stderr and "s9-empty" in result.stderr and "s9-nolength" in result.stderr
    assert "header gives no length" in result.stderr
    assert "--skip_bad_audio true" in result.stderr
    for _ in range(2):  # re-running stage 1 rebuilds data/ and drops them again: no loop
        result = run_ssl(recipe, *args, "--skip_bad_audio", "true")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert keys(recipe / "data" / "train" / "wav.scp") == ["s0-a", "s1-b"]
        assert keys(recipe / "data" / "train" / "text") == ["s0-a", "s1-b"]
        assert keys(recipe / "data" / "train" / "bad_audio") == ["s9-corrupt", "s9-empty", "s9-nolength"]
        durations = [float(line.split()[1]) for line in (recipe / "data" / "train" / "utt2dur").read_text().splitlines()]
        assert all(0 < d < 1 for d in durations)


# --------------------------------------------------------------------------
# Stale markers
# --------------------------------------------------------------------------


def test_changed_data_redoes_features_and_refuses_a_trained_model(recipe):
    write_corpus(recipe / "data" / "train", recipe / "audio", ["s0-a", "s1-b"])
    args = [*ONE_SET, "--python", PYTHON, "--nj", "1", "--feats_normalize", "config", "--stage", "2", "--stop_stage", "2"]
    assert run_ssl(recipe, *args).returncode == 0
    result = run_ssl(recipe, *args)
    assert "fbank train: already done, skipping" in result.stdout
    # stage 1 re-run on changed data: one more utterance
    write_corpus(recipe / "data" / "train", recipe / "audio", ["s0-a", "s1-b", "s2-c"])
    result = run_ssl(recipe, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "inputs changed since dump/fbank/train/.done was written, redoing" in result.stdout
    assert keys(recipe / "dump" / "fbank" / "train" / "feats.scp") == ["s0-a", "s1-b", "s2-c"]

    # a finished pre-training whose shape files changed is refused, with what to do
    (recipe / "conf").mkdir()
    (recipe / "conf" / "train_ssl_birq_conformer.yaml").write_text("{}\n")
    stats = recipe / "exp" / "ssl_stats_fbank"
    for split in ("train", "valid"):
        (stats / split).mkdir(parents=True, exist_ok=True)
        (stats / split / "speech_shape").write_text("s0-a 50,80\n")
    exp = recipe / "exp" / "ssl_train_ssl_birq_conformer"
    exp.mkdir(parents=True)
    (exp / "valid.best_rq_acc.ave.pth").write_text("")
    fake = fake_python(recipe.parent)
    stage5 = [*ONE_SET, "--python", fake, "--feats_normalize", "config", "--stage", "5", "--stop_stage", "5"]
    assert run_ssl(recipe, *stage5).returncode == 0
    assert (exp / ".done").exists()
    assert "already done, skipping" in run_ssl(recipe, *stage5).stdout
    (stats / "train" / "speech_shape").write_text("s0-a 50,80\ns1-b 60,80\n")
    result = run_ssl(recipe, *stage5)
    assert result.returncode != 0
    assert "its inputs changed since" in result.stderr and "exp/ssl_stats_fbank/train/speech_shape" in result.stderr
    assert "pass another --ssl_tag" in result.stderr
    assert "Successfully finished" not in result.stdout + result.stderr


# --------------------------------------------------------------------------
# Concurrent runs
# --------------------------------------------------------------------------


def test_second_run_on_the_same_experiment_refuses_naming_the_holder(recipe, tmp_path):
    (recipe / "conf").mkdir()
    (recipe / "conf" / "train_ssl_birq_conformer.yaml").write_text("{}\n")
    stats = recipe / "exp" / "ssl_stats_fbank"
    for split in ("train", "valid"):
        (stats / split).mkdir(parents=True)
        (stats / split / "speech_shape").write_text("u 5,80\n")
    for name in ("pretrain", "dev"):
        (recipe / "dump" / "fbank" / name).mkdir(parents=True)
        (recipe / "dump" / "fbank" / name / "feats.scp").write_text("u x.ark:5\n")
    slow = tmp_path / "slow_python"
    slow.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in *"check_init name"*) echo valid.loss.ave.pth; exit 0 ;; esac\n'
        "sleep 30\n"
    )
    slow.chmod(0o755)
    args = [*SETS, "--python", slow, "--feats_normalize", "config", "--stage", "5", "--stop_stage", "5"]
    env = dict(os.environ, cmd_backend="local")
    first = subprocess.Popen(["./ssl_asr.sh", *map(str, args)], cwd=recipe, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = recipe / "exp" / "ssl_train_ssl_birq_conformer" / ".ssl_asr.sh.lock"
        for _ in range(100):
            if lock.exists() and lock.read_text():
                break
            time.sleep(0.1)
        result = run_ssl(recipe, *args)
        assert result.returncode != 0
        assert "is in use by another run of ssl_asr.sh" in result.stderr
        assert f"pid {first.pid}" in result.stderr
    finally:
        first.kill()
        first.wait()


# --------------------------------------------------------------------------
# Unusual but legal input
# --------------------------------------------------------------------------


def test_corpus_path_with_spaces_and_shell_characters(recipe, tmp_path):
    odd = tmp_path / "my corpus $HOME & 'quotes'"
    write_corpus(recipe / "data" / "train", odd, ["s0-a", "s1-b"])
    local_data_sh(recipe, "true\n")
    result = run_ssl(recipe, *ONE_SET, "--python", PYTHON, "--nj", "1", "--feats_normalize", "config",
                     "--stage", "1", "--stop_stage", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert keys(recipe / "dump" / "fbank" / "train" / "feats.scp") == ["s0-a", "s1-b"]


def test_failed_job_prints_its_log_tail(recipe):
    write_corpus(recipe / "data" / "train", recipe / "audio", ["s0-a"], bad={"s9-x": "corrupt"})
    result = run_ssl(recipe, *ONE_SET, "--python", PYTHON, "--nj", "1", "--feats_normalize", "config",
                     "--stage", "2", "--stop_stage", "2")
    assert result.returncode != 0
    assert "last" in result.stderr and "extract_fbank.1.log" in result.stderr
    assert "s9-x" in result.stderr  # the cause, from the job log, on the console
    assert "1 utterance(s) of this set with bad audio" in result.stderr
    assert (recipe / "dump" / "fbank" / "train" / "bad_audio_errors").read_text().startswith("s9-x\t")
    assert "Successfully finished" not in result.stdout


def test_a_non_finite_pretrained_model_fails_stage_5(recipe, tmp_path):
    """Even when training exits 0 (e.g. a trainer without the guards), the stage checks its model."""
    (recipe / "conf").mkdir()
    (recipe / "conf" / "train_ssl_birq_conformer.yaml").write_text("{}\n")
    stats = recipe / "exp" / "ssl_stats_fbank"
    for split in ("train", "valid"):
        (stats / split).mkdir(parents=True)
        (stats / split / "speech_shape").write_text("u 5,80\n")
    (recipe / "dump" / "fbank" / "train").mkdir(parents=True)
    (recipe / "dump" / "fbank" / "train" / "feats.scp").write_text("u x.ark:5\n")
    # the "training" writes a model with a NaN BatchNorm statistic; everything else is the real python
    wrapper = tmp_path / "python_nan_training"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$2" = espnet2.bin.launch ]; then\n'
        f'  exec {PYTHON} -c "import torch; torch.save({{\'bn.running_var\': torch.tensor([float(\'nan\')])}}, '
        "'exp/ssl_train_ssl_birq_conformer/valid.loss.ave.pth')\"\n"
        "fi\n"
        f'exec {PYTHON} "$@"\n'
    )
    wrapper.chmod(0o755)
    result = run_ssl(recipe, *ONE_SET, "--python", wrapper, "--feats_normalize", "config", "--stage", "5", "--stop_stage", "5")
    assert result.returncode != 0
    assert "valid.loss.ave.pth: 1 tensor(s) hold NaN or inf, first: bn.running_var" in result.stderr
    assert "pre-training diverged" in result.stderr
    assert not (recipe / "exp" / "ssl_train_ssl_birq_conformer" / ".done").exists()
    assert "Successfully finished" not in result.stdout
