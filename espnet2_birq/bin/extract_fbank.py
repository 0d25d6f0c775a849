"""Extract Kaldi-compatible fbank features for a Kaldi data directory.

Two sub-commands share this module:

``extract`` (default, the sub-command name may be omitted)::

    python -m espnet2_birq.bin.extract_fbank \\
        --data_dir data/train/split4/2 --out_dir dump/fbank/train --name feats.2 \\
        [--fs 16000] [--skip_bad_audio false] [--log_interval 500]

reads ``data_dir/wav.scp`` (and ``data_dir/segments`` if present), computes
:func:`espnet2_birq.features.kaldi_fbank` for every utterance and writes

* ``out_dir/<name>.ark`` / ``out_dir/<name>.scp``: the features (kaldiio),
* ``out_dir/utt2num_frames.<job>``: ``utt num_frames`` per line,
* ``out_dir/bad_utts.<job>``: utterances skipped with ``--skip_bad_audio
  true`` (``utt<TAB>reason``; empty file when none were skipped),
* ``out_dir/resampled.<job>``: recordings whose sampling rate was not ``--fs``
  and were resampled to it (``recording<TAB>rate<TAB>audio``; only when there are
  some: a job that resampled none removes an earlier one),

where ``<job>`` is the part of ``name`` after the last ``.`` (``feats.2`` ->
``2``; the whole name when it has no ``.``).  All these files are written to
temporary names and renamed at the end, so re-running a job replaces its
outputs and an interrupted job leaves no partial ones.

``wav.scp`` entries may be plain audio paths (anything libsndfile reads),
Kaldi pipe commands (``sox a.flac -t wav - |``) or Kaldi ark offsets
(``foo.ark:1234``).

``merge``::

    python -m espnet2_birq.bin.extract_fbank merge \\
        --out_dir dump/fbank/train --nj 4 --data_dir data/train

concatenates ``<prefix>.{1..nj}.scp`` and ``utt2num_frames.{1..nj}`` into
``out_dir/feats.scp``, ``out_dir/utt2num_frames`` and ``out_dir/feats_shape``
(ESPnet shape file: ``utt num_frames,80``), all sorted by utterance id, and
checks that every utterance of ``data_dir`` was either extracted or listed in a
``bad_utts.<job>`` file.  It fails naming the missing utterances otherwise.
The jobs' ``bad_utts.<job>`` and ``resampled.<job>`` lists are joined into
``out_dir/bad_utts`` and ``out_dir/resampled`` (only when some were resampled).

``check`` (``--feats_type raw``): see :func:`check_raw`.

Sampling rate: audio at another rate than ``--fs`` is resampled to ``--fs`` as it
is read (:func:`resample`: libsoxr, the resampler of sox's ``rate`` effect that
Kaldi's ``utils/data/resample_data_dir.sh`` pipes run), counted and listed; the
rate comes from the header of the audio that is decoded anyway, so checking it
costs nothing.

Errors: missing, unreadable, multi-channel or too-short (< 1 frame) audio
aborts unless ``--skip_bad_audio true`` is given; then the utterance is
skipped, logged with a warning and counted.
"""

import argparse
import hashlib
import io
import logging
import os
import re
import sys
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import kaldiio
import numpy as np
import soundfile
import soxr
import torch

from espnet2.utils.types import str2bool
from espnet2_birq.features import kaldi_fbank, num_frames
from espnet2_birq.utils.datadir import DataDirError, parse_segment, read_kaldi_map

logger = logging.getLogger("espnet2_birq.extract_fbank")

# Kaldi extract-segments tolerates segment ends up to 0.5 s after the end of
# the recording (the segment is then truncated); we do the same.
MAX_SEGMENT_OVERSHOOT_S = 0.5


class BadAudioError(Exception):
    """Audio of an utterance is missing, unreadable or unusable."""


def job_suffix(name: str) -> str:
    """Job id of an output name: ``feats.2`` -> ``2``; ``feats`` -> ``feats``."""
    return name.rsplit(".", 1)[-1]


_ARK_OFFSET_RE = re.compile(r"^(.+):(\d+)$")

# libsndfile's frame count (SF_COUNT_MAX) for a header without a length
_UNKNOWN_FRAMES = 2**62

# Bit depth of integer samples -> divisor giving floats in [-1, 1].
_INT_SCALE = {np.dtype("int16"): 32768.0, np.dtype("int32"): 2147483648.0}


