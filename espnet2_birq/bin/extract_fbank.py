"""Kaldi fbank features, or a check of raw audio, for a Kaldi data directory (ssl_asr.sh stage 2).

    python -m espnet2_birq.bin.extract_fbank [extract] --data_dir D --out_dir O --name feats.2 \\
        [--fs 16000] [--skip_bad_audio false] [--min_frames 1]
    python -m espnet2_birq.bin.extract_fbank check --data_dir D --out_dir O --name wav.2 [same options]
    python -m espnet2_birq.bin.extract_fbank merge --out_dir O --nj 4 --data_dir D [--kind raw --prefix wav]

``extract`` writes :func:`espnet2_birq.features.kaldi_fbank` of every utterance of ``wav.scp``
(paths, ``cmd |`` pipes, ``ark:offset``) and ``segments`` to ``<name>.ark``/``.scp`` and
``utt2num_frames.<job>`` (``<job>``: what follows the last dot of ``name``); ``check``
(:func:`check_raw`) writes ``wav.<job>.scp`` and ``utt2num_samples.<job>``.  Both list skipped
utterances in ``bad_utts.<job>`` and recordings resampled to ``--fs`` in ``resampled.<job>``
(``recording<TAB>rate<TAB>audio``; no file when none).  ``merge`` joins the jobs' files, sorted,
with ESPnet's shape file, and fails naming the utterances of ``--data_dir`` no job accounts for.
Bad audio fails the job naming every bad utterance (also in ``bad_audio_errors.<job>``), unless
``--skip_bad_audio true`` skips, logs and lists it.  Outputs are written under temporary names
and renamed: a re-run replaces them and an interrupted job leaves none.
"""

import argparse
import hashlib
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import kaldiio
import numpy as np
import soundfile
import soxr
import torch

from espnet2.utils.types import str2bool
from espnet2_birq.features import kaldi_fbank, num_frames
from espnet2_birq.utils.datadir import DataDirError, parse_segment, read_kaldi_map

logger = logging.getLogger("espnet2_birq.extract_fbank")

# Kaldi's extract-segments accepts segment ends up to 0.5 s after the recording (and truncates).
MAX_SEGMENT_OVERSHOOT_S = 0.5
#: libsndfile sample formats finer than 16-bit integers: resampled audio stays float
FINE_SUBTYPES = frozenset({"FLOAT", "DOUBLE", "PCM_24", "PCM_32"})
FEAT_DIM = 80
MAX_LISTED_ERRORS = 50
LOG_EVERY = 500
#: check_raw's sub-directory of resampled copies (ssl_asr.sh removes it before a re-run)
RESAMPLED_AUDIO_DIR = "resampled_audio"
_ARK_OFFSET_RE = re.compile(r"(.+):\d+")


class BadAudioError(Exception):
    """Audio of an utterance is missing, unreadable or unusable."""


def job_suffix(name: str) -> str:
    """Job id of an output name: ``feats.2`` -> ``2``; ``feats`` -> ``feats``."""
    return name.rsplit(".", 1)[-1]


def is_ark_entry(spec: str) -> bool:
    """A Kaldi ``file.ark:offset`` entry (and no file of that name)."""
    match = _ARK_OFFSET_RE.fullmatch(spec)
    return not os.path.exists(spec) and match is not None and os.path.isfile(match.group(1))


def read_audio(spec: str) -> Tuple[np.ndarray, int, bool]:
    """A ``wav.scp`` value as float32 ``(samples, channels)`` in [-1, 1], its rate, and
    whether its samples are finer than 16-bit integers (see :func:`resample`).

    kaldiio opens the entry as Kaldi does (paths with spaces, ``cmd |`` pipes, whose exit
    status it does not check, so it is checked here, and ``ark:offset``); soundfile decodes
    the bytes, since kaldiio's own decoder reads 8/16-bit PCM only.
    """
    spec = spec.strip()
    if is_ark_entry(spec):
        return _read_ark_audio(spec)
    command = spec[:-1].strip() if spec.endswith("|") else None
    what = f"output of '{command}'" if command else f"audio file '{spec}'"
    if command is None and not os.path.exists(spec):
        raise BadAudioError(f"{what} does not exist")
    try:
        stream = kaldiio.open_like_kaldi(spec, "rb")
        try:
            payload = stream.read()
        finally:
            status = stream.close()
    except OSError as e:
        raise BadAudioError(f"cannot read {what}: {e}") from e
    if command and status:  # os.popen's status: the exit code in the high byte
        raise BadAudioError(f"command '{command}' failed with exit code {status >> 8}")
    if command and not payload:
        raise BadAudioError(f"command '{command}' produced no output")
    try:
        with soundfile.SoundFile(io.BytesIO(payload)) as f:
            if f.frames >= 2**62:  # libsndfile's count for a header without a length
                raise BadAudioError(f"{what}: the header gives no length; re-encode the file")
            return f.read(dtype="float32", always_2d=True), f.samplerate, f.subtype in FINE_SUBTYPES
    except BadAudioError:
        raise
    except Exception as e:  # libsndfile raises several types
        raise BadAudioError(f"cannot decode {what}: {e}") from e


