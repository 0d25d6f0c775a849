"""Data loading rates per CPU core: can the input pipeline keep 8 GPUs busy?

Measured on generated audio (FLAC, as LibriSpeech ships it), one thread, in one run:

- ``extract_fbank``: the recipe's feature extraction (``python -m espnet2_birq.bin.extract_fbank``,
  stage 2 with ``--feats_type fbank``): decode, 80-dim Kaldi fbank, write the ark. Done once per
  corpus, before training.
- ``read_fbank``: what a training data-loader worker does per utterance with
  ``--feats_type fbank``: ESPnet's ``ESPnetDataset`` reading ``feats.scp`` (``kaldi_ark``).
- ``read_raw``: the same with ``--feats_type raw``: ``ESPnetDataset`` decoding ``wav.scp``
  (``sound``); the fbank frontend then runs inside the model, on the GPU.
- ``frontend_cpu``: that frontend (``kaldi_fbank``, a batch at once) on the CPU, for reference.

Each rate is a real-time factor per core: seconds of audio handled per second of one core.
The report then turns them into the cores the loaders of N GPUs need: at ``--batch``
utterances of ``--utt_seconds`` seconds per GPU and step (LibriSpeech 960 h: 281,241
utterances, 12.3 s on average; C2's batch is 64), N GPUs consume
``N * batch * utt_seconds / step_seconds`` seconds of audio per second, for each step time
given in ``--step_seconds``.

Usage::

    python bench/data_loading.py [--num_utts 64] [--seconds 12.3] [--gpus 8]
        [--batch 64] [--utt_seconds 12.3] [--step_seconds 0.25 0.5 1.0] [--work_dir DIR]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from espnet2.train.dataset import ESPnetDataset  # noqa: E402

from espnet2_birq.bin import extract_fbank  # noqa: E402
from espnet2_birq.features import KaldiFbankFrontend  # noqa: E402
from espnet2_birq.utils.datadir import write_data_dir  # noqa: E402

FS = 16000


def make_corpus(root: Path, num_utts: int, seconds: float, seed: int = 0) -> Path:
    """``num_utts`` FLAC files of speech-like noise (amplitude-modulated, band-limited) and a
    Kaldi data dir listing them; returns the data dir."""
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    wav_scp = {}
    for i in range(num_utts):
        noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t)
        wav = (0.2 * envelope * noise).clip(-1, 1).astype(np.float32)
        utt = f"utt{i:05d}"
        wav_scp[utt] = str(audio / f"{utt}.flac")
        soundfile.write(wav_scp[utt], wav, FS, subtype="PCM_16")
    return write_data_dir(root / "data", wav_scp, utt2spk={utt: utt for utt in wav_scp})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_extract_fbank(data: Path, out: Path) -> None:
    """The recipe's command line, in this process (its imports are done before the clock starts)."""
    code = extract_fbank.main(["--data_dir", str(data), "--out_dir", str(out), "--name", "feats.1",
                               "--fs", str(FS)])
    if code:
        raise RuntimeError(f"extract_fbank failed on {data} (exit {code})")


def read_all(scp: Path, loader: str) -> None:
    dataset = ESPnetDataset([(str(scp), "speech", loader)])
    for key in dataset.loader_dict["speech"].keys():
        dataset[key]


def frontend_batches(data: Path, batch: int) -> float:
    """Seconds of the kaldi_fbank frontend over every batch of the data dir (decoding excluded)."""
    frontend = KaldiFbankFrontend(fs=FS).eval()
    wavs = [soundfile.read(line.split()[1], dtype="float32")[0]
            for line in (data / "wav.scp").read_text().splitlines()]
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(wavs), batch):
            chunk = [torch.from_numpy(w) for w in wavs[i:i + batch]]
            lengths = torch.tensor([len(w) for w in chunk])
            padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
            total += timed(lambda: frontend(padded, lengths))
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_utts", type=int, default=64, help="generated utterances (default: 64)")
    p.add_argument("--seconds", type=float, default=12.3, help="length of each (default: 12.3)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs to feed (default: 8)")
    p.add_argument("--batch", type=int, default=64, help="utterances per GPU and step (default: 64, C2)")
    p.add_argument("--utt_seconds", type=float, default=12.3,
                   help="mean utterance length of the corpus (default: 12.3, LibriSpeech 960 h)")
    p.add_argument("--step_seconds", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                   help="training step times to plan for (default: 0.25 0.5 1.0)")
    p.add_argument("--work_dir", type=Path, default=None, help="default: a temporary directory")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work_dir or Path(tmp)
        data = make_corpus(root, args.num_utts, args.seconds)
        audio_seconds = args.num_utts * args.seconds
        feats = root / "fbank"
        seconds = {
            "extract_fbank": timed(lambda: run_extract_fbank(data, feats)),
            "read_fbank": timed(lambda: read_all(feats / "feats.1.scp", "kaldi_ark")),
            "read_raw": timed(lambda: read_all(data / "wav.scp", "sound")),
            "frontend_cpu": frontend_batches(data, min(args.batch, args.num_utts)),
        }
    rtf = {name: audio_seconds / max(s, 1e-9) for name, s in seconds.items()}

    print(f"# Data loading per core ({args.num_utts} utterances x {args.seconds:g} s = "
          f"{audio_seconds / 60:.1f} min of 16 kHz FLAC; one thread)\n")
    print("| stage | wall s | audio s per core-second |")
    print("|---|---|---|")
    for name in seconds:
        print(f"| {name} | {seconds[name]:.2f} | {rtf[name]:.0f} |")
    print(f"\n# Cores the loaders of {args.gpus} GPUs need "
          f"(batch {args.batch} x {args.utt_seconds:g} s per GPU and step)\n")
    print("| step s | audio s needed per s | cores, --feats_type fbank (read_fbank) "
          "| cores, --feats_type raw (read_raw) |")
    print("|---|---|---|---|")
    for step in args.step_seconds:
        need = args.gpus * args.batch * args.utt_seconds / step
        print(f"| {step:g} | {need:.0f} | {need / rtf['read_fbank']:.1f} | {need / rtf['read_raw']:.1f} |")
    print(f"\nFeature extraction of 960 h with --feats_type fbank: "
          f"{960 * 3600 / rtf['extract_fbank'] / 3600:.1f} core-hours.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
