"""Kaldi-style data directory tools: read, write, validate, fix, utt2dur, spk2utt, split.

The project's one Kaldi data-dir module: every reader and writer of data-dir files
(feature extraction, scoring, k-means, corpus preparation) goes through
:func:`read_kaldi_map` (strict: errors name the file and line), :class:`KaldiMap`
(lenient, for validation reports), :func:`write_map` and :func:`write_data_dir`, and
raises :class:`DataDirError`.

A data directory holds text files of ``key value`` lines sorted by key in C
(byte) order:

* ``wav.scp``   recording id -> audio path, or a shell command ending in ``|``
* ``segments``  (optional) utterance id -> recording id, start, end (seconds);
                without it, recording ids are the utterance ids
* ``utt2spk``   utterance id -> speaker id;  ``spk2utt`` speaker -> utterances
* ``text``      utterance id -> transcript (not needed for SSL pre-training: --no-text)
* optional per-utterance files kept in step: utt2dur, utt2num_frames, feats.scp

Command line (the utils/*.sh wrappers call these)::

    python -m espnet2_birq.utils.datadir validate [--no-text] [--no-feats] DIR
    python -m espnet2_birq.utils.datadir fix DIR
    python -m espnet2_birq.utils.datadir utt2dur [--nj N] DIR
    python -m espnet2_birq.utils.datadir spk2utt [UTT2SPK]        (stdin -> stdout)
    python -m espnet2_birq.utils.datadir split DIR N
    python -m espnet2_birq.utils.datadir filter_duration [--min S] [--max S] DIR OUT_DIR
    python -m espnet2_birq.utils.datadir speed_perturb [--python P] DIR OUT_DIR FACTOR...

Relative audio paths are resolved from the current directory (the recipe
directory), as Kaldi does.
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

PER_UTTERANCE_OPTIONAL_FILES = ("utt2dur", "utt2num_frames", "feats.scp")
# Files that split/fix know how to subset; anything else is reported, not dropped silently.
KNOWN_FILES = {"wav.scp", "segments", "utt2spk", "spk2utt", "text", *PER_UTTERANCE_OPTIONAL_FILES}
# Lists about a data dir, not of it: never split, and not worth a warning.
NOT_PER_UTTERANCE_FILES = {"removed_by_duration", "bad_audio"}
SHOWN_IDS = 5
_KALDI_ARK_RE = re.compile(r"^(.*\.ark):\d+$")


class DataDirError(ValueError):
    """A problem with a data directory; the message names the file and ids (or line)."""


def c_sort_key(key: str) -> bytes:
    """Sort key matching ``LC_ALL=C sort``: byte order of the UTF-8 encoding."""
    return key.encode("utf-8")


def first_ids(ids, count: int = SHOWN_IDS) -> str:
    ids = list(ids)
    shown = " ".join(ids[:count])
    return shown + (" ..." if len(ids) > count else "")


class KaldiMap:
    """Lines of one ``key value`` file, in file order, keeping duplicates.

    ``entries`` preserves everything that was read so that checks can report
    exact problems; ``as_dict`` is only valid after uniqueness was checked.
    """

    def __init__(self, path: Path, entries: List[Tuple[str, str]]):
        self.path = path
        self.entries = entries

    @classmethod
    def read(cls, path: Path) -> "KaldiMap":
        entries = []
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise DataDirError(f"{path}: cannot read: {error}") from None
        for line_number, raw_line in enumerate(raw.split(b"\n"), start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataDirError(f"{path}: line {line_number} is not valid UTF-8: {error}") from None
            line = line.rstrip("\r")
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            entries.append((parts[0], parts[1] if len(parts) > 1 else ""))
        return cls(path, entries)

    @property
    def keys(self) -> List[str]:
        return [key for key, _ in self.entries]

    def as_dict(self) -> "OrderedDict[str, str]":
        return OrderedDict(self.entries)

    def unsorted_keys(self) -> List[str]:
        """Keys that are not strictly greater (C order) than the key before them."""
        keys = self.keys
        return [b for a, b in zip(keys, keys[1:]) if c_sort_key(b) < c_sort_key(a)]

    def duplicate_keys(self) -> List[str]:
        counts = Counter(self.keys)
        return [key for key, count in counts.items() if count > 1]


def read_kaldi_map(path: Union[str, Path], min_fields: int = 2, key_name: str = "key") -> List[Tuple[str, str]]:
    """Read a Kaldi ``key value...`` file into an ordered list of pairs, strictly.

    Args:
        path: File to read (``wav.scp``, ``segments``, ``text``, ``feats.scp``, ...).
        min_fields: Minimum number of whitespace-separated fields per line
            (``1`` allows an empty value, e.g. an empty transcript).
        key_name: What the keys are, in the duplicate-key message (e.g. "utterance id").

    Returns:
        List of ``(key, rest_of_line)`` with the value stripped.

    Raises:
        DataDirError: on a missing file, blank or malformed lines or duplicate keys,
            naming the file and line number.
    """
    if not os.path.isfile(path):
        raise DataDirError(f"{path}: file not found")
    out: List[Tuple[str, str]] = []
    seen: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip() == "":
                raise DataDirError(f"{path}:{lineno}: empty line")
            parts = line.strip().split(maxsplit=1)
            key = parts[0]
            value = parts[1].strip() if len(parts) > 1 else ""
            if len(parts) < min_fields or (min_fields >= 2 and value == ""):
                raise DataDirError(f"{path}:{lineno}: expected '<key> <value>', got {line!r}")
            if key in seen:
                raise DataDirError(f"{path}:{lineno}: duplicate {key_name} '{key}' (first on line {seen[key]})")
            seen[key] = lineno
            out.append((key, value))
    return out


def write_map(path: Path, mapping: Mapping[str, str]) -> None:
    """Write ``key value`` lines sorted in C order (``key`` alone for empty values)."""
    lines = [f"{key} {value}" if value else key for key, value in sorted(mapping.items(), key=lambda kv: c_sort_key(kv[0]))]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_spk2utt(utt2spk: Dict[str, str]) -> "OrderedDict[str, str]":
    """Speakers in C order, each with its utterances in C order."""
    speakers: Dict[str, List[str]] = {}
    for utt in sorted(utt2spk, key=c_sort_key):
        speakers.setdefault(utt2spk[utt], []).append(utt)
    return OrderedDict((spk, " ".join(speakers[spk])) for spk in sorted(speakers, key=c_sort_key))


def classify_wav_entry(value: str) -> Tuple[str, List[str]]:
    """('pipe', []) for commands ending in '|', else ('paths', [the file that must exist]).

    As in Kaldi and ESPnet, the value is the rest of the line: a path may hold
    spaces.  ``file.ark:offset`` entries name ``file.ark``.
    """
    value = value.strip()
    if value.endswith("|"):
        return "pipe", []
    ark = _KALDI_ARK_RE.match(value)  # ESPnet/Kaldi "file.ark:offset" entries
    return "paths", [ark.group(1) if ark else value]


def parse_segment(value: str) -> Tuple[str, float, float]:
    """Split a segments value 'recording start end'; raises ValueError when malformed."""
    fields = value.split()
    if len(fields) != 3:
        raise ValueError(f"expected 'utt-id recording-id start end', got {len(fields) + 1} fields")
    return fields[0], float(fields[1]), float(fields[2])


# --------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------


def validate(data_dir: Path, require_text: bool = True, check_audio: bool = True) -> List[str]:
    """Return a list of problems (empty if the directory is valid).

    Each message names the file, the number of offending ids and the first ones.
    """
    problems: List[str] = []
    if not data_dir.is_dir():
        return [f"{data_dir}: not a directory"]
    required = ["wav.scp", "utt2spk", "spk2utt"] + (["text"] if require_text else [])
    missing_files = [name for name in required if not (data_dir / name).is_file()]
    for name in missing_files:
        hint = " (create it with utils/utt2spk_to_spk2utt.pl or utils/fix_data_dir.sh)" if name == "spk2utt" else ""
        hint = hint or (" (use --no-text if the data has no transcripts)" if name == "text" else "")
        problems.append(f"{data_dir / name}: required file is missing{hint}")

    maps: Dict[str, KaldiMap] = {}
    for name in sorted(KNOWN_FILES):
        path = data_dir / name
        if path.is_file():
            try:
                maps[name] = KaldiMap.read(path)
            except DataDirError as error:
                problems.append(str(error))
    for name, kmap in maps.items():
        if not kmap.entries:
            problems.append(f"{kmap.path}: file is empty")
        unsorted = kmap.unsorted_keys()
        duplicates = kmap.duplicate_keys()
        if unsorted:
            problems.append(
                f"{kmap.path}: not sorted in C locale order (LC_ALL=C sort), {len(unsorted)} key(s) out of order, "
                f"first: {first_ids(unsorted)}"
            )
        if duplicates:
            problems.append(f"{kmap.path}: {len(duplicates)} duplicate key(s), first: {first_ids(duplicates)}")
        if name != "text":
            no_value = [key for key, value in kmap.entries if not value]
            if no_value:
                problems.append(f"{kmap.path}: {len(no_value)} line(s) with a key but no value, first: {first_ids(no_value)}")

    if "wav.scp" not in maps or "utt2spk" not in maps:
        return problems

    wav_scp = maps["wav.scp"].as_dict()
    if "segments" in maps:
        segments = maps["segments"]
        utt_ids = set(segments.keys)
        id_source = segments.path
        bad_format, bad_times, unknown_recordings = [], [], []
        for utt, value in segments.entries:
            try:
                recording, start, end = parse_segment(value)
            except ValueError:
                bad_format.append(utt)
                continue
            if start < 0 or end <= start:
                bad_times.append(utt)
            if recording not in wav_scp:
                unknown_recordings.append(utt)
        if bad_format:
            problems.append(f"{segments.path}: {len(bad_format)} malformed line(s) (need 'utt rec start end'), first: {first_ids(bad_format)}")
        if bad_times:
            problems.append(f"{segments.path}: {len(bad_times)} segment(s) with negative start or end <= start, first: {first_ids(bad_times)}")
        if unknown_recordings:
            problems.append(
                f"{segments.path}: {len(unknown_recordings)} segment(s) whose recording id is not in "
                f"{maps['wav.scp'].path}, first: {first_ids(unknown_recordings)}"
            )
    else:
        utt_ids = set(wav_scp)
        id_source = maps["wav.scp"].path

    for name in ("utt2spk", "text", *PER_UTTERANCE_OPTIONAL_FILES):
        if name not in maps:
            continue
        keys = set(maps[name].keys)
        only_here = sorted(keys - utt_ids, key=c_sort_key)
        missing_here = sorted(utt_ids - keys, key=c_sort_key)
        if missing_here:
            problems.append(f"{maps[name].path}: {len(missing_here)} utterance(s) of {id_source} are missing, first: {first_ids(missing_here)}")
        if only_here:
            problems.append(f"{maps[name].path}: {len(only_here)} utterance(s) not in {id_source}, first: {first_ids(only_here)}")

    if "text" in maps:
        empty = [key for key, value in maps["text"].entries if not value.strip()]
        if empty:
            problems.append(f"{maps['text'].path}: {len(empty)} empty transcript(s), first: {first_ids(empty)}")

    if "spk2utt" in maps:
        expected = make_spk2utt(maps["utt2spk"].as_dict())
        actual = {spk: sorted(value.split(), key=c_sort_key) for spk, value in maps["spk2utt"].entries}
        differing = [spk for spk in expected if sorted(expected[spk].split(), key=c_sort_key) != actual.get(spk)]
        differing += [spk for spk in actual if spk not in expected]
        if differing:
            problems.append(
                f"{maps['spk2utt'].path}: {len(differing)} speaker(s) disagree with {maps['utt2spk'].path}, "
                f"first: {first_ids(differing)} (regenerate with utils/utt2spk_to_spk2utt.pl)"
            )

    # Kaldi needs each speaker's utterances to be contiguous in utterance order
    # (speaker id as utterance-id prefix), else per-speaker splits and spk2utt-based
    # tools see a speaker twice.
    utt2spk_map = maps["utt2spk"].as_dict()
    seen_speakers = set()
    previous_speaker = None
    scattered = []
    for utt in sorted(maps["utt2spk"].keys, key=c_sort_key):
        speaker = utt2spk_map[utt]
        if speaker != previous_speaker:
            if speaker in seen_speakers:
                scattered.append(speaker)
            seen_speakers.add(speaker)
            previous_speaker = speaker
    if scattered:
        problems.append(
            f"{maps['utt2spk'].path}: {len(scattered)} speaker(s) whose utterances are not "
            f"contiguous in sorted order (make the speaker id a prefix of the utterance id), "
            f"first: {first_ids(scattered)}"
        )

    if check_audio:
        missing_audio = missing_audio_recordings(wav_scp)
        if missing_audio:
            problems.append(
                f"{maps['wav.scp'].path}: {len(missing_audio)} recording(s) whose audio file does not exist, "
                f"first: {first_ids(missing_audio)} ({wav_scp[missing_audio[0]]})"
            )
    return problems


def missing_audio_recordings(wav_scp: Dict[str, str]) -> List[str]:
    """Recording ids whose plain-path entries point to files that do not exist."""
    missing = []
    for recording, value in wav_scp.items():
        kind, paths = classify_wav_entry(value)
        if kind == "paths" and any(not Path(path).is_file() for path in paths):
            missing.append(recording)
    return missing


def summary(data_dir: Path) -> str:
    wav_scp = KaldiMap.read(data_dir / "wav.scp").as_dict()
    pipes = sum(1 for value in wav_scp.values() if classify_wav_entry(value)[0] == "pipe")
    utt2spk = KaldiMap.read(data_dir / "utt2spk").as_dict()
    return (
        f"{data_dir}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} speakers, "
        f"{len(wav_scp)} recordings ({pipes} piped wav.scp entries not opened)"
    )


def validate_data_dir(data_dir, require_text: bool = True) -> Dict[str, int]:
    """:func:`validate` that raises; returns the numbers of utterances, speakers,
    recordings and transcripts.

    Raises:
        DataDirError: naming every problem found (file, count and first ids).
    """
    d = Path(data_dir)
    problems = validate(d, require_text=require_text)
    if problems:
        raise DataDirError(f"{d}: " + "; ".join(problems))
    counts = {}
    for key, name in (("utts", "utt2spk"), ("spks", "spk2utt"), ("recs", "wav.scp"), ("text", "text")):
        path = d / name
        counts[key] = len(KaldiMap.read(path).keys) if path.is_file() else 0
    return counts


def write_data_dir(
    data_dir,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str],
    text: Optional[Mapping[str, str]] = None,
    segments: Optional[Mapping[str, Tuple[str, float, float]]] = None,
    utt2dur: Optional[Mapping[str, float]] = None,
    reco2dur: Optional[Mapping[str, float]] = None,
) -> Path:
    """Write a validated, C-sorted Kaldi data directory (corpus preparation) and return it.

    ``segments`` maps ``utt -> (recording, start_s, end_s)``; without it the keys of
    ``wav_scp`` are utterance ids. Files of an earlier run that this one does not
    write are removed.
    """
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "utt2spk", "spk2utt", "text", "segments", "utt2dur", "reco2dur",
                 "feats.scp", "utt2num_frames", "spk2gender", "cmvn.scp"):
        (d / name).unlink(missing_ok=True)  # stale files from earlier runs
    write_map(d / "wav.scp", wav_scp)
    write_map(d / "utt2spk", utt2spk)
    write_map(d / "spk2utt", make_spk2utt(dict(utt2spk)))
    if text is not None:
        write_map(d / "text", text)
    if segments is not None:
        write_map(d / "segments", {u: f"{r} {s:.2f} {e:.2f}" for u, (r, s, e) in segments.items()})
    if utt2dur is not None:
        write_map(d / "utt2dur", {u: f"{v:.3f}" for u, v in utt2dur.items()})
    if reco2dur is not None:
        write_map(d / "reco2dur", {u: f"{v:.3f}" for u, v in reco2dur.items()})
    validate_data_dir(d, require_text=text is not None)
    return d


# --------------------------------------------------------------------------
# fix
# --------------------------------------------------------------------------


def fix(data_dir: Path) -> Tuple[int, Counter, List[str]]:
    """Sort, drop inconsistent utterances, regenerate spk2utt; back up originals.

    Returns (kept utterance count, Counter of drop reasons, rewritten files).  Nothing is
    written when the directory is already valid and sorted.
    """
    for name in ("wav.scp", "utt2spk"):
        if not (data_dir / name).is_file():
            raise DataDirError(f"{data_dir / name}: required file is missing; fix_data_dir cannot create it")
    present = [name for name in sorted(KNOWN_FILES) if (data_dir / name).is_file()]
    maps = {name: KaldiMap.read(data_dir / name) for name in present}
    reasons: Dict[str, str] = {}  # utterance -> first reason it is dropped

    def drop(utt: str, reason: str) -> None:
        reasons.setdefault(utt, reason)

    def unique_dict(name: str) -> Tuple[Dict[str, str], set]:
        """Entries of a file; identical repeated lines are merged, conflicting ones reported."""
        values: Dict[str, str] = {}
        conflicting = set()
        for key, value in maps[name].entries:
            if key in values and values[key] != value:
                conflicting.add(key)
            values.setdefault(key, value)
        for key in conflicting:
            del values[key]
        return values, conflicting

    wav_scp, conflicting_recordings = unique_dict("wav.scp")
    missing_audio = set(missing_audio_recordings(wav_scp))
    empty_recordings = {rec for rec, value in wav_scp.items() if not value}

    if "segments" in maps:
        segments, conflicting = unique_dict("segments")
        for utt in conflicting:
            drop(utt, "conflicting duplicate lines in segments")
        for utt, value in segments.items():
            try:
                recording, start, end = parse_segment(value)
            except ValueError:
                drop(utt, "malformed line in segments")
                continue
            if start < 0 or end <= start:
                drop(utt, "segment with negative start or end <= start")
            elif recording in conflicting_recordings:
                drop(utt, "conflicting duplicate lines in wav.scp")
            elif recording not in wav_scp or recording in empty_recordings:
                drop(utt, "recording not in wav.scp")
            elif recording in missing_audio:
                drop(utt, "audio file missing")
        utt_ids = set(segments) | set(conflicting)
    else:
        segments = None
        for rec in conflicting_recordings:
            drop(rec, "conflicting duplicate lines in wav.scp")
        for rec in empty_recordings:
            drop(rec, "malformed line in wav.scp")
        for rec in missing_audio:
            drop(rec, "audio file missing")
        utt_ids = set(wav_scp) | conflicting_recordings

    per_utt = {}
    for name in ("utt2spk", "text", *PER_UTTERANCE_OPTIONAL_FILES):
        if name not in maps:
            continue
        values, conflicting = unique_dict(name)
        for utt in conflicting:
            drop(utt, f"conflicting duplicate lines in {name}")
        for utt in utt_ids - set(values) - conflicting:
            drop(utt, f"missing from {name}")
        for utt in set(values) - utt_ids:
            drop(utt, f"missing from {'segments' if segments is not None else 'wav.scp'}")
        if name == "text":
            for utt, value in values.items():
                if not value.strip():
                    drop(utt, "empty transcript")
        elif name != "text":
            for utt, value in values.items():
                if not value:
                    drop(utt, f"malformed line in {name}")
        per_utt[name] = values

    kept = sorted(utt_ids - set(reasons), key=c_sort_key)
    if not kept:
        raise DataDirError(
            f"{data_dir}: fixing would drop all {len(reasons)} utterances ("
            + "; ".join(f"{r}: {c}" for r, c in Counter(reasons.values()).most_common()) + "); nothing written"
        )
    kept_set = set(kept)

    new_files: Dict[str, Dict[str, str]] = {}
    for name, values in per_utt.items():
        new_files[name] = {utt: values[utt] for utt in kept}
    new_files["spk2utt"] = make_spk2utt(new_files["utt2spk"])
    if segments is not None:
        new_files["segments"] = {utt: segments[utt] for utt in kept}
        # Recordings no segment uses are kept (valid in Kaldi); only broken ones go.
        new_files["wav.scp"] = {rec: value for rec, value in wav_scp.items() if rec not in missing_audio and value}
    else:
        new_files["wav.scp"] = {rec: wav_scp[rec] for rec in kept}

    changed = []
    for name, mapping in new_files.items():
        path = data_dir / name
        buffer = io.StringIO()
        for key, value in sorted(mapping.items(), key=lambda kv: c_sort_key(kv[0])):
            buffer.write(f"{key} {value}\n" if value else f"{key}\n")
        if not path.is_file() or path.read_text(encoding="utf-8") != buffer.getvalue():
            changed.append(name)
    if changed:
        backup = data_dir / ".backup"
        backup.mkdir(exist_ok=True)
        for name in present:
            shutil.copy2(data_dir / name, backup / name)
        for name in changed:
            write_map(data_dir / name, new_files[name])
    return len(kept_set), Counter(reasons.values()), changed


# --------------------------------------------------------------------------
# utt2dur
# --------------------------------------------------------------------------


# soundfile reports this many frames (SF_COUNT_MAX) when a header does not say the
# length (a FLAC STREAMINFO with 0 total samples): 160 billion hours in utt2dur.
_UNKNOWN_FRAMES = 2**62


def audio_duration(value: str) -> float:
    """Duration in seconds of one wav.scp entry (path, file.ark:offset or pipe).

    Raises:
        ValueError: the audio has no samples.
    """
    import soundfile  # imported here so that validate/fix/split work without it

    kind, paths = classify_wav_entry(value)
    if kind == "pipe":
        result = subprocess.run(value.rstrip()[:-1], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if result.returncode != 0:
            raise RuntimeError(f"command failed with exit code {result.returncode}: {result.stderr.decode(errors='replace').strip()}")
        # Piped WAV headers often carry a bogus length, so count the samples.
        data, rate = soundfile.read(io.BytesIO(result.stdout), always_2d=True)
        frames = data.shape[0]
    elif _KALDI_ARK_RE.match(value.strip()):
        import kaldiio

        rate, samples = kaldiio.load_mat(value.strip())
        frames = len(samples)
    else:
        info = soundfile.info(paths[0])
        rate, frames = info.samplerate, info.frames
        if frames >= _UNKNOWN_FRAMES:
            raise ValueError(
                "the header gives no length (e.g. a FLAC stream with 0 total samples in STREAMINFO; "
                "libsndfile then reports 2^63 frames and cannot read it): re-encode the file"
            )
    if frames <= 0:
        raise ValueError("the audio has no samples")
    return frames / rate


def drop_recordings(data_dir: Path, bad: Dict[str, str]) -> None:
    """Remove recordings from DIR/wav.scp, their utterances from every file; list them in DIR/bad_audio."""
    write_map(data_dir / "bad_audio", {rec: reason.replace("\n", " ") for rec, reason in bad.items()})
    wav_scp = KaldiMap.read(data_dir / "wav.scp").as_dict()
    write_map(data_dir / "wav.scp", {rec: value for rec, value in wav_scp.items() if rec not in bad})
    for name in ("utt2dur",):
        (data_dir / name).unlink(missing_ok=True)
    fix(data_dir)


def compute_utt2dur(data_dir: Path, num_jobs: int = 1, skip_bad_audio: bool = False) -> Tuple[int, int]:
    """Write DIR/utt2dur; returns (utterances written, recordings dropped).

    Unreadable or empty recordings are all reported at once (DataDirError,
    nothing written) or, with ``skip_bad_audio``, dropped from the directory
    with their utterances and listed in DIR/bad_audio.
    """
    wav_scp = KaldiMap.read(data_dir / "wav.scp").as_dict()
    durations: Dict[str, float] = {}
    segments_path = data_dir / "segments"
    (data_dir / "bad_audio").unlink(missing_ok=True)
    dropped = 0
    if segments_path.is_file():
        bad = []
        for utt, value in KaldiMap.read(segments_path).entries:
            try:
                _, start, end = parse_segment(value)
            except ValueError:
                bad.append(utt)
                continue
            durations[utt] = end - start
        if bad:
            raise DataDirError(f"{segments_path}: {len(bad)} malformed line(s), first: {first_ids(bad)}")
    else:
        def measure(item):
            recording, value = item
            try:
                return recording, audio_duration(value), None
            except Exception as error:  # any reader failure is reported per recording
                return recording, None, f"{type(error).__name__}: {error}"

        failures = []
        with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
            for recording, duration, error in pool.map(measure, wav_scp.items()):
                if error is None:
                    durations[recording] = duration
                else:
                    failures.append((recording, error))
        if failures and skip_bad_audio:
            if len(failures) == len(wav_scp):
                raise DataDirError(f"{data_dir / 'wav.scp'}: none of the {len(wav_scp)} recordings can be read, "
                                   f"e.g. {failures[0][0]}: {wav_scp[failures[0][0]]}: {failures[0][1]}")
            drop_recordings(data_dir, dict(failures))
            dropped = len(failures)
            print(f"get_utt2dur: warning: {data_dir}: dropped {dropped} unreadable or empty recording(s) and their "
                  f"utterances (--skip_bad_audio true), listed in {data_dir / 'bad_audio'}", file=sys.stderr)
            kept = set(KaldiMap.read(data_dir / "wav.scp").keys)
            durations = {rec: dur for rec, dur in durations.items() if rec in kept}
        elif failures:
            details = "\n".join(f"  {rec}: {wav_scp[rec]}: {err}" for rec, err in failures)
            raise DataDirError(
                f"{data_dir / 'wav.scp'}: {len(failures)} recording(s) could not be read or are empty; "
                f"utt2dur not written:\n{details}\n"
                "Re-run with --skip_bad_audio true to drop them (listed in bad_audio of the data dir), "
                "or repair or remove these files in the corpus."
            )
    write_map(data_dir / "utt2dur", {utt: f"{dur:.3f}" for utt, dur in durations.items()})
    return len(durations), dropped


# --------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------


def split(data_dir: Path, num_splits: int) -> Path:
    """Split by utterance into DIR/splitN/1..N, each a valid data directory."""
    require_text = (data_dir / "text").is_file()
    problems = validate(data_dir, require_text=require_text, check_audio=False)
    if problems:
        raise DataDirError(
            f"{data_dir}: not a valid data directory, run utils/fix_data_dir.sh first:\n  " + "\n  ".join(problems)
        )
    utt2spk = KaldiMap.read(data_dir / "utt2spk").as_dict()
    utterances = list(utt2spk)  # already in C order (validated)
    if num_splits < 1 or num_splits > len(utterances):
        raise DataDirError(f"{data_dir}: cannot split {len(utterances)} utterances into {num_splits} parts")
    unknown = sorted(
        p.name for p in data_dir.iterdir()
        if p.is_file() and p.name not in KNOWN_FILES | NOT_PER_UTTERANCE_FILES and not p.name.startswith(".")
    )
    if unknown:
        print(f"split_data: warning: {data_dir}: not copied into the splits (unknown layout): {' '.join(unknown)}",
              file=sys.stderr)

    files = {name: KaldiMap.read(data_dir / name).as_dict() for name in KNOWN_FILES if (data_dir / name).is_file()}
    split_root = data_dir / f"split{num_splits}"
    if split_root.exists():
        shutil.rmtree(split_root)  # stale files from an earlier split must not survive
    base, extra = divmod(len(utterances), num_splits)
    start = 0
    for part in range(1, num_splits + 1):
        size = base + (1 if part <= extra else 0)
        chunk = utterances[start:start + size]
        start += size
        _write_subset(files, chunk, split_root / str(part))
    return split_root


def _write_subset(files: Dict[str, Dict[str, str]], utterances: List[str], out_dir: Path) -> None:
    """The data dir of ``utterances`` (and their recordings) from a valid one's ``files``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("utt2spk", "text", "segments", *PER_UTTERANCE_OPTIONAL_FILES):
        if name in files:
            write_map(out_dir / name, {utt: files[name][utt] for utt in utterances})
    if "segments" in files:
        recordings = {parse_segment(files["segments"][utt])[0] for utt in utterances}
    else:
        recordings = set(utterances)
    write_map(out_dir / "wav.scp", {rec: files["wav.scp"][rec] for rec in recordings})
    write_map(out_dir / "spk2utt", make_spk2utt({utt: files["utt2spk"][utt] for utt in utterances}))


