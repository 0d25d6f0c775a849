"""Global CMVN statistics in the npz format ESPnet's ``GlobalMVN`` reads.

::

    # from precomputed features (one or more scp files, e.g. per job)
    python -m espnet2_birq.bin.compute_cmvn_stats \\
        --feats_scp dump/fbank/train/feats.scp --out exp/stats/feats_stats.npz

    # from audio, with the same fbank as everything else in the project
    python -m espnet2_birq.bin.compute_cmvn_stats \\
        --data_dir data/train --out exp/stats/feats_stats.npz [--fs 16000]

    # sum per-job statistics
    python -m espnet2_birq.bin.compute_cmvn_stats merge \\
        --out exp/stats/feats_stats.npz exp/stats/stats.1.npz exp/stats/stats.2.npz

The output holds ``count`` (number of frames, int64 scalar), ``sum`` and
``sum_square`` (float64 arrays of shape `(D,)`), exactly the keys
``espnet2.layers.global_mvn.GlobalMVN(stats_file=...)`` loads (mean =
sum / count, var = sum_square / count - mean**2).  Sums are accumulated in
float64.
"""

import argparse
import logging
import os
import sys
from typing import Iterable, Optional, Sequence, Tuple

import kaldiio
import numpy as np
import torch

from espnet2.utils.types import str2bool
from espnet2_birq.bin.extract_fbank import (
    BadAudioError,
    DataDirError,
    iter_waveforms,
    list_utterances,
)
from espnet2_birq.features import kaldi_fbank, num_frames

logger = logging.getLogger("espnet2_birq.compute_cmvn_stats")