def _ints_to_float(arr: np.ndarray, spec: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:  # 8-bit PCM is unsigned
        return (arr.astype(np.float32) - 128.0) / 128.0
    if arr.dtype in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[arr.dtype]).astype(np.float32)
    raise BadAudioError(f"'{spec}': unsupported sample type {arr.dtype}")


def load_audio(spec: str) -> Tuple[np.ndarray, int]:
    """Load a ``wav.scp`` value as a float32 waveform in ``[-1, 1]``.

    ``(waveform, rate)`` of :func:`load_audio_with_format`.
    """
    data, rate, _ = load_audio_with_format(spec)
    return data, rate


def load_audio_with_format(spec: str) -> Tuple[np.ndarray, int, bool]:
    """Load a ``wav.scp`` value as a float32 waveform in ``[-1, 1]``.

    The entry is opened by kaldiio, as ESPnet and Kaldi read ``wav.scp``:
    ``kaldiio.load_mat`` for ``file.ark:offset`` entries and
    ``kaldiio.open_like_kaldi`` for audio paths (spaces included) and pipe
    commands (``sox a.flac -t wav - |``).  The bytes are decoded by soundfile
    (libsndfile) because kaldiio's own WAV decoder reads 8/16-bit PCM only
    (no 24-bit or float WAV); kaldiio does not check a pipe's exit status, so
    it is checked here.

    Args:
        spec: A path, a Kaldi pipe command ending in ``|`` or ``ark:offset``.

    Returns:
        (ndarray, int, bool): Waveform with shape `(T, C)`, its sampling rate, and
        whether its samples are finer than 16-bit integers (float, 24- or 32-bit
        PCM; see :func:`resample`).

    Raises:
        BadAudioError: if the audio cannot be obtained or decoded.
    """
    spec = spec.strip()
    is_pipe = spec.endswith("|")
    if not is_pipe and not os.path.exists(spec):
        m = _ARK_OFFSET_RE.match(spec)
        if m is not None and os.path.isfile(m.group(1)):
            try:
                loaded = kaldiio.load_mat(spec)
            except Exception as e:
                raise BadAudioError(f"cannot read '{spec}': {e}") from e
            if not isinstance(loaded, tuple):
                raise BadAudioError(f"'{spec}' is a matrix, not audio")
            rate, arr = loaded
            arr = np.asarray(arr)
            fine = arr.dtype.kind == "f" or arr.dtype == np.int32
            arr = _ints_to_float(arr, spec)
            if arr.ndim == 1:
                arr = arr[:, None]
            return arr, int(rate), fine
        raise BadAudioError(f"audio file '{spec}' does not exist")
    try:
        stream = kaldiio.open_like_kaldi(spec, "rb")
        try:
            payload = stream.read()
        finally:
            status = stream.close()
    except OSError as e:
        raise BadAudioError(f"cannot read audio file '{spec}': {e}") from e
    if is_pipe:
        if status:  # kaldiio returns the exit status shifted as os.popen does
            code = status >> 8
            raise BadAudioError(f"command '{spec[:-1].strip()}' failed with exit code {code}")
        if len(payload) == 0:
            raise BadAudioError(f"command '{spec[:-1].strip()}' produced no output")
    what = f"output of '{spec[:-1].strip()}'" if is_pipe else f"audio file '{spec}'"
    try:
        with soundfile.SoundFile(io.BytesIO(payload)) as f:
            if f.frames >= _UNKNOWN_FRAMES:
                raise BadAudioError(f"{what}: the header gives no length (libsndfile reports 2^63 frames); "
                                    "re-encode the file")
            data = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
            fine = f.subtype in FINE_SUBTYPES
    except BadAudioError:
        raise
    except Exception as e:  # libsndfile raises several types
        raise BadAudioError(f"cannot decode {what}: {e}") from e
    return data, rate, fine


#: libsndfile sample formats finer than 16-bit integers: resampled audio stays float.
FINE_SUBTYPES = frozenset({"FLOAT", "DOUBLE", "PCM_24", "PCM_32"})