def subset(data_dir: Path, utterances: List[str], out_dir: Path) -> None:
    """Write to ``out_dir`` the data dir of ``utterances`` of the valid ``data_dir``."""
    _write_subset(_read_valid(data_dir, need_utt2dur=False), utterances, out_dir)


# --------------------------------------------------------------------------
# duration filter and speed perturbation (ssl.sh --min/max_wav_duration, --speed_perturb_factors)
# --------------------------------------------------------------------------


def _read_valid(data_dir: Path, need_utt2dur: bool = True) -> Dict[str, Dict[str, str]]:
    problems = validate(data_dir, require_text=(data_dir / "text").is_file(), check_audio=False)
    if problems:
        raise DataDirError(f"{data_dir}: not a valid data directory:\n  " + "\n  ".join(problems))
    if need_utt2dur and not (data_dir / "utt2dur").is_file():
        raise DataDirError(f"{data_dir / 'utt2dur'}: file not found (utils/get_utt2dur.sh writes it)")
    return {name: KaldiMap.read(data_dir / name).as_dict() for name in KNOWN_FILES if (data_dir / name).is_file()}


def filter_by_duration(
    data_dir: Path, out_dir: Path, min_seconds: float = 0.0, max_seconds: Optional[float] = None
) -> Tuple[int, Dict[str, float]]:
    """Write to ``out_dir`` the utterances of ``data_dir`` lasting from ``min_seconds`` to
    ``max_seconds`` (utt2dur), and the others, with their durations, to
    ``out_dir/removed_by_duration``.

    Returns:
        The number kept and the removed utterances' durations.
    """
    files = _read_valid(data_dir)
    durations = {}
    for utt in files["utt2spk"]:
        try:
            durations[utt] = float(files["utt2dur"][utt])
        except (KeyError, ValueError):
            raise DataDirError(f"{data_dir / 'utt2dur'}: no duration for utterance {utt}") from None
    removed = {u: d for u, d in durations.items() if d < min_seconds or (max_seconds is not None and d > max_seconds)}
    kept = [u for u in files["utt2spk"] if u not in removed]
    if not kept:
        raise DataDirError(f"{data_dir}: all {len(durations)} utterances last less than {min_seconds} s or more "
                           f"than {max_seconds} s (utt2dur); nothing would be left")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _write_subset(files, kept, out_dir)
    write_map(out_dir / "removed_by_duration", {u: f"{d:.3f}" for u, d in removed.items()})
    return len(kept), removed