def _read_ark_audio(spec: str) -> Tuple[np.ndarray, int, bool]:
    try:
        loaded = kaldiio.load_mat(spec)
    except Exception as e:
        raise BadAudioError(f"cannot read '{spec}': {e}") from e
    if not isinstance(loaded, tuple):
        raise BadAudioError(f"'{spec}' is a matrix, not audio")
    rate, samples = loaded[0], np.asarray(loaded[1])
    fine = samples.dtype.kind == "f" or samples.dtype.itemsize > 2
    if samples.dtype.kind in "iu":  # full scale -> 1.0; unsigned (8-bit PCM) is offset
        info = np.iinfo(samples.dtype)
        half = (int(info.max) - int(info.min) + 1) / 2
        samples = (samples.astype(np.float64) - (half if info.min == 0 else 0)) / half
    elif samples.dtype.kind != "f":
        raise BadAudioError(f"'{spec}': unsupported sample type {samples.dtype}")
    samples = samples.astype(np.float32)
    return samples.reshape(samples.shape[0], -1), int(rate), fine


def resample(data: np.ndarray, rate: int, fs: int, fine: bool = True) -> np.ndarray:
    """``data`` (samples, channels) at ``rate`` Hz as float32 at ``fs`` Hz.

    libsoxr at ``HQ`` quality: the resampler of sox's ``rate`` effect, which Kaldi's
    ``resample_data_dir.sh`` pipes run, linear-phase (the output stays aligned).  Audio of
    16-bit samples or coarser (``fine`` False) is put back on the 16-bit grid, as a resampled
    16-bit file holds it: its empty upper band then carries 16-bit quantisation noise like
    audio recorded at ``fs``, and ``--feats_type fbank`` and ``raw`` features agree.
    """
    if rate == fs:
        return data
    out = soxr.resample(np.ascontiguousarray(data, dtype=np.float32), rate, fs, quality="HQ")
    if not fine:
        out = np.clip(np.round(out * 32768.0), -32768.0, 32767.0) / 32768.0
    return np.asarray(out, dtype=np.float32).reshape(-1, data.shape[1])


def load_audio_at(spec: str, fs: int) -> Tuple[np.ndarray, int, bool]:
    """:func:`read_audio`, resampled to ``fs``; the rate returned is the stored one."""
    data, rate, fine = read_audio(spec)
    if rate != fs:
        try:
            data = resample(data, rate, fs, fine)
        except Exception as e:  # soxr refuses, e.g., absurd rates
            raise BadAudioError(f"cannot resample '{spec}' from {rate} Hz to {fs} Hz: {e}") from e
    return data, rate, fine


class Utterance(NamedTuple):
    """An utterance of a data dir: a whole recording, or a segment of it (seconds; end -1: to the end)."""

    utt_id: str
    reco_id: str
    spec: str
    start: Optional[float] = None
    end: Optional[float] = None

    def describe(self) -> str:
        segment = "" if self.start is None else (
            f" (segment {self.start}-{self.end} s of recording '{self.reco_id}')")
        return f"utterance '{self.utt_id}'{segment}, audio '{self.spec}'"


