"""Shared fixtures: generated audio corpora (no downloads)."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile

REPO = Path(__file__).resolve().parents[1]


def synth_utterance(rng: np.random.Generator, seconds: float, fs: int = 16000):
    """A speech-like test signal: a few harmonic 'syllables' with noise."""
    n = int(seconds * fs)
    t = np.arange(n) / fs
    signal = np.zeros(n)
    for start in np.arange(0.0, seconds, 0.2):
        f0 = rng.uniform(90, 250)
        envelope = np.exp(-(((t - start - 0.1) / 0.05) ** 2))
        for harmonic in range(1, 6):
            signal += envelope * np.sin(2 * np.pi * f0 * harmonic * t) / harmonic
    signal += 0.01 * rng.standard_normal(n)
    return (0.3 * signal / np.abs(signal).max()).astype(np.float32)


def write_audio_set(
    root: Path, num_utts: int, seed: int = 0, fs: int = 16000
) -> Dict[str, Path]:
    """Write ``num_utts`` wavs and a Kaldi-style wav.scp plus ESPnet shape file."""
    rng = np.random.default_rng(seed)
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    shapes: List[str] = []
    for i in range(num_utts):
        uid = f"spk{i % 2}-utt{i:03d}"
        audio = synth_utterance(rng, rng.uniform(0.8, 1.6), fs)
        path = wav_dir / f"{uid}.wav"
        soundfile.write(path, audio, fs, subtype="PCM_16")
        lines.append(f"{uid} {path}")
        shapes.append(f"{uid} {len(audio)}")
    (root / "wav.scp").write_text("\n".join(sorted(lines)) + "\n")
    (root / "speech_shape").write_text("\n".join(sorted(shapes)) + "\n")
    return {"wav_scp": root / "wav.scp", "shape": root / "speech_shape"}


@pytest.fixture(scope="module")
def single_thread():
    """Tiny CPU models run far faster on one thread (no inter-op overhead on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def audio_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    return write_audio_set(root, num_utts=6)


def run_module(module: str, args: List[str], cwd: Path, timeout: int = 600):
    """Run ``python -m module args`` and fail with its output on error."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def stats_file(tmp_path_factory) -> str:
    """A global-CMVN stats file as ESPnet's collect_stats writes it (count/sum/sum_square)."""
    path = tmp_path_factory.mktemp("cmvn") / "cmvn.npz"
    x = np.random.default_rng(0).standard_normal((1000, 80))
    np.savez(path, count=np.array(1000), sum=x.sum(0), sum_square=(x**2).sum(0))
    return str(path)


#: size of the token list below: the corpus recipes' 300 BPE pieces (run.sh --nbpe 300)
RECIPE_VOCAB = 300


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> str:
    """A token list shaped like stage 3's: <blank>, <unk>, pieces, <sos/eos>."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    pieces = [f"\u2581P{i}" for i in range(RECIPE_VOCAB - 3)]
    path.write_text("\n".join(["<blank>", "<unk>", *pieces, "<sos/eos>"]) + "\n", encoding="utf-8")
    return str(path)


def fake_python_splitting(root: Path) -> Path:
    """A stand-in interpreter for stage 5 with split training lists: logs its arguments to
    ``python_calls.txt``, runs ESPnet's ``split_scps`` for real, names the model file for
    ``check_init name`` and leaves that file where ``espnet2.bin.launch`` trains."""
    script = root / "fake_python"
    script.write_text(f"""#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/python_calls.txt"
out=; prev=
for a in "$@"; do [ "$prev" = --output_dir ] && out=$a; prev=$a; done
case "$*" in
    *espnet2.bin.split_scps*) exec {sys.executable} "$@" ;;
    *"check_init name"*) echo valid.best_rq_acc.ave.pth ;;
    *espnet2.bin.launch*) mkdir -p "$out"; touch "$out/valid.best_rq_acc.ave.pth" ;;
esac
""")
    script.chmod(0o755)
    return script