class CMVNAccumulator:
    """Accumulates frame count, sum and sum of squares in float64."""

    def __init__(self):
        self.count = 0
        self.sum: Optional[np.ndarray] = None
        self.sum_square: Optional[np.ndarray] = None
        self.num_utts = 0

    def add(self, feats: np.ndarray, utt_id: str = "?") -> None:
        """Add one utterance's features with shape `(L, D)`."""
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2:
            raise ValueError(
                f"utterance '{utt_id}': expected a (frames, dim) matrix, got "
                f"shape {feats.shape}"
            )
        if self.sum is None:
            self.sum = np.zeros(feats.shape[1], dtype=np.float64)
            self.sum_square = np.zeros(feats.shape[1], dtype=np.float64)
        elif feats.shape[1] != self.sum.shape[0]:
            raise ValueError(
                f"utterance '{utt_id}': feature dim {feats.shape[1]} differs "
                f"from previous utterances ({self.sum.shape[0]})"
            )
        if not np.all(np.isfinite(feats)):
            raise ValueError(f"utterance '{utt_id}': features contain NaN/inf")
        self.count += feats.shape[0]
        self.sum += feats.sum(axis=0)
        self.sum_square += (feats * feats).sum(axis=0)
        self.num_utts += 1

    def merge(self, other: "CMVNAccumulator") -> None:
        if other.sum is None:
            return
        if self.sum is None:
            self.sum = other.sum.copy()
            self.sum_square = other.sum_square.copy()
        else:
            if other.sum.shape != self.sum.shape:
                raise ValueError(
                    f"cannot merge statistics of dim {other.sum.shape[0]} and "
                    f"{self.sum.shape[0]}"
                )
            self.sum += other.sum
            self.sum_square += other.sum_square
        self.count += other.count
        self.num_utts += other.num_utts

    def save(self, path: str) -> None:
        """Write ``count``/``sum``/``sum_square`` to ``path`` (npz), atomically."""
        if self.sum is None or self.count == 0:
            raise ValueError(f"no frames were accumulated; refusing to write {path}")
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}.npz"
        np.savez(
            tmp,
            count=np.int64(self.count),
            sum=self.sum,
            sum_square=self.sum_square,
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "CMVNAccumulator":
        acc = cls()
        with np.load(path) as st:
            missing = {"count", "sum", "sum_square"} - set(st.files)
            if missing:
                raise ValueError(f"{path}: missing keys {sorted(missing)}")
            acc.count = int(st["count"])
            acc.sum = np.asarray(st["sum"], dtype=np.float64)
            acc.sum_square = np.asarray(st["sum_square"], dtype=np.float64)
        return acc

    def mean_std(self, eps: float = 1.0e-20) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation, computed like ``GlobalMVN``."""
        mean = self.sum / self.count
        var = self.sum_square / self.count - mean * mean
        return mean, np.sqrt(np.maximum(var, eps))


def stats_from_scp(scp_paths: Iterable[str]) -> CMVNAccumulator:
    """Accumulate statistics over every matrix of the given ``feats.scp`` files."""
    acc = CMVNAccumulator()
    for scp in scp_paths:
        if not os.path.isfile(scp):
            raise DataDirError(f"{scp}: file not found")
        for utt_id, mat in kaldiio.load_scp_sequential(scp):
            acc.add(mat, utt_id)
    return acc


def stats_from_data_dir(
    data_dir: str, fs: int = 16000, num_mel_bins: int = 80, skip_bad_audio: bool = False
) -> Tuple[CMVNAccumulator, int]:
    """Accumulate statistics of :func:`kaldi_fbank` over a data dir's audio.

    Returns:
        The accumulator and the number of skipped utterances.
    """
    acc = CMVNAccumulator()
    skipped = 0
    for utt, wav, rate, err in iter_waveforms(list_utterances(data_dir)):
        if rate is not None and rate != fs:
            raise BadAudioError(
                f"{utt.describe()}: sample rate is {rate} Hz, expected {fs}"
            )
        if err is None and num_frames(len(wav), rate) == 0:
            err = f"audio is {len(wav)} samples long, shorter than one window"
        if err is not None:
            if not skip_bad_audio:
                raise BadAudioError(f"{utt.describe()}: {err}")
            logger.warning("skipping %s: %s", utt.describe(), err)
            skipped += 1
            continue
        feats = kaldi_fbank(torch.from_numpy(np.ascontiguousarray(wav)), rate, num_mel_bins)
        acc.add(feats.numpy(), utt.utt_id)
    return acc, skipped


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    if argv and argv[0] == "merge":
        p = argparse.ArgumentParser(
            prog="python -m espnet2_birq.bin.compute_cmvn_stats merge",
            description="Sum several count/sum/sum_square npz files.",
        )
        p.add_argument("--out", required=True)
        p.add_argument("inputs", nargs="+")
        args = p.parse_args(argv[1:])
        acc = CMVNAccumulator()
        for path in args.inputs:
            acc.merge(CMVNAccumulator.load(path))
        acc.save(args.out)
        logger.info("merged %d files: %d frames -> %s", len(args.inputs), acc.count, args.out)
        return 0

    p = argparse.ArgumentParser(
        prog="python -m espnet2_birq.bin.compute_cmvn_stats",
        description="Global CMVN stats (npz: count, sum, sum_square) for GlobalMVN.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--feats_scp", action="append", help="may be repeated")
    src.add_argument("--data_dir", help="compute fbank from wav.scp (+segments)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--fs", type=int, default=16000)
    p.add_argument("--n_mels", type=int, default=80)
    p.add_argument("--skip_bad_audio", type=str2bool, default=False)
    args = p.parse_args(argv)
    try:
        if args.feats_scp:
            acc = stats_from_scp(args.feats_scp)
        else:
            acc, skipped = stats_from_data_dir(
                args.data_dir, args.fs, args.n_mels, args.skip_bad_audio
            )
            if skipped:
                logger.warning("skipped %d utterances with bad audio", skipped)
        acc.save(args.out)
    except (BadAudioError, DataDirError, ValueError) as e:
        logger.error("%s", e)
        return 1
    logger.info(
        "wrote %s: %d utterances, %d frames, dim %d",
        args.out,
        acc.num_utts,
        acc.count,
        acc.sum.shape[0],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