def list_utterances(data_dir: str) -> List[Utterance]:
    """The utterances of ``wav.scp`` and ``segments``; DataDirError on malformed files."""
    wav_scp = read_kaldi_map(os.path.join(data_dir, "wav.scp"))
    seg_path = os.path.join(data_dir, "segments")
    if not os.path.exists(seg_path):
        return [Utterance(k, k, v) for k, v in wav_scp]
    wavs = dict(wav_scp)
    utts = []
    for lineno, (utt_id, rest) in enumerate(read_kaldi_map(seg_path), 1):
        where = f"{seg_path}:{lineno}"
        try:
            reco, start, end = parse_segment(rest)
        except ValueError:
            raise DataDirError(f"{where}: expected '<utt> <reco> <start> <end>', got '{utt_id} {rest}'") from None
        if reco not in wavs:
            raise DataDirError(f"{where}: recording '{reco}' of utterance '{utt_id}' is not in "
                               f"{os.path.join(data_dir, 'wav.scp')}")
        if start < 0 or (end != -1 and end <= start):
            raise DataDirError(f"{where}: invalid times {start} {end} for utterance '{utt_id}'")
        utts.append(Utterance(utt_id, reco, wavs[reco], start, end))
    return utts


def cut_utterance(utt: Utterance, data: np.ndarray, rate: int) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """The mono samples of ``utt`` in its recording ``data`` (samples, channels), or why there are none."""
    if data.shape[1] != 1:
        return None, f"audio has {data.shape[1]} channels, expected 1"
    wav = data[:, 0]
    if utt.start is None:
        return wav, None
    length = f"{wav.shape[0] / rate:.3f} s"
    stop = wav.shape[0] if utt.end == -1 else int(utt.end * rate)
    if stop > wav.shape[0] + int(MAX_SEGMENT_OVERSHOOT_S * rate):
        return None, f"segment ends at {utt.end} s but the recording is only {length} long"
    if int(utt.start * rate) >= wav.shape[0]:
        return None, f"segment starts at {utt.start} s but the recording is only {length} long"
    return wav[int(utt.start * rate):stop], None


def check_waveform(wav: np.ndarray, rate: int, min_frames: int = 1) -> Optional[str]:
    """Why a mono waveform is unusable (too short, non-finite samples), or None."""
    if num_frames(len(wav), rate) < min_frames:
        return f"audio is {len(wav)} samples long, shorter than " + (
            "one 25 ms analysis window (no frames)" if min_frames <= 1
            else f"{min_frames} frames (--min_frames: the encoder's subsampling needs them)")
    if not bool(np.isfinite(wav).all()):
        return "audio holds NaN or inf samples"
    return None


def iter_waveforms(
    utts: Sequence[Utterance], fs: int, min_frames: int, resampled: Dict[str, str]
) -> Iterator[Tuple[Utterance, Optional[np.ndarray], bool, Optional[str]]]:
    """``(utt, mono samples at fs, fine, None)``, or ``(utt, None, False, reason)`` for bad audio.

    Consecutive segments of a recording read it once; a recording at another rate is
    resampled and added to ``resampled`` (recording -> ``rate<TAB>audio``).
    """
    cached_spec, cached = None, None
    for utt in utts:
        if utt.spec != cached_spec:
            cached_spec = utt.spec
            try:
                cached = load_audio_at(utt.spec, fs)
                if cached[1] != fs:
                    resampled[utt.reco_id] = f"{cached[1]}\t{utt.spec}"
            except BadAudioError as e:
                cached = e
        if isinstance(cached, BadAudioError):
            yield utt, None, False, str(cached)
            continue
        wav, err = cut_utterance(utt, cached[0], fs)
        err = err or check_waveform(wav, fs, min_frames)
        yield utt, None if err else wav, cached[2], err


