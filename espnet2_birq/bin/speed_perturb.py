"""Speed perturbation of one recording, for ``wav.scp`` pipes (Kaldi's ``sp<factor>-`` sets).

::

    python -m espnet2_birq.bin.speed_perturb 0.9 rec.wav |         # a file
    <command> | python -m espnet2_birq.bin.speed_perturb 0.9 - |    # a pipe's output

writes a WAV of the recording played ``factor`` times faster (tempo and pitch, like sox's
``speed`` effect in Kaldi's ``utils/perturb_data_dir_speed.sh``): soxr resamples it as if
recorded at ``rate * factor`` to ``rate``, so it lasts ``duration / factor``. soxr (a
dependency, unlike the sox binary) gives the same samples on every machine.
"""

import io
import sys
from typing import Optional, Sequence

import numpy as np
import soundfile
import soxr


def speed_perturb(wav: np.ndarray, factor: float, rate: int = 16000) -> np.ndarray:
    """``wav`` (samples[, channels]) played ``factor`` times faster, at the same ``rate``."""
    if not factor > 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    return wav if factor == 1 else soxr.resample(wav, rate * factor, rate, quality="VHQ")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    factor, source = float(argv[0]), argv[1]
    try:
        data = sys.stdin.buffer.read() if source == "-" else open(source, "rb").read()
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            wav, rate, subtype = f.read(dtype="float64", always_2d=True), f.samplerate, f.subtype
    except Exception as error:  # any reader failure: the extraction names the utterance
        print(f"speed_perturb: cannot read {source}: {error}", file=sys.stderr)
        return 1
    buffer = io.BytesIO()
    subtype = subtype if soundfile.check_format("WAV", subtype) else "FLOAT"
    soundfile.write(buffer, speed_perturb(wav, factor, rate), rate, subtype=subtype, format="WAV")
    sys.stdout.buffer.write(buffer.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