def speed_perturb_entry(value: str, factor: str, python: str = "python3") -> str:
    """The ``wav.scp`` value of a recording played ``factor`` times faster: a pipe through
    ``espnet2_birq.bin.speed_perturb`` (what Kaldi's perturb_data_dir_speed.sh does with sox)."""
    command = f"{python} -m espnet2_birq.bin.speed_perturb {factor}"
    if value.endswith("|"):
        return f"{value[:-1].strip()} | {command} - |"
    if _KALDI_ARK_RE.match(value):
        raise DataDirError(f"speed perturbation reads audio files and pipes, not ark entries: {value}")
    return f"{command} {value} |"


def speed_perturb_dir(data_dir: Path, out_dir: Path, factors: List[str], python: str = "python3") -> int:
    """Kaldi's perturb_data_dir_speed.sh for each factor, combined (utils/combine_data.sh)
    in ``out_dir``: utterance, speaker and recording ids get an ``sp<factor>-`` prefix
    (none for 1.0, the original), durations and segment times are divided by the factor.

    Returns:
        The number of utterances written.
    """
    files = _read_valid(data_dir)
    out: Dict[str, Dict[str, str]] = {"wav.scp": {}, "utt2spk": {}, "utt2dur": {}}
    if "text" in files:
        out["text"] = {}
    if "segments" in files:
        out["segments"] = {}
    for factor in factors:
        try:
            speed = float(factor)
        except ValueError:
            speed = -1.0
        if not speed > 0:
            raise DataDirError(f"speed perturbation factor must be a positive number, got '{factor}'")
        prefix = "" if speed == 1.0 else f"sp{factor}-"
        for rec, value in files["wav.scp"].items():
            out["wav.scp"][prefix + rec] = value if not prefix else speed_perturb_entry(value, factor, python)
        for utt, spk in files["utt2spk"].items():
            out["utt2spk"][prefix + utt] = prefix + spk
            out["utt2dur"][prefix + utt] = f"{float(files['utt2dur'][utt]) / speed:.3f}"
            if "text" in files:
                out["text"][prefix + utt] = files["text"][utt]
            if "segments" in files:
                rec, start, end = parse_segment(files["segments"][utt])
                end_text = "-1" if end == -1 else f"{end / speed:.3f}"
                out["segments"][prefix + utt] = f"{prefix + rec} {start / speed:.3f} {end_text}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name, mapping in out.items():
        write_map(out_dir / name, mapping)
    write_map(out_dir / "spk2utt", make_spk2utt(out["utt2spk"]))
    problems = validate(out_dir, require_text="text" in out, check_audio=False)
    if problems:
        raise DataDirError(f"{out_dir}: " + "; ".join(problems))
    return len(out["utt2spk"])


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet2_birq.utils.datadir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("validate", help="check a data directory")
    p.add_argument("--no-text", action="store_true", help="the directory has no text file (SSL data)")
    p.add_argument("--no-feats", action="store_true",
                   help="accepted for Kaldi compatibility: feats.scp is never required, only checked when present")
    p.add_argument("data_dir", type=Path)
    p = commands.add_parser("fix", help="sort and drop inconsistent utterances (backup in DIR/.backup)")
    p.add_argument("data_dir", type=Path)
    p = commands.add_parser("utt2dur", help="write DIR/utt2dur")
    p.add_argument("--nj", type=int, default=4, help="recordings read in parallel (I/O bound)")
    p.add_argument("--skip_bad_audio", "--skip-bad-audio", choices=["true", "false"], default="false",
                   help="true: drop unreadable or empty recordings (listed in DIR/bad_audio) instead of failing")
    p.add_argument("data_dir", type=Path)
    p = commands.add_parser("spk2utt", help="utt2spk (file or stdin) -> spk2utt on stdout")
    p.add_argument("utt2spk", nargs="?", help="default: stdin")
    p = commands.add_parser("filter_duration", help="utterances of DIR from --min to --max seconds (utt2dur) -> OUT_DIR")
    p.add_argument("--min", type=float, default=0.0, help="seconds; shorter utterances are removed")
    p.add_argument("--max", type=float, default=None, help="seconds; longer utterances are removed")
    p.add_argument("data_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p = commands.add_parser("speed_perturb", help="speed-perturbed copies of DIR, combined in OUT_DIR")
    p.add_argument("--python", default="python3", help="interpreter of the wav.scp pipes")
    p.add_argument("data_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("factors", nargs="+", help="e.g. 0.9 1.0 1.1 (1.0: the original ids)")
    p = commands.add_parser("split", help="split by utterance into DIR/splitN/1..N")
    p.add_argument("--per-utt", action="store_true", help="accepted for Kaldi compatibility; splitting is always per utterance")
    p.add_argument("data_dir", type=Path)
    p.add_argument("num_splits", type=int)
    args = parser.parse_args(argv)

    program = {"validate": "validate_data_dir", "fix": "fix_data_dir", "utt2dur": "get_utt2dur",
               "spk2utt": "utt2spk_to_spk2utt", "split": "split_data", "filter_duration": "filter_duration",
               "speed_perturb": "speed_perturb"}[args.command]
    try:
        if args.command == "validate":
            problems = validate(args.data_dir, require_text=not args.no_text)
            if problems:
                for problem in problems:
                    print(f"{program}: error: {problem}", file=sys.stderr)
                print(f"{program}: {args.data_dir}: {len(problems)} problem(s) found", file=sys.stderr)
                return 1
            print(f"{program}: OK: {summary(args.data_dir)}")
        elif args.command == "fix":
            kept, dropped, changed = fix(args.data_dir)
            if dropped:
                print(
                    f"{program}: warning: {args.data_dir}: dropped {sum(dropped.values())} of "
                    f"{kept + sum(dropped.values())} utterances: "
                    + "; ".join(f"{reason}: {count}" for reason, count in dropped.most_common()),
                    file=sys.stderr,
                )
            if changed:
                print(f"{program}: {args.data_dir}: rewrote {' '.join(changed)}; originals in {args.data_dir / '.backup'}",
                      file=sys.stderr)
            else:
                print(f"{program}: {args.data_dir}: already valid, nothing changed", file=sys.stderr)
            problems = validate(args.data_dir, require_text=(args.data_dir / "text").is_file())
            if problems:  # something fix does not handle (e.g. a required file missing)
                for problem in problems:
                    print(f"{program}: error: still invalid: {problem}", file=sys.stderr)
                return 1
        elif args.command == "utt2dur":
            count, _ = compute_utt2dur(args.data_dir, args.nj, args.skip_bad_audio == "true")
            print(f"{program}: wrote {args.data_dir / 'utt2dur'} ({count} utterances)", file=sys.stderr)
        elif args.command == "spk2utt":
            source = Path(args.utt2spk) if args.utt2spk else Path("/dev/stdin")
            utt2spk = KaldiMap.read(source)
            duplicates = utt2spk.duplicate_keys()
            if duplicates:
                raise DataDirError(f"{source}: {len(duplicates)} duplicate utterance id(s), first: {first_ids(duplicates)}")
            no_speaker = [utt for utt, spk in utt2spk.entries if not spk]
            if no_speaker:
                raise DataDirError(f"{source}: {len(no_speaker)} utterance(s) without a speaker, first: {first_ids(no_speaker)}")
            for speaker, utts in make_spk2utt(utt2spk.as_dict()).items():
                sys.stdout.write(f"{speaker} {utts}\n")
        elif args.command == "filter_duration":
            kept, removed = filter_by_duration(args.data_dir, args.out_dir, args.min, args.max)
            limits = f"shorter than {args.min} s" + (f" or longer than {args.max} s" if args.max is not None else "")
            if removed:
                print(f"{program}: warning: {len(removed)} of {kept + len(removed)} utterances of {args.data_dir} "
                      f"removed ({limits}), listed in {args.out_dir / 'removed_by_duration'}", file=sys.stderr)
            else:
                print(f"{program}: {args.data_dir}: no utterance {limits}; all {kept} kept", file=sys.stderr)
        elif args.command == "speed_perturb":
            count = speed_perturb_dir(args.data_dir, args.out_dir, args.factors, args.python)
            print(f"{program}: wrote {args.out_dir} ({count} utterances, factors {' '.join(args.factors)})",
                  file=sys.stderr)
        elif args.command == "split":
            root = split(args.data_dir, args.num_splits)
            print(f"{program}: wrote {root}/1..{args.num_splits}", file=sys.stderr)
    except DataDirError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