class BadAudioLog:
    """The bad utterances of a job: skipped, logged and listed with ``--skip_bad_audio``,
    otherwise collected so that the job fails naming all of them at once."""

    def __init__(self, skip: bool):
        self.skip, self.skipped, self.errors = skip, [], []

    def add(self, utt: Utterance, reason: str, skippable: bool = True) -> None:
        if self.skip and skippable:
            logger.warning("skipping %s: %s", utt.describe(), reason)
            self.skipped.append(f"{utt.utt_id}\t{reason}\n")
        else:
            self.errors.append((utt, reason, skippable))

    def raise_errors(self, out_dir: str, job: str) -> None:
        """Fail listing every error, also in ``bad_audio_errors.<job>`` (utt, audio, reason)."""
        if not self.errors:
            return
        write_atomically(os.path.join(out_dir, f"bad_audio_errors.{job}"), "".join(
            f"{u.utt_id}\t{u.spec}\t{reason}".replace("\n", " ").rstrip() + "\n" for u, reason, _ in self.errors))
        lines = [f"  {u.describe()}: {reason}" for u, reason, _ in self.errors[:MAX_LISTED_ERRORS]]
        if len(self.errors) > MAX_LISTED_ERRORS:
            lines.append(f"  ... and {len(self.errors) - MAX_LISTED_ERRORS} more")
        skippable = [s for *_, s in self.errors if s]
        if skippable and not self.skip:
            lines.append("re-run with --skip_bad_audio true to drop and list the unreadable, too short or "
                         "non-finite ones")
        if len(skippable) < len(self.errors):
            lines.append("--feats_type raw never skips pipe or ark entries (see the fix above)")
        raise BadAudioError(f"{len(self.errors)} utterance(s) with bad audio:\n" + "\n".join(lines))


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_resampled_list(path: str, resampled: Dict[str, str], what: str) -> None:
    """``recording<TAB>rate<TAB>audio`` lines, sorted, and a warning; no file when none."""
    if not resampled:
        Path(path).unlink(missing_ok=True)  # of an earlier run
        return
    write_atomically(path, "".join(f"{k}\t{resampled[k]}\n" for k in sorted(resampled)))
    logger.warning("%s (listed in %s)", what, path)


def finish_job(out_dir: str, name: str, fs: int, outputs: Dict[str, str], bad: BadAudioLog,
               resampled: Dict[str, str], recordings: int, total: int) -> Dict[str, int]:
    """Write a successful job's lists (``outputs``: file name -> text) and log its counts."""
    job = job_suffix(name)
    outputs[f"bad_utts.{job}"] = "".join(bad.skipped)
    for fname, text in outputs.items():
        write_atomically(os.path.join(out_dir, fname), text)
    write_resampled_list(os.path.join(out_dir, f"resampled.{job}"), resampled,
                         f"{name}: resampled {len(resampled)} of {recordings} recording(s) "
                         f"from another sampling rate to {fs} Hz")
    if bad.skipped:
        logger.warning("%s: skipped %d of %d utterances with bad audio (listed in %s)",
                       name, len(bad.skipped), total, os.path.join(out_dir, f"bad_utts.{job}"))
    done = total - len(bad.skipped)
    logger.info("%s: %d utterances done, %d skipped", name, done, len(bad.skipped))
    return {"done": done, "skipped": len(bad.skipped), "total": total}


def extract(data_dir: str, out_dir: str, name: str, fs: int = 16000, skip_bad_audio: bool = False,
            min_frames: int = 1) -> Dict[str, int]:
    """Fbank of one (split) data dir at ``fs`` Hz; returns the ``done``/``skipped``/``total`` counts.
    Raises DataDirError (malformed data dir) or BadAudioError (naming the utterances and files)."""
    utts = list_utterances(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    ark_path = os.path.join(out_dir, f"{name}.ark")
    ark_tmp = f"{ark_path}.tmp{os.getpid()}"
    bad, resampled, scp, lengths = BadAudioLog(skip_bad_audio), {}, [], []
    try:
        with open(ark_tmp, "wb") as ark:
            for i, (utt, wav, _, err) in enumerate(iter_waveforms(utts, fs, min_frames, resampled), 1):
                feats = None
                if err is None:
                    feats = kaldi_fbank(torch.from_numpy(np.ascontiguousarray(wav)), fs, expected_sample_rate=fs)
                    if not bool(torch.isfinite(feats).all()):
                        err = "its features hold NaN or inf values"
                if err is not None:
                    bad.add(utt, err)
                elif not bad.errors:  # once failing, only look for more bad audio
                    offset = ark.tell() + len(utt.utt_id.encode("utf-8")) + 1  # after "<utt> "
                    kaldiio.save_ark(ark, {utt.utt_id: feats.numpy()})
                    scp.append(f"{utt.utt_id} {ark_path}:{offset}\n")
                    lengths.append(f"{utt.utt_id} {feats.shape[0]}\n")
                if i % LOG_EVERY == 0:
                    logger.info("%s: processed %d/%d utterances", name, i, len(utts))
        bad.raise_errors(out_dir, job_suffix(name))
        os.replace(ark_tmp, ark_path)
    finally:
        Path(ark_tmp).unlink(missing_ok=True)
    outputs = {f"{name}.scp": "".join(scp), f"utt2num_frames.{job_suffix(name)}": "".join(lengths)}
    return finish_job(out_dir, name, fs, outputs, bad, resampled, len({u.reco_id for u in utts}), len(utts))


def resampled_copy_path(out_dir: str, utt_id: str, fine: bool) -> str:
    """``out_dir/resampled_audio/<utt>.flac`` (16-bit) or ``.wav`` (float); an id unsafe as a
    file name becomes a sanitised name plus its md5."""
    name = utt_id
    if not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*", name):
        digest = hashlib.md5(utt_id.encode("utf-8")).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9._+-]", "_", utt_id).lstrip(".")[:100] + "-" + digest
    return os.path.join(out_dir, RESAMPLED_AUDIO_DIR, name + (".wav" if fine else ".flac"))