def resample(data: np.ndarray, rate: int, fs: int, fine: bool = True) -> np.ndarray:
    """``data`` (samples, channels) at ``rate`` Hz resampled to ``fs`` Hz.

    libsoxr (the ``soxr`` package, an ESPnet dependency through librosa, whose
    default resampler it is) at its ``HQ`` quality: the resampler of sox's ``rate``
    effect, which Kaldi's ``utils/data/resample_data_dir.sh`` puts in ``wav.scp``
    as ``sox FILE -r 16000 -t wav - |``; linear phase, so the output is aligned
    with the input.  It is preferred to ``torchaudio.functional.resample`` because
    it is that reference, works on numpy arrays (no torch round trip), does not
    build a windowed-sinc kernel for each rate pair (320 phases for 22.05 -> 16
    kHz) and is maintained as a library of its own.

    Audio of 16-bit integer samples or coarser (``fine`` False: 16/8-bit PCM,
    mu-law and A-law telephone audio, lossy codecs) is put back on the 16-bit
    grid, as a resampled 16-bit file holds it (sox keeps the bit depth; ESPnet's
    ``format_wav_scp.py`` writes 16-bit PCM): its empty upper band then carries
    16-bit quantisation noise like audio recorded at ``fs``, rather than
    nothing, and features of ``--feats_type fbank`` (resampled here) and
    ``--feats_type raw`` (a resampled 16-bit copy, :func:`check_raw`) agree.

    Returns:
        float32 array with shape `(T', C)`, ``T' = round(T * fs / rate)``.
    """
    if rate == fs:
        return data
    if data.shape[0] == 0:
        return np.zeros((0, data.shape[1]), dtype=np.float32)
    out = soxr.resample(np.ascontiguousarray(data, dtype=np.float32), rate, fs, quality="HQ")
    if not fine:
        out = np.clip(np.round(out * 32768.0), -32768.0, 32767.0) / 32768.0
    return np.asarray(out, dtype=np.float32).reshape(-1, data.shape[1])


def load_audio_at(spec: str, fs: int) -> Tuple[np.ndarray, int, bool]:
    """A ``wav.scp`` value as a float32 waveform `(T, C)` at ``fs`` Hz.

    Returns:
        (ndarray, int, bool): the waveform at ``fs`` Hz, the rate of the audio
        as stored (resampled when it is not ``fs``) and whether its samples are
        finer than 16 bits.

    Raises:
        BadAudioError: if the audio cannot be obtained or decoded.
    """
    data, rate, fine = load_audio_with_format(spec)
    if rate != fs:
        try:
            data = resample(data, rate, fs, fine)
        except Exception as e:  # soxr refuses, e.g., absurd rates
            raise BadAudioError(f"cannot resample '{spec}' from {rate} Hz to {fs} Hz: {e}") from e
    return data, rate, fine


class Utterance:
    """One utterance to process: id, recording spec and optional sample range."""

    __slots__ = ("utt_id", "reco_id", "spec", "start", "end")

    def __init__(self, utt_id, reco_id, spec, start=None, end=None):
        self.utt_id = utt_id
        self.reco_id = reco_id
        self.spec = spec
        self.start = start  # seconds or None
        self.end = end  # seconds, -1 for "to the end", or None

    def describe(self) -> str:
        where = f"utterance '{self.utt_id}'"
        if self.start is not None:
            where += (
                f" (segment {self.start}-{self.end} s of recording "
                f"'{self.reco_id}')"
            )
        return f"{where}, audio '{self.spec}'"


def list_utterances(data_dir: str) -> List[Utterance]:
    """List the utterances of a data dir from ``wav.scp`` and ``segments``.

    Raises:
        DataDirError: on malformed files or a segment whose recording is not
            in ``wav.scp``.
    """
    wav_scp = read_kaldi_map(os.path.join(data_dir, "wav.scp"))
    seg_path = os.path.join(data_dir, "segments")
    if not os.path.exists(seg_path):
        return [Utterance(k, k, v) for k, v in wav_scp]
    wavs = dict(wav_scp)
    utts = []
    for lineno, (utt_id, rest) in enumerate(read_kaldi_map(seg_path), 1):
        try:
            reco, start, end = parse_segment(rest)
        except ValueError:
            raise DataDirError(
                f"{seg_path}:{lineno}: expected '<utt> <reco> <start> <end>', "
                f"got '{utt_id} {rest}'"
            ) from None
        if reco not in wavs:
            raise DataDirError(
                f"{seg_path}:{lineno}: recording '{reco}' of utterance "
                f"'{utt_id}' is not in {os.path.join(data_dir, 'wav.scp')}"
            )
        if start < 0 or (end != -1 and end <= start):
            raise DataDirError(
                f"{seg_path}:{lineno}: invalid times {start} {end} for "
                f"utterance '{utt_id}'"
            )
        utts.append(Utterance(utt_id, reco, wavs[reco], start, end))
    return utts


