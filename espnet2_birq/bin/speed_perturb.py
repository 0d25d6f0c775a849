"""Speed perturbation of one recording, for ``wav.scp`` pipes (Kaldi's ``sp<factor>-`` sets).

::

    python -m espnet2_birq.bin.speed_perturb 0.9 rec.wav |         # a file
    <command> | python -m espnet2_birq.bin.speed_perturb 0.9 - |    # a pipe's output

writes a WAV of the recording played ``factor`` times faster (tempo and pitch, like
sox's ``speed`` effect in Kaldi's ``utils/perturb_data_dir_speed.sh``): it is read as if
sampled at ``rate * factor`` and resampled to ``rate``, so it lasts ``duration / factor``.

Why not sox: sox is not a dependency of this project (nor installed where its tests
run), and the same numbers on every machine matter more than sox's speed. The
resampler is scipy's ``resample_poly`` (polyphase FIR, Kaiser window, beta 5) written
with numpy alone: the script runs once per utterance, and numpy and soundfile import
in a fraction of the time scipy.signal takes.
"""

import io
import sys
from fractions import Fraction
from typing import Optional, Sequence

import numpy as np
import soundfile


def _kaiser_lowpass(up: int, down: int, half_len_factor: int = 10, beta: float = 5.0) -> np.ndarray:
    """scipy.signal.resample_poly's default filter: firwin(2 * 10 * max + 1, 1 / max,
    window=("kaiser", 5.0)) * up."""
    max_rate = max(up, down)
    half_len = half_len_factor * max_rate
    n = np.arange(2 * half_len + 1) - half_len
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half_len + 1, beta)
    return h / h.sum() * up


def resample_poly(x: np.ndarray, up: int, down: int, block: int = 1 << 16) -> np.ndarray:
    """``x`` (samples, channels) resampled by ``up / down``; ceil(len * up / down) samples,
    equal to scipy.signal.resample_poly(x, up, down, axis=0). Computed ``block`` output
    samples at a time (an hour-long recording stays within a few MB)."""
    h = _kaiser_lowpass(up, down)
    half_len = (len(h) - 1) // 2
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    taps = -(-len(h) // up)
    j = np.arange(taps)
    out = np.empty((n_out, x.shape[1]), dtype=np.float64)
    for first in range(0, n_out, block):
        # The upsampled signal (x with up-1 zeros after each sample) filtered by h, without
        # the filter's delay, at every down-th sample: y[m] = sum_k h[k] u[m * down + half_len - k]
        t = np.arange(first, min(first + block, n_out)) * down + half_len
        phase = t % up
        base = t // up  # the input sample at upsampled position t - phase
        k = phase[:, None] + j[None, :] * up  # filter index of input sample base - j
        src = base[:, None] - j[None, :]
        valid = (k < len(h)) & (src >= 0) & (src < n_in)
        coef = np.where(valid, h[np.minimum(k, len(h) - 1)], 0.0)
        out[first:first + len(t)] = np.einsum("mj,mjc->mc", coef, x[np.clip(src, 0, n_in - 1)])
    return out


def speed_perturb(wav: np.ndarray, factor: float) -> np.ndarray:
    """``wav`` (samples, channels) played ``factor`` times faster, at the same rate."""
    ratio = Fraction(str(factor)).limit_denominator(1000)  # e.g. 0.9 -> 9/10
    if ratio <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if ratio == 1:
        return wav
    # rate * factor -> rate: up / down = 1 / factor
    return resample_poly(wav, ratio.denominator, ratio.numerator)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    factor, source = float(argv[0]), argv[1]
    try:
        data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            wav = f.read(dtype="float64", always_2d=True)
            rate, subtype = f.samplerate, f.subtype
    except Exception as error:  # any reader failure: the extraction names the utterance
        print(f"speed_perturb: cannot read {source}: {error}", file=sys.stderr)
        return 1
    out = speed_perturb(wav, factor)
    if not soundfile.check_format("WAV", subtype):
        subtype = "FLOAT"
    buffer = io.BytesIO()
    soundfile.write(buffer, out, rate, subtype=subtype, format="WAV")
    sys.stdout.buffer.write(buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