def write_resampled_copy(path: str, wav: np.ndarray, fs: int, fine: bool) -> None:
    """Mono ``wav`` as ESPnet's ``sound`` loader reads it back exactly: float WAV, or
    (on the 16-bit grid, :func:`resample`) 16-bit FLAC."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    if fine:
        soundfile.write(tmp, wav, fs, format="WAV", subtype="FLOAT")
    else:
        ints = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
        soundfile.write(tmp, ints, fs, format="FLAC", subtype="PCM_16")
    os.replace(tmp, path)


def check_raw(data_dir: str, out_dir: str, name: str, fs: int = 16000, skip_bad_audio: bool = False,
              min_frames: int = 1) -> Dict[str, int]:
    """Check the audio SSL training reads raw (``--feats_type raw``): ESPnet's ``sound`` loader
    opens plain files (no pipes, arks or segments) and ignores their rate, so everything
    :func:`extract` would refuse is refused here, and a recording at another rate than ``fs``
    is resampled into a copy (:func:`resampled_copy_path`) that ``wav.<job>.scp`` points to,
    as ESPnet's ``format_wav_scp.sh --fs`` does.  Same errors as :func:`extract`.
    """
    if os.path.exists(os.path.join(data_dir, "segments")):
        raise DataDirError(f"{data_dir}: has a segments file; --feats_type raw reads whole files "
                           "(use --feats_type fbank)")
    utts = list_utterances(data_dir)
    os.makedirs(out_dir, exist_ok=True)
    bad, resampled, readable, scp, lengths = BadAudioLog(skip_bad_audio), {}, [], [], []
    for utt in utts:
        spec = utt.spec.strip()
        if spec.endswith("|") or is_ark_entry(spec):
            bad.add(utt, "--feats_type raw reads plain audio files only (ESPnet's sound loader); "
                         "use --feats_type fbank for pipes and ark entries", skippable=False)
        else:
            readable.append(utt)
    for utt, wav, fine, err in iter_waveforms(readable, fs, min_frames, resampled):
        if err is not None:
            bad.add(utt, err)
            resampled.pop(utt.utt_id, None)  # only the copies written are listed
            continue
        entry = utt.spec
        if utt.utt_id in resampled:
            entry = resampled_copy_path(out_dir, utt.utt_id, fine)
            write_resampled_copy(entry, wav, fs, fine)
        scp.append(f"{utt.utt_id} {entry}\n")
        lengths.append(f"{utt.utt_id} {len(wav)}\n")
    bad.raise_errors(out_dir, job_suffix(name))
    outputs = {f"{name}.scp": "".join(scp), f"utt2num_samples.{job_suffix(name)}": "".join(lengths)}
    return finish_job(out_dir, name, fs, outputs, bad, resampled, len(utts), len(utts))


def _read_jobs(out_dir: str, pattern: str, nj: int, may_repeat: bool = False) -> Dict[str, str]:
    """The ``key value`` lines of the jobs' ``pattern.format(job)`` files (a key in two jobs
    is an error, unless ``may_repeat``: then missing files are allowed, too)."""
    merged: Dict[str, str] = {}
    for j in range(1, nj + 1):
        path = os.path.join(out_dir, pattern.format(j))
        if may_repeat and not os.path.exists(path):
            continue
        for key, value in read_kaldi_map(path):
            if key in merged and not may_repeat:
                raise DataDirError(f"{path}: utterance '{key}' appears in two jobs")
            merged.setdefault(key, value)
    return merged


def merge(out_dir: str, nj: int, data_dir: Optional[str] = None, prefix: str = "feats",
          kind: str = "fbank") -> Dict[str, int]:
    """Join the outputs of jobs ``1..nj`` of :func:`extract` (``kind`` raw: :func:`check_raw`); with
    ``data_dir``, each of its utterances must be extracted or skipped, and no other.  Returns the
    ``utts`` and ``skipped`` counts; DataDirError on missing or inconsistent files."""
    lengths_name = "utt2num_frames" if kind == "fbank" else "utt2num_samples"
    scp = _read_jobs(out_dir, prefix + ".{}.scp", nj)
    lengths = _read_jobs(out_dir, lengths_name + ".{}", nj)
    bad = _read_jobs(out_dir, "bad_utts.{}", nj)
    # a recording whose segments went to two jobs is listed by both
    resampled = _read_jobs(out_dir, "resampled.{}", nj, may_repeat=True)
    if set(scp) != set(lengths):
        diff = sorted(set(scp) ^ set(lengths))
        raise DataDirError(f"{out_dir}: {prefix}.*.scp and {lengths_name}.* disagree on "
                           f"{len(diff)} utterances, e.g. {diff[:5]}")
    both = sorted(set(scp) & set(bad))
    if both:
        raise DataDirError(f"{out_dir}: utterances both extracted and skipped: {both[:5]}")
    if data_dir is not None:
        expected, got = {u.utt_id for u in list_utterances(data_dir)}, set(scp) | set(bad)
        for ids, what in ((expected - got, f"of {data_dir} are missing from {out_dir} (neither extracted nor "
                           "skipped)"), (got - expected, f"in {out_dir} are not in {data_dir}")):
            if ids:
                raise DataDirError(f"{len(ids)} utterances {what}, e.g. {sorted(ids)[:10]}")
    keys = sorted(scp)
    # ESPnet shape files: frames and feature dimension, or (raw) samples
    shape_name, dim = ("feats_shape", f",{FEAT_DIM}") if kind == "fbank" else ("speech_shape", "")
    outputs = {
        "feats.scp" if kind == "fbank" else "wav.scp": "".join(f"{k} {scp[k]}\n" for k in keys),
        lengths_name: "".join(f"{k} {lengths[k]}\n" for k in keys),
        shape_name: "".join(f"{k} {lengths[k]}{dim}\n" for k in keys),
        "bad_utts": "".join(f"{k}\t{bad[k]}\n" for k in sorted(bad)),
    }
    for fname, text in outputs.items():
        write_atomically(os.path.join(out_dir, fname), text)
    if bad:
        logger.warning("%d utterances were skipped because of bad audio (see %s/bad_utts.*)", len(bad), out_dir)
    write_resampled_list(os.path.join(out_dir, "resampled"), resampled,
                         f"{len(resampled)} recording(s) at another sampling rate were resampled")
    logger.info("merged %d utterances from %d jobs into %s", len(keys), nj, out_dir)
    return {"utts": len(keys), "skipped": len(bad)}


def get_parser(sub: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m espnet2_birq.bin.extract_fbank {sub}",
                                description=__doc__.split("\n\n")[0])
    if sub == "merge":
        p.add_argument("--out_dir", required=True)
        p.add_argument("--nj", type=int, required=True)
        p.add_argument("--data_dir", default=None, help="full data dir: all its utterances must be accounted for")
        p.add_argument("--prefix", default="feats")
        p.add_argument("--kind", choices=["fbank", "raw"], default="fbank",
                       help="raw: merge the outputs of 'check' (wav.<j>.scp, utt2num_samples.<j>)")
        return p
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--name", required=True, help="feats.<job> (extract), wav.<job> (check)")
    p.add_argument("--fs", type=int, default=16000,
                   help="sampling rate; audio at another rate is resampled to it (listed in OUT_DIR/resampled.<job>)")
    p.add_argument("--skip_bad_audio", type=str2bool, default=False)
    p.add_argument("--min_frames", type=int, default=1, help="shorter audio (in 10 ms frames) is bad audio")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv.pop(0) if argv and argv[0] in ("extract", "merge", "check") else "extract"
    args = vars(get_parser(sub).parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    try:
        {"extract": extract, "check": check_raw, "merge": merge}[sub](**args)
    except (BadAudioError, DataDirError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