def iter_waveforms(
    utts: Sequence[Utterance],
    fs: Optional[int] = None,
    resampled: Optional[Dict[str, Tuple[str, int]]] = None,
) -> Iterator[Tuple[Utterance, Optional[np.ndarray], Optional[int], Optional[str]]]:
    """Yield ``(utt, waveform (T,), rate, error)`` for each utterance.

    ``error`` is a message (and waveform/rate are ``None``) when the audio is
    bad.  The last recording is cached so that consecutive segments of the
    same recording read it once.  With ``fs``, recordings at another rate are
    resampled to ``fs`` (:func:`resample`) and added to ``resampled``
    (recording id -> ``(audio, original rate)``).
    """
    cache_spec = None
    cache = None  # (data, rate) or BadAudioError
    for utt in utts:
        if utt.spec != cache_spec:
            cache_spec = utt.spec
            try:
                if fs is None:
                    cache = load_audio(utt.spec)
                else:
                    data, rate, _ = load_audio_at(utt.spec, fs)
                    if rate != fs and resampled is not None:
                        resampled[utt.reco_id] = (utt.spec, rate)
                    cache = (data, fs)
            except BadAudioError as e:
                cache = e
        if isinstance(cache, BadAudioError):
            yield utt, None, None, str(cache)
            continue
        data, rate = cache
        if data.shape[1] != 1:
            yield utt, None, rate, f"audio has {data.shape[1]} channels, expected 1"
            continue
        wav = data[:, 0]
        if utt.start is not None:
            begin = int(utt.start * rate)
            if utt.end == -1:
                stop = wav.shape[0]
            else:
                stop = int(utt.end * rate)
                if stop > wav.shape[0] + int(MAX_SEGMENT_OVERSHOOT_S * rate):
                    yield utt, None, rate, (
                        f"segment ends at {utt.end} s but the recording is only "
                        f"{wav.shape[0] / rate:.3f} s long"
                    )
                    continue
            if begin >= wav.shape[0]:
                yield utt, None, rate, (
                    f"segment starts at {utt.start} s but the recording is only "
                    f"{wav.shape[0] / rate:.3f} s long"
                )
                continue
            wav = wav[begin:stop]
        yield utt, wav, rate, None


def check_waveform(wav: np.ndarray, rate: int, min_frames: int = 1) -> Optional[str]:
    """Why a mono waveform is unusable (too short, non-finite samples), or None."""
    if num_frames(len(wav), rate) < min_frames:
        return (
            f"audio is {len(wav)} samples long, shorter than "
            + ("one 25 ms analysis window (no frames)" if min_frames <= 1
               else f"{min_frames} frames (--min_frames: the encoder's subsampling needs them)")
        )
    if not bool(np.isfinite(wav).all()):
        return "audio holds NaN or inf samples"
    return None


MAX_LISTED_ERRORS = 50


def write_resampled_list(path: str, resampled: Dict[str, Tuple[str, Union[int, str]]]) -> None:
    """``path``: ``recording<TAB>rate<TAB>audio`` for each resampled recording, sorted
    (written atomically); no file when there are none (an earlier one is removed)."""
    if not resampled:
        if os.path.exists(path):
            os.remove(path)
        return
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for reco in sorted(resampled):
            spec, rate = resampled[reco]
            f.write(f"{reco}\t{rate}\t{spec}\n")
    os.replace(tmp, path)


def log_resampled(name: str, count: int, total: int, fs: int, path: str) -> None:
    if count:
        logger.warning(
            "%s: resampled %d of %d recording(s) from another sampling rate to %d Hz "
            "(listed in %s)", name, count, total, fs, path,
        )


def write_error_list(out_dir: str, job: str, errors) -> str:
    """``out_dir/bad_audio_errors.<job>``: every bad utterance of a failed job
    (``utt<TAB>audio<TAB>reason``), for the recipe to show all of a set's at once."""
    path = os.path.join(out_dir, f"bad_audio_errors.{job}")
    with open(path, "w", encoding="utf-8") as f:
        for utt, err, _ in errors:
            f.write(f"{utt.utt_id}\t{utt.spec}\t{err}\n".replace("\n", " ").rstrip() + "\n")
    return path


def describe_errors(errors, skip_bad_audio: bool) -> str:
    """One message for every bad utterance of a job, with the fixes that work."""
    lines = [f"  {utt.describe()}: {err}" for utt, err, _ in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more")
    skippable = [e for e in errors if not e[2]]
    advice = []
    if skippable and not skip_bad_audio:
        advice.append("re-run with --skip_bad_audio true to drop and list the unreadable, "
                      "too short or non-finite ones")
    if len(skippable) < len(errors):
        advice.append("--feats_type raw never skips pipe or ark entries (see the fix above)")
    return (
        f"{len(errors)} utterance(s) with bad audio:\n" + "\n".join(lines)
        + ("\n" + "; ".join(advice) if advice else "")
    )


def extract(
    data_dir: str,
    out_dir: str,
    name: str,
    fs: int = 16000,
    num_mel_bins: int = 80,
    skip_bad_audio: bool = False,
    log_interval: int = 500,
    min_frames: int = 1,
) -> Dict[str, int]:
    """Extract features for one (split) data dir; see the module docstring.

    Args:
        data_dir: Kaldi data dir with ``wav.scp`` (+ optional ``segments``).
        out_dir: Output directory (created if needed).
        name: Output base name, e.g. ``feats.2``.
        fs: Sampling rate of the features in Hz; audio at another rate is
            resampled to it (listed in ``out_dir/resampled.<job>``).
        num_mel_bins: Feature dimension.
        skip_bad_audio: Skip (and count) utterances with bad audio instead of
            failing.
        log_interval: Log progress every this many utterances.

    Returns:
        dict with ``done``, ``skipped`` and ``total`` utterance counts.

    Raises:
        DataDirError: malformed data dir.
        BadAudioError: bad audio (unless ``skip_bad_audio``), naming the
            utterance and file.
    """
    utts = list_utterances(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    job = job_suffix(name)
    final = {
        "ark": os.path.join(out_dir, f"{name}.ark"),
        "scp": os.path.join(out_dir, f"{name}.scp"),
        "u2nf": os.path.join(out_dir, f"utt2num_frames.{job}"),
        "bad": os.path.join(out_dir, f"bad_utts.{job}"),
    }
    resampled_list = os.path.join(out_dir, f"resampled.{job}")
    tmp = {k: v + f".tmp{os.getpid()}" for k, v in final.items()}
    done = 0
    skipped = 0
    errors: List[Tuple[Utterance, str, bool]] = []
    resampled: Dict[str, Tuple[str, int]] = {}
    try:
        with open(tmp["ark"], "wb") as ark, open(
            tmp["scp"], "w", encoding="utf-8"
        ) as scp, open(tmp["u2nf"], "w", encoding="utf-8") as u2nf, open(
            tmp["bad"], "w", encoding="utf-8"
        ) as bad:
            for i, (utt, wav, rate, err) in enumerate(iter_waveforms(utts, fs, resampled), 1):
                if err is None:
                    err = check_waveform(wav, rate, min_frames)
                feats = None
                if err is None:
                    feats = kaldi_fbank(
                        torch.from_numpy(np.ascontiguousarray(wav)),
                        rate,
                        num_mel_bins=num_mel_bins,
                        expected_sample_rate=fs,
                    )
                    if not bool(torch.isfinite(feats).all()):
                        err = "its features hold NaN or inf values"
                if err is not None:
                    if not skip_bad_audio:
                        errors.append((utt, err, False))
                        continue
                    logger.warning("skipping %s: %s", utt.describe(), err)
                    bad.write(f"{utt.utt_id}\t{err}\n")
                    skipped += 1
                    continue
                if errors:  # failing anyway: only look for more bad audio
                    continue
                key_bytes = (utt.utt_id + " ").encode("utf-8")
                offset = ark.tell() + len(key_bytes)
                kaldiio.save_ark(ark, {utt.utt_id: feats.numpy()})
                scp.write(f"{utt.utt_id} {final['ark']}:{offset}\n")
                u2nf.write(f"{utt.utt_id} {feats.shape[0]}\n")
                done += 1
                if log_interval > 0 and i % log_interval == 0:
                    logger.info(
                        "%s: processed %d/%d utterances (%d skipped)",
                        name,
                        i,
                        len(utts),
                        skipped,
                    )
        if errors:
            write_error_list(out_dir, job, errors)
            raise BadAudioError(describe_errors(errors, skip_bad_audio))
        for k in ("ark", "scp", "u2nf", "bad"):
            os.replace(tmp[k], final[k])
        write_resampled_list(resampled_list, resampled)
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d utterances with bad audio (listed in %s)",
            name,
            skipped,
            len(utts),
            final["bad"],
        )
    log_resampled(name, len(resampled), len({u.reco_id for u in utts}), fs, resampled_list)
    logger.info(
        "%s: wrote %d utterances to %s (%d skipped)", name, done, final["scp"], skipped
    )
    return {"done": done, "skipped": skipped, "total": len(utts)}


_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$")

#: ``check_raw``'s sub-directory of resampled copies (ssl.sh removes it before a re-run)
RESAMPLED_AUDIO_DIR = "resampled_audio"


def resampled_copy_path(out_dir: str, utt_id: str, fine: bool) -> str:
    """Where :func:`check_raw` writes the resampled copy of an utterance's audio:
    ``out_dir/resampled_audio/<utt>.flac`` (16-bit) or ``.wav`` (32-bit float);
    an id unsafe as a file name is replaced by a sanitised name and its md5."""
    name = utt_id
    if not _SAFE_NAME_RE.match(name):
        digest = hashlib.md5(utt_id.encode("utf-8")).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._+-]", "_", utt_id).lstrip(".")[:100] + "-" + digest
    return os.path.join(out_dir, RESAMPLED_AUDIO_DIR, name + (".wav" if fine else ".flac"))


def write_resampled_copy(path: str, data: np.ndarray, fs: int, fine: bool) -> None:
    """``data`` (samples, 1) as a file ESPnet's ``sound`` loader reads back exactly:
    32-bit float WAV, or (16-bit grid, :func:`resample`) 16-bit FLAC."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    if fine:
        soundfile.write(tmp, data, fs, format="WAV", subtype="FLOAT")
    else:  # exact: int16 samples are written as they are
        ints = np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)
        soundfile.write(tmp, ints, fs, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


def check_raw(
    data_dir: str,
    out_dir: str,
    name: str,
    fs: int = 16000,
    skip_bad_audio: bool = False,
    min_frames: int = 1,
) -> Dict[str, int]:
    """Check the audio that SSL training will read raw (``--feats_type raw``).

    ESPnet's ``sound`` loader opens plain audio files and ignores their sampling
    rate, so everything the feature extraction would refuse or change is checked
    here before training: plain-path entries only (no pipes, arks or segments:
    the loader opens none of them), one channel, at least one analysis window,
    finite samples; and the sampling rate.  A recording at another rate than
    ``fs`` is resampled (:func:`resample`, as the feature extraction does) into
    ``out_dir/resampled_audio/`` (:func:`resampled_copy_path`), and its entry
    points there: the ``sound`` loader cannot run a Kaldi ``sox ... |`` pipe,
    so, as ESPnet's ``asr.sh`` does for raw audio (``format_wav_scp.sh --fs``),
    the resampled audio is written once.  Only recordings at another rate are
    copied.  Writes ``out_dir/wav.<job>.scp`` (the usable entries),
    ``out_dir/utt2num_samples.<job>`` (at ``fs``), ``out_dir/bad_utts.<job>``
    (skipped, ``utt<TAB>reason``) and, when some were resampled,
    ``out_dir/resampled.<job>`` (``utt<TAB>rate<TAB>audio``); ``merge --kind raw``
    joins them.

    Raises:
        DataDirError: a segments file (raw mode reads whole files).
        BadAudioError: bad audio (a pipe always; the rest unless
            ``skip_bad_audio``), listing every bad utterance of the job.
    """
    if os.path.exists(os.path.join(data_dir, "segments")):
        raise DataDirError(
            f"{data_dir}: has a segments file; --feats_type raw reads whole files (use --feats_type fbank)"
        )
    utts = list_utterances(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    job = job_suffix(name)
    final = {
        "scp": os.path.join(out_dir, f"{name}.scp"),
        "u2ns": os.path.join(out_dir, f"utt2num_samples.{job}"),
        "bad": os.path.join(out_dir, f"bad_utts.{job}"),
    }
    resampled_list = os.path.join(out_dir, f"resampled.{job}")
    errors: List[Tuple[Utterance, str, bool]] = []
    good: List[Tuple[str, str, int]] = []
    bad: List[Tuple[str, str]] = []
    resampled: Dict[str, Tuple[str, int]] = {}
    for utt in utts:
        spec = utt.spec.strip()
        if spec.endswith("|") or not os.path.isfile(spec) and _ARK_OFFSET_RE.match(spec):
            errors.append((utt, "--feats_type raw reads plain audio files only (ESPnet's sound loader); "
                                "use --feats_type fbank for pipes and ark entries", True))
            continue
        try:
            data, rate, fine = load_audio_at(spec, fs)
        except BadAudioError as e:
            err = str(e)
        else:
            if data.shape[1] != 1:
                err = f"audio has {data.shape[1]} channels, expected 1"
            else:
                err = check_waveform(data[:, 0], fs, min_frames)
        if err is None:
            entry = utt.spec
            if rate != fs:
                entry = resampled_copy_path(out_dir, utt.utt_id, fine)
                write_resampled_copy(entry, data, fs, fine)
                resampled[utt.utt_id] = (utt.spec, rate)
            good.append((utt.utt_id, entry, data.shape[0]))
        elif not skip_bad_audio:
            errors.append((utt, err, False))
        else:
            logger.warning("skipping %s: %s", utt.describe(), err)
            bad.append((utt.utt_id, err))
    if errors:
        write_error_list(out_dir, job, errors)
        raise BadAudioError(describe_errors(errors, skip_bad_audio))
    contents = {
        "scp": "".join(f"{u} {spec}\n" for u, spec, _ in good),
        "u2ns": "".join(f"{u} {n}\n" for u, _, n in good),
        "bad": "".join(f"{u}\t{err}\n" for u, err in bad),
    }
    for key, text in contents.items():
        tmp = final[key] + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, final[key])
    write_resampled_list(resampled_list, resampled)
    log_resampled(name, len(resampled), len(utts), fs, resampled_list)
    logger.info("%s: %d usable utterances, %d skipped", name, len(good), len(bad))
    return {"done": len(good), "skipped": len(bad), "total": len(utts)}


def merge(
    out_dir: str,
    nj: int,
    data_dir: Optional[str] = None,
    prefix: str = "feats",
    feat_dim: int = 80,
    kind: str = "fbank",
) -> Dict[str, int]:
    """Merge per-job outputs into ``feats.scp``, ``utt2num_frames``, ``feats_shape``.

    Args:
        out_dir: Directory holding ``<prefix>.<j>.scp``, ``utt2num_frames.<j>``
            and ``bad_utts.<j>`` for ``j = 1..nj``.
        nj: Number of jobs.
        data_dir: Full (unsplit) data dir; if given, every utterance of it
            must be present or listed as skipped, and no others.
        prefix: Base name used for the jobs (``feats`` for ``feats.<j>``).
        feat_dim: Feature dimension written to ``feats_shape``.

    Returns:
        dict with ``utts`` (merged) and ``skipped`` counts.

    Raises:
        DataDirError: on missing job files, duplicate utterances, scp and
            utt2num_frames disagreeing, or utterances missing from the output.
    """
    # fbank: feats.<j>.scp + utt2num_frames.<j>; raw (check_raw): wav.<j>.scp + utt2num_samples.<j>
    lengths_name = "utt2num_frames" if kind == "fbank" else "utt2num_samples"
    scp: Dict[str, str] = {}
    u2nf: Dict[str, str] = {}
    bad: Dict[str, str] = {}
    resampled: Dict[str, str] = {}
    for j in range(1, nj + 1):
        for path, target, min_fields in (
            (os.path.join(out_dir, f"{prefix}.{j}.scp"), scp, 2),
            (os.path.join(out_dir, f"{lengths_name}.{j}"), u2nf, 2),
            (os.path.join(out_dir, f"bad_utts.{j}"), bad, 2),
            (os.path.join(out_dir, f"resampled.{j}"), resampled, 2),
        ):
            if target is resampled and not os.path.exists(path):
                continue  # jobs of an older version list none
            for key, value in read_kaldi_map(path, min_fields=min_fields):
                if key in target:
                    if target is resampled:  # a recording whose segments went to two jobs
                        continue
                    raise DataDirError(f"{path}: utterance '{key}' appears in two jobs")
                target[key] = value
    if set(scp) != set(u2nf):
        diff = sorted(set(scp) ^ set(u2nf))
        raise DataDirError(
            f"{out_dir}: {prefix}.*.scp and {lengths_name}.* disagree on "
            f"{len(diff)} utterances, e.g. {diff[:5]}"
        )
    both = sorted(set(scp) & set(bad))
    if both:
        raise DataDirError(
            f"{out_dir}: utterances both extracted and skipped: {both[:5]}"
        )
    if data_dir is not None:
        expected = {u.utt_id for u in list_utterances(data_dir)}
        got = set(scp) | set(bad)
        missing = sorted(expected - got)
        extra = sorted(got - expected)
        if missing:
            raise DataDirError(
                f"{len(missing)} utterances of {data_dir} are missing from "
                f"{out_dir} (neither extracted nor skipped), e.g. {missing[:10]}"
            )
        if extra:
            raise DataDirError(
                f"{len(extra)} utterances in {out_dir} are not in {data_dir}, "
                f"e.g. {extra[:10]}"
            )
    keys = sorted(scp)
    if kind == "fbank":
        outputs = {
            "feats.scp": [f"{k} {scp[k]}\n" for k in keys],
            "utt2num_frames": [f"{k} {u2nf[k]}\n" for k in keys],
            "feats_shape": [f"{k} {u2nf[k]},{feat_dim}\n" for k in keys],
        }
    else:  # ESPnet's raw speech_shape is the number of samples
        outputs = {
            "wav.scp": [f"{k} {scp[k]}\n" for k in keys],
            "utt2num_samples": [f"{k} {u2nf[k]}\n" for k in keys],
            "speech_shape": [f"{k} {u2nf[k]}\n" for k in keys],
        }
    # every skipped utterance of every job, in one list (the recipe's count and list file)
    outputs["bad_utts"] = [f"{k}\t{bad[k]}\n" for k in sorted(bad)]
    for fname, lines in outputs.items():
        final = os.path.join(out_dir, fname)
        tmp = final + f".tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, final)
    if bad:
        logger.warning(
            "%d utterances were skipped because of bad audio (see %s/bad_utts.*)",
            len(bad),
            out_dir,
        )
    # every recording resampled to --fs (recording<TAB>rate<TAB>audio), when there are some
    resampled_list = os.path.join(out_dir, "resampled")
    rates_and_audio = {k: v.split(None, 1) for k, v in resampled.items()}  # "rate<TAB>audio"
    write_resampled_list(resampled_list, {k: (v[-1], v[0]) for k, v in rates_and_audio.items()})
    if resampled:
        logger.warning(
            "%d recording(s) at another sampling rate were resampled (listed in %s)",
            len(resampled),
            resampled_list,
        )
    logger.info("merged %d utterances from %d jobs into %s", len(keys), nj, out_dir)
    return {"utts": len(keys), "skipped": len(bad)}


def get_parser(sub: str) -> argparse.ArgumentParser:
    if sub == "merge":
        p = argparse.ArgumentParser(
            prog="python -m espnet2_birq.bin.extract_fbank merge",
            description="Merge per-job fbank outputs.",
        )
        p.add_argument("--out_dir", required=True)
        p.add_argument("--nj", type=int, required=True)
        p.add_argument(
            "--data_dir",
            default=None,
            help="full data dir; checks all its utterances are accounted for",
        )
        p.add_argument("--prefix", default="feats")
        p.add_argument("--n_mels", type=int, default=80)
        p.add_argument("--kind", choices=["fbank", "raw"], default="fbank",
                       help="raw: merge the outputs of 'check' (wav.<j>.scp, utt2num_samples.<j>)")
        return p
    if sub == "check":
        p = argparse.ArgumentParser(
            prog="python -m espnet2_birq.bin.extract_fbank check",
            description="Check audio that SSL training reads raw (--feats_type raw).",
        )
        p.add_argument("--data_dir", required=True)
        p.add_argument("--out_dir", required=True)
        p.add_argument("--name", required=True, help="e.g. wav.2 for job 2")
        p.add_argument("--fs", type=int, default=16000,
                       help="sampling rate SSL training reads; audio at another rate is resampled to it "
                            "(a copy in OUT_DIR/resampled_audio, listed in OUT_DIR/resampled.<job>)")
        p.add_argument("--skip_bad_audio", type=str2bool, default=False)
        p.add_argument("--min_frames", type=int, default=1, help="shorter audio (in 10 ms frames) is bad audio")
        return p
    p = argparse.ArgumentParser(
        prog="python -m espnet2_birq.bin.extract_fbank",
        description="Extract 80-dim Kaldi fbank for a data dir (see 'merge' too).",
    )
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--name", required=True, help="e.g. feats.2 for job 2")
    p.add_argument("--fs", type=int, default=16000,
                   help="sampling rate of the features; audio at another rate is resampled to it "
                        "(listed in OUT_DIR/resampled.<job>)")
    p.add_argument("--n_mels", type=int, default=80)
    p.add_argument("--skip_bad_audio", type=str2bool, default=False)
    p.add_argument("--log_interval", type=int, default=500)
    p.add_argument("--min_frames", type=int, default=1, help="shorter audio (in 10 ms frames) is bad audio")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = "extract"
    if argv and argv[0] in ("extract", "merge", "check"):
        sub = argv.pop(0)
    args = get_parser(sub).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    try:
        if sub == "merge":
            merge(args.out_dir, args.nj, args.data_dir, args.prefix, args.n_mels, args.kind)
        elif sub == "check":
            check_raw(args.data_dir, args.out_dir, args.name, fs=args.fs, skip_bad_audio=args.skip_bad_audio,
                      min_frames=args.min_frames)
        else:
            extract(
                args.data_dir,
                args.out_dir,
                args.name,
                fs=args.fs,
                num_mel_bins=args.n_mels,
                skip_bad_audio=args.skip_bad_audio,
                log_interval=args.log_interval,
                min_frames=args.min_frames,
            )
    except (BadAudioError, DataDirError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
