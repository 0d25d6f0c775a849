"""Kaldi-style data directory tools: read, write, validate, fix, utt2dur, spk2utt, split.

The project's one Kaldi data-dir module: every reader and writer of data-dir files goes
through :func:`read_kaldi_map` (strict: errors name the file and line), :func:`read_entries`
(lenient, for validation reports), :func:`write_map` and :func:`write_data_dir`, and raises
:class:`DataDirError`.  A data directory holds ``key value`` files sorted by key in C (byte)
order: ``wav.scp`` (recording -> audio path, or a command ending in ``|``), optional
``segments`` (utterance -> recording start end; without it, recordings are utterances),
``utt2spk``/``spk2utt``, ``text`` (not needed for SSL pre-training) and the optional
per-utterance ``utt2dur``, ``utt2num_frames``, ``feats.scp``.  Relative audio paths are
resolved from the current (recipe) directory, as in Kaldi.

Command line (the utils/*.sh wrappers call these)::

    python -m espnet2_birq.utils.datadir validate [--no-text] [--no-feats] DIR
    python -m espnet2_birq.utils.datadir fix DIR
    python -m espnet2_birq.utils.datadir utt2dur [--nj N] [--skip_bad_audio true|false] DIR
    python -m espnet2_birq.utils.datadir spk2utt [UTT2SPK]        (stdin -> stdout)
    python -m espnet2_birq.utils.datadir split DIR N
    python -m espnet2_birq.utils.datadir filter_duration [--min S] [--max S] DIR OUT_DIR
    python -m espnet2_birq.utils.datadir speed_perturb [--python P] DIR OUT_DIR FACTOR...
"""

import argparse
import os
import re
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Container, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

PER_UTTERANCE_OPTIONAL_FILES = ("utt2dur", "utt2num_frames", "feats.scp")
PER_UTTERANCE_FILES = ("utt2spk", "text", *PER_UTTERANCE_OPTIONAL_FILES)
# Files that split/fix know how to subset; anything else is reported, not dropped silently.
KNOWN_FILES = {"wav.scp", "segments", "spk2utt", *PER_UTTERANCE_FILES}
# Lists about a data dir, not of it: never split, and not worth a warning.
NOT_PER_UTTERANCE_FILES = {"removed_by_duration", "bad_audio"}
SHOWN_IDS = 5
_KALDI_ARK_RE = re.compile(r"^(.*\.ark):\d+$")
Entries = List[Tuple[str, str]]


class DataDirError(ValueError):
    """A problem with a data directory; the message names the file and ids (or line)."""


def c_sort_key(key: str) -> bytes:
    """Sort key matching ``LC_ALL=C sort``: byte order of the UTF-8 encoding."""
    return key.encode("utf-8")


def c_sorted(keys: Iterable[str]) -> List[str]:
    return sorted(keys, key=c_sort_key)


def report(path, ids, what: str) -> List[str]:
    """``["PATH: N WHAT, first: <the first 5 ids>"]`` when there are ``ids``, else ``[]``."""
    ids = list(ids)
    first = " ".join(ids[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")
    return [f"{path}: {len(ids)} {what}, first: {first}"] if ids else []


def _split_lines(path) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, [key, value] or [key] or [] for a blank line)`` of every line."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as error:
        raise DataDirError(f"{path}: cannot read: {error}") from None
    for number, line in enumerate(lines[:-1] if lines[-1] == b"" else lines, start=1):
        try:
            yield number, line.decode("utf-8").strip().split(maxsplit=1)
        except UnicodeDecodeError as error:
            raise DataDirError(f"{path}: line {number} is not valid UTF-8: {error}") from None


def read_entries(path) -> Entries:
    """Every ``(key, value)`` line of a file, duplicates and empty values kept (blank lines
    skipped) so that checks can report them."""
    return [(parts[0], parts[1] if len(parts) > 1 else "") for _, parts in _split_lines(path) if parts]


def read_kaldi_map(path: Union[str, Path], min_fields: int = 2, key_name: str = "key") -> Entries:
    """Read a Kaldi ``key value...`` file into an ordered list of ``(key, value)``, strictly.

    ``min_fields`` 1 allows an empty value (e.g. an empty transcript); ``key_name`` names
    the keys in the duplicate-key message (e.g. "utterance id").

    Raises:
        DataDirError: on a missing file, blank or malformed lines or duplicate keys,
            naming the file and line number.
    """
    if not os.path.exists(path):  # not isfile: /dev/stdin may be a pipe
        raise DataDirError(f"{path}: file not found")
    seen: Dict[str, int] = {}
    entries = []
    for number, parts in _split_lines(path):
        if not parts:
            raise DataDirError(f"{path}:{number}: empty line")
        if len(parts) < min_fields:
            raise DataDirError(f"{path}:{number}: expected '<key> <value>', got {parts[0]!r}")
        if parts[0] in seen:
            raise DataDirError(f"{path}:{number}: duplicate {key_name} '{parts[0]}' (first on line {seen[parts[0]]})")
        seen[parts[0]] = number
        entries.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return entries


def format_map(mapping: Mapping[str, str]) -> str:
    """``key value`` lines sorted in C order (``key`` alone for empty values)."""
    return "".join(f"{key} {mapping[key]}\n" if mapping[key] else f"{key}\n" for key in c_sorted(mapping))


def write_map(path: Path, mapping: Mapping[str, str]) -> None:
    Path(path).write_text(format_map(mapping), encoding="utf-8")


def make_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, str]:
    """Speakers in C order, each with its utterances in C order."""
    speakers: Dict[str, List[str]] = {}
    for utt in c_sorted(utt2spk):
        speakers.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(speakers[spk]) for spk in c_sorted(speakers)}


def audio_file(value: str) -> Optional[str]:
    """The file a wav.scp value reads (``file.ark`` of ``file.ark:offset``); None for a pipe.

    As in Kaldi and ESPnet, the value is the rest of the line: a path may hold spaces.
    """
    value = value.strip()
    if value.endswith("|"):
        return None
    ark = _KALDI_ARK_RE.match(value)
    return ark.group(1) if ark else value


def missing_audio_recordings(wav_scp: Mapping[str, str]) -> List[str]:
    """Recording ids whose plain-path entries point to files that do not exist."""
    files = {rec: audio_file(value) for rec, value in wav_scp.items()}
    return [rec for rec, path in files.items() if path is not None and not Path(path).is_file()]


def parse_segment(value: str) -> Tuple[str, float, float]:
    """Split a segments value 'recording start end'; raises ValueError when malformed."""
    fields = value.split()
    if len(fields) != 3:
        raise ValueError(f"expected 'utt-id recording-id start end', got {len(fields) + 1} fields")
    return fields[0], float(fields[1]), float(fields[2])


def segment_issue(value: str, recordings: Container[str]) -> Optional[str]:
    """What is wrong with a segments value: 'malformed', 'times', 'recording' or None."""
    try:
        recording, start, end = parse_segment(value)
    except ValueError:
        return "malformed"
    if start < 0 or end <= start:
        return "times"
    return None if recording in recordings else "recording"


def _missing_required_files(data_dir: Path, require_text: bool) -> List[str]:
    hints = {"spk2utt": " (create it with utils/utt2spk_to_spk2utt.pl or utils/fix_data_dir.sh)",
             "text": " (use --no-text if the data has no transcripts)"}
    required = ["wav.scp", "utt2spk", "spk2utt"] + (["text"] if require_text else [])
    return [f"{data_dir / name}: required file is missing{hints.get(name, '')}"
            for name in required if not (data_dir / name).is_file()]


def _format_problems(path: Path, entries: Entries) -> List[str]:
    """Empty file, keys out of C order, duplicate keys."""
    keys = [key for key, _ in entries]
    unsorted = [b for a, b in zip(keys, keys[1:]) if c_sort_key(b) < c_sort_key(a)]
    return ([f"{path}: file is empty"] if not entries else []) + report(
        path, unsorted, "key(s) out of order (not sorted in C locale order: LC_ALL=C sort)") + report(
        path, [key for key, n in Counter(keys).items() if n > 1], "duplicate key(s)")


def _issues(files: Dict[str, Dict[str, str]], check_audio: bool = True) -> List[Tuple[str, str, List[str]]]:
    """Every inconsistency between the files of a data dir, as ``(file, what, ids)``: recording
    ids for wav.scp, utterance ids for the others (the order in which fix attributes them)."""
    wav_scp, segments = files["wav.scp"], files.get("segments")
    issues = []

    def add(name: str, what: str, ids: Iterable[str]) -> None:
        ids = c_sorted(ids)
        if ids:
            issues.append((name, what, ids))

    for name in ("wav.scp", *PER_UTTERANCE_FILES):
        if name in files and name != "text":
            add(name, "line(s) with a key but no value", [key for key, value in files[name].items() if not value])
    missing = missing_audio_recordings(wav_scp) if check_audio else []
    if missing:
        add("wav.scp", f"recording(s) whose audio file does not exist (e.g. {wav_scp[missing[0]]})", missing)
    if segments is not None:
        by_issue: Dict[Optional[str], List[str]] = {}
        for utt, value in segments.items():
            by_issue.setdefault(segment_issue(value, wav_scp), []).append(utt)
        add("segments", "malformed line(s) (need 'utt rec start end')", by_issue.get("malformed", []))
        add("segments", "segment(s) with negative start or end <= start", by_issue.get("times", []))
        add("segments", "segment(s) whose recording id is not in wav.scp", by_issue.get("recording", []))
    id_file = "segments" if segments is not None else "wav.scp"
    utt_ids = set(segments if segments is not None else wav_scp)
    for name in PER_UTTERANCE_FILES:
        if name in files:
            add(name, f"utterance(s) of {id_file} are missing", utt_ids - set(files[name]))
            add(name, f"utterance(s) not in {id_file}", set(files[name]) - utt_ids)
    if "text" in files:
        add("text", "empty transcript(s)", [utt for utt, value in files["text"].items() if not value.strip()])
    return issues


def _speaker_problems(data_dir: Path, utt2spk: Dict[str, str], spk2utt: Optional[Dict[str, str]]) -> List[str]:
    """spk2utt agrees with utt2spk, and each speaker's utterances are contiguous."""
    problems = []
    if spk2utt is not None:
        expected = {spk: c_sorted(utts.split()) for spk, utts in make_spk2utt(utt2spk).items()}
        actual = {spk: c_sorted(utts.split()) for spk, utts in spk2utt.items()}
        differing = [spk for spk in {**expected, **actual} if expected.get(spk) != actual.get(spk)]
        problems += report(data_dir / "spk2utt", differing, f"speaker(s) disagree with {data_dir / 'utt2spk'} "
                           "(regenerate with utils/utt2spk_to_spk2utt.pl)")
    # Kaldi needs each speaker's utterances contiguous in utterance order (speaker id as
    # utterance-id prefix), else per-speaker splits and spk2utt-based tools see a speaker twice.
    order = [utt2spk[utt] for utt in c_sorted(utt2spk)]
    runs = [spk for i, spk in enumerate(order) if i == 0 or order[i - 1] != spk]
    return problems + report(
        data_dir / "utt2spk", [spk for spk, n in Counter(runs).items() if n > 1], "speaker(s) whose utterances are "
        "not contiguous in sorted order (make the speaker id a prefix of the utterance id)")


def validate(data_dir: Path, require_text: bool = True, check_audio: bool = True) -> List[str]:
    """Return a list of problems (empty if the directory is valid).

    Each message names the file, the number of offending ids and the first ones.
    """
    if not data_dir.is_dir():
        return [f"{data_dir}: not a directory"]
    problems = _missing_required_files(data_dir, require_text)
    files: Dict[str, Dict[str, str]] = {}
    for name in sorted(KNOWN_FILES):
        if (data_dir / name).is_file():
            try:
                entries = read_entries(data_dir / name)
            except DataDirError as error:
                problems.append(str(error))
                continue
            problems += _format_problems(data_dir / name, entries)
            files[name] = dict(entries)
    if "wav.scp" not in files or "utt2spk" not in files:
        return problems
    for name, what, ids in _issues(files, check_audio):
        problems += report(data_dir / name, ids, what)
    return problems + _speaker_problems(data_dir, files["utt2spk"], files.get("spk2utt"))


def summary(data_dir: Path) -> str:
    wav_scp = dict(read_entries(data_dir / "wav.scp"))
    utt2spk = dict(read_entries(data_dir / "utt2spk"))
    pipes = sum(audio_file(value) is None for value in wav_scp.values())
    return (f"{data_dir}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} speakers, "
            f"{len(wav_scp)} recordings ({pipes} piped wav.scp entries not opened)")


def validate_data_dir(data_dir, require_text: bool = True) -> Dict[str, int]:
    """:func:`validate` that raises; returns the numbers of utterances ("utts"), speakers
    ("spks"), recordings ("recs") and transcripts ("text").

    Raises:
        DataDirError: naming every problem found (file, count and first ids).
    """
    d = Path(data_dir)
    problems = validate(d, require_text=require_text)
    if problems:
        raise DataDirError(f"{d}: " + "; ".join(problems))
    names = {"utts": "utt2spk", "spks": "spk2utt", "recs": "wav.scp", "text": "text"}
    return {key: len(read_entries(d / name)) if (d / name).is_file() else 0 for key, name in names.items()}


def write_data_dir(data_dir, wav_scp: Mapping[str, str], utt2spk: Mapping[str, str],
                   text: Optional[Mapping[str, str]] = None,
                   segments: Optional[Mapping[str, Tuple[str, float, float]]] = None,
                   utt2dur: Optional[Mapping[str, float]] = None,
                   reco2dur: Optional[Mapping[str, float]] = None) -> Path:
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
    files = {"wav.scp": wav_scp, "utt2spk": utt2spk, "spk2utt": make_spk2utt(utt2spk), "text": text,
             "segments": segments and {u: f"{r} {s:.2f} {e:.2f}" for u, (r, s, e) in segments.items()},
             "utt2dur": utt2dur and {u: f"{v:.3f}" for u, v in utt2dur.items()},
             "reco2dur": reco2dur and {u: f"{v:.3f}" for u, v in reco2dur.items()}}
    for name, mapping in files.items():
        if mapping is not None:
            write_map(d / name, mapping)
    validate_data_dir(d, require_text=text is not None)
    return d


def _unique(name: str, entries: Entries, drop) -> Dict[str, str]:
    """Entries of a file; identical repeated lines are merged, conflicting keys dropped."""
    values: Dict[str, str] = {}
    conflicting = set()
    for key, value in entries:
        if values.setdefault(key, value) != value:
            conflicting.add(key)
    drop(name, conflicting, "conflicting duplicate lines")
    return {key: value for key, value in values.items() if key not in conflicting}


def fix(data_dir: Path) -> Tuple[int, Counter, List[str]]:
    """Sort, drop inconsistent utterances, regenerate spk2utt; back up originals.

    Returns (kept utterance count, Counter of drop reasons, rewritten files).  Nothing is
    written when the directory is already valid and sorted.
    """
    for name in ("wav.scp", "utt2spk"):
        if not (data_dir / name).is_file():
            raise DataDirError(f"{data_dir / name}: required file is missing; fix_data_dir cannot create it")
    present = [name for name in sorted(KNOWN_FILES) if (data_dir / name).is_file()]
    reasons: Dict[str, str] = {}  # utterance -> first reason it is dropped
    recording_utts: Dict[str, List[str]] = {}  # with segments, the utterances of each recording
    bad_recordings: Set[str] = set()

    def drop(name: str, ids: Iterable[str], what: str) -> None:
        for key in ids:
            if name == "wav.scp":
                bad_recordings.add(key)
            for utt in recording_utts.get(key, []) if name == "wav.scp" and "segments" in present else [key]:
                reasons.setdefault(utt, f"{name}: {what}")

    if "segments" in present:
        for utt, value in read_entries(data_dir / "segments"):
            recording_utts.setdefault(value.split()[0] if value else "", []).append(utt)
    files = {name: _unique(name, read_entries(data_dir / name), drop) for name in present if name != "spk2utt"}
    for name, what, ids in _issues(files):
        drop(name, ids, what)
    utt_ids = set(files["segments"] if "segments" in files else files["wav.scp"]) | set(reasons)
    kept = c_sorted(utt_ids - set(reasons))
    if not kept:
        raise DataDirError(
            f"{data_dir}: fixing would drop all {len(reasons)} utterances ("
            + "; ".join(f"{r}: {c}" for r, c in Counter(reasons.values()).most_common()) + "); nothing written")
    new_files = {name: {utt: files[name][utt] for utt in kept} for name in ("segments", *PER_UTTERANCE_FILES)
                 if name in files}
    new_files["spk2utt"] = make_spk2utt(new_files["utt2spk"])
    # With segments, recordings no segment uses are kept (valid in Kaldi); only broken ones go.
    recordings = [rec for rec in files["wav.scp"] if rec not in bad_recordings] if "segments" in files else kept
    new_files["wav.scp"] = {rec: files["wav.scp"][rec] for rec in recordings}
    changed = [name for name, mapping in new_files.items() if not (data_dir / name).is_file()
               or (data_dir / name).read_text(encoding="utf-8") != format_map(mapping)]
    if changed:
        (data_dir / ".backup").mkdir(exist_ok=True)
        for name in present:
            shutil.copy2(data_dir / name, data_dir / ".backup" / name)
        for name in changed:
            write_map(data_dir / name, new_files[name])
    return len(kept), Counter(reasons.values()), changed


# soundfile reports this many frames (SF_COUNT_MAX) when a header does not say the
# length (a FLAC STREAMINFO with 0 total samples): 160 billion hours in utt2dur.
_UNKNOWN_FRAMES = 2**62


def audio_duration(value: str) -> float:
    """Duration in seconds of one wav.scp entry: from an audio file's header, else (pipes,
    ``file.ark:offset``) from reading it as feature extraction does; errors if it has no samples."""
    path = audio_file(value)
    if path is None or _KALDI_ARK_RE.match(value.strip()):
        from espnet2_birq.bin.extract_fbank import read_audio  # imports torch: only when needed

        data, rate, _ = read_audio(value)
        frames = len(data)
    else:
        import soundfile  # imported here so that validate/fix/split work without it

        info = soundfile.info(path)
        rate, frames = info.samplerate, info.frames
        if frames >= _UNKNOWN_FRAMES:
            raise ValueError("the header gives no length (e.g. a FLAC stream with 0 total samples in STREAMINFO; "
                             "libsndfile then reports 2^63 frames and cannot read it): re-encode the file")
    if frames <= 0:
        raise ValueError("the audio has no samples")
    return frames / rate


def _segment_durations(path: Path) -> Dict[str, float]:
    durations, bad = {}, []
    for utt, value in read_entries(path):
        try:
            _, start, end = parse_segment(value)
            durations[utt] = end - start
        except ValueError:
            bad.append(utt)
    if bad:
        raise DataDirError(report(path, bad, "malformed line(s)")[0])
    return durations


def _measure(item: Tuple[str, str]) -> Tuple[str, Optional[float], Optional[str]]:
    recording, value = item
    try:
        return recording, audio_duration(value), None
    except Exception as error:  # any reader failure is reported per recording
        return recording, None, f"{type(error).__name__}: {error}"


def _drop_bad_recordings(data_dir: Path, failures: Dict[str, str], wav_scp: Dict[str, str]) -> None:
    """Remove recordings from DIR/wav.scp, their utterances from every file; list them in DIR/bad_audio."""
    if len(failures) == len(wav_scp):
        rec, error = next(iter(failures.items()))
        raise DataDirError(f"{data_dir / 'wav.scp'}: none of the {len(wav_scp)} recordings can be read, "
                           f"e.g. {rec}: {wav_scp[rec]}: {error}")
    write_map(data_dir / "bad_audio", {rec: reason.replace("\n", " ") for rec, reason in failures.items()})
    write_map(data_dir / "wav.scp", {rec: value for rec, value in wav_scp.items() if rec not in failures})
    (data_dir / "utt2dur").unlink(missing_ok=True)
    fix(data_dir)
    print(f"get_utt2dur: warning: {data_dir}: dropped {len(failures)} unreadable or empty recording(s) and their "
          f"utterances (--skip_bad_audio true), listed in {data_dir / 'bad_audio'}", file=sys.stderr)


def compute_utt2dur(data_dir: Path, num_jobs: int = 1, skip_bad_audio: bool = False) -> Tuple[int, int]:
    """Write DIR/utt2dur; returns (utterances written, recordings dropped).

    Unreadable or empty recordings are all reported at once (DataDirError,
    nothing written) or, with ``skip_bad_audio``, dropped from the directory
    with their utterances and listed in DIR/bad_audio.
    """
    (data_dir / "bad_audio").unlink(missing_ok=True)
    if (data_dir / "segments").is_file():
        durations = _segment_durations(data_dir / "segments")
        write_map(data_dir / "utt2dur", {utt: f"{dur:.3f}" for utt, dur in durations.items()})
        return len(durations), 0
    wav_scp = dict(read_entries(data_dir / "wav.scp"))
    with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
        measured = list(pool.map(_measure, wav_scp.items()))
    durations = {rec: duration for rec, duration, error in measured if error is None}
    failures = {rec: error for rec, _, error in measured if error is not None}
    if failures and not skip_bad_audio:
        details = "\n".join(f"  {rec}: {wav_scp[rec]}: {err}" for rec, err in failures.items())
        raise DataDirError(
            f"{data_dir / 'wav.scp'}: {len(failures)} recording(s) could not be read or are empty; "
            f"utt2dur not written:\n{details}\nRe-run with --skip_bad_audio true to drop them (listed in "
            "bad_audio of the data dir), or repair or remove these files in the corpus.")
    if failures:
        _drop_bad_recordings(data_dir, failures, wav_scp)
        kept = {rec for rec, _ in read_entries(data_dir / "wav.scp")}
        durations = {rec: dur for rec, dur in durations.items() if rec in kept}
    write_map(data_dir / "utt2dur", {utt: f"{dur:.3f}" for utt, dur in durations.items()})
    return len(durations), len(failures)


def _read_valid(data_dir: Path, need_utt2dur: bool = False) -> Dict[str, Dict[str, str]]:
    """The files of a valid data dir (``DataDirError`` naming every problem otherwise)."""
    problems = validate(data_dir, require_text=(data_dir / "text").is_file(), check_audio=False)
    if problems:
        raise DataDirError(f"{data_dir}: not a valid data directory, run utils/fix_data_dir.sh first:\n  "
                           + "\n  ".join(problems))
    if need_utt2dur and not (data_dir / "utt2dur").is_file():
        raise DataDirError(f"{data_dir / 'utt2dur'}: file not found (utils/get_utt2dur.sh writes it)")
    return {name: dict(read_entries(data_dir / name)) for name in KNOWN_FILES if (data_dir / name).is_file()}


def _write_subset(files: Dict[str, Dict[str, str]], utterances: List[str], out_dir: Path) -> None:
    """The data dir of ``utterances`` (and their recordings) from a valid one's ``files``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("segments", *PER_UTTERANCE_FILES):
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
    _write_subset(_read_valid(data_dir), utterances, out_dir)


def split(data_dir: Path, num_splits: int) -> Path:
    """Split by utterance into DIR/splitN/1..N, each a valid data directory."""
    files = _read_valid(data_dir)
    utterances = list(files["utt2spk"])  # already in C order (validated)
    if num_splits < 1 or num_splits > len(utterances):
        raise DataDirError(f"{data_dir}: cannot split {len(utterances)} utterances into {num_splits} parts")
    unknown = sorted(p.name for p in data_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                     and p.name not in KNOWN_FILES | NOT_PER_UTTERANCE_FILES)
    if unknown:
        print(f"split_data: warning: {data_dir}: not copied into the splits (unknown layout): {' '.join(unknown)}",
              file=sys.stderr)
    split_root = data_dir / f"split{num_splits}"
    if split_root.exists():
        shutil.rmtree(split_root)  # stale files from an earlier split must not survive
    base, extra = divmod(len(utterances), num_splits)  # the first `extra` parts get one more
    for part in range(num_splits):
        start, end = part * base + min(part, extra), (part + 1) * base + min(part + 1, extra)
        _write_subset(files, utterances[start:end], split_root / str(part + 1))
    return split_root


def filter_by_duration(data_dir: Path, out_dir: Path, min_seconds: float = 0.0,
                       max_seconds: Optional[float] = None) -> Tuple[int, Dict[str, float]]:
    """Write to ``out_dir`` the utterances of ``data_dir`` lasting from ``min_seconds`` to
    ``max_seconds`` (utt2dur), and the others, with their durations, to
    ``out_dir/removed_by_duration``. Returns the number kept and the removed utterances' durations.
    """
    files = _read_valid(data_dir, need_utt2dur=True)
    durations = {}
    for utt in files["utt2spk"]:
        try:
            durations[utt] = float(files["utt2dur"][utt])
        except ValueError:
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
    if _KALDI_ARK_RE.match(value):
        raise DataDirError(f"speed perturbation reads audio files and pipes, not ark entries: {value}")
    return f"{value[:-1].strip()} | {command} - |" if value.endswith("|") else f"{command} {value} |"


def speed_perturb_dir(data_dir: Path, out_dir: Path, factors: List[str], python: str = "python3") -> int:
    """Kaldi's perturb_data_dir_speed.sh for each factor, combined (utils/combine_data.sh)
    in ``out_dir``: utterance, speaker and recording ids get an ``sp<factor>-`` prefix
    (none for 1.0, the original), durations and segment times are divided by the factor.
    Returns the number of utterances written.
    """
    for factor in factors:  # decimal numbers only: the factor goes into the ids as it is written
        if not re.fullmatch(r"\d+\.?\d*|\.\d+", factor) or not float(factor) > 0:
            raise DataDirError(f"speed perturbation factor must be a positive number, got '{factor}'")
    speeds = {factor: float(factor) for factor in factors}
    files = _read_valid(data_dir, need_utt2dur=True)
    out: Dict[str, Dict[str, str]] = {name: {} for name in ("wav.scp", "utt2spk", "utt2dur", "text", "segments")
                                      if name in files}
    for factor, speed in speeds.items():
        prefix = "" if speed == 1.0 else f"sp{factor}-"
        for rec, value in files["wav.scp"].items():
            out["wav.scp"][prefix + rec] = speed_perturb_entry(value, factor, python) if prefix else value
        for utt, spk in files["utt2spk"].items():
            out["utt2spk"][prefix + utt] = prefix + spk
            out["utt2dur"][prefix + utt] = f"{float(files['utt2dur'][utt]) / speed:.3f}"
            if "text" in files:
                out["text"][prefix + utt] = files["text"][utt]
            if "segments" in files:
                rec, start, end = parse_segment(files["segments"][utt])
                out["segments"][prefix + utt] = f"{prefix + rec} {start / speed:.3f} {end / speed:.3f}"
    out["spk2utt"] = make_spk2utt(out["utt2spk"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name, mapping in out.items():
        write_map(out_dir / name, mapping)
    problems = validate(out_dir, require_text="text" in out, check_audio=False)
    if problems:
        raise DataDirError(f"{out_dir}: " + "; ".join(problems))
    return len(out["utt2spk"])


def _print(*parts) -> None:
    print(*parts, file=sys.stderr)


def _run_command(args, program: str) -> int:
    """One subcommand; its messages start with the name of the Kaldi tool it stands for."""
    if args.command == "validate":
        problems = validate(args.data_dir, require_text=not args.no_text)
        for problem in problems:
            _print(f"{program}: error: {problem}")
        if problems:
            _print(f"{program}: {args.data_dir}: {len(problems)} problem(s) found")
            return 1
        print(f"{program}: OK: {summary(args.data_dir)}")
    elif args.command == "fix":
        kept, dropped, changed = fix(args.data_dir)
        if dropped:
            _print(f"{program}: warning: {args.data_dir}: dropped {sum(dropped.values())} of "
                   f"{kept + sum(dropped.values())} utterances: "
                   + "; ".join(f"{reason}: {count}" for reason, count in dropped.most_common()))
        backup = args.data_dir / ".backup"
        _print(f"{program}: {args.data_dir}: " + (f"rewrote {' '.join(changed)}; originals in {backup}" if changed
                                                   else "already valid, nothing changed"))
        problems = validate(args.data_dir, require_text=(args.data_dir / "text").is_file())
        for problem in problems:  # something fix does not handle (e.g. a required file missing)
            _print(f"{program}: error: still invalid: {problem}")
        return 1 if problems else 0
    elif args.command == "utt2dur":
        count, _ = compute_utt2dur(args.data_dir, args.nj, args.skip_bad_audio == "true")
        _print(f"{program}: wrote {args.data_dir / 'utt2dur'} ({count} utterances)")
    elif args.command == "spk2utt":
        utt2spk = read_kaldi_map(args.utt2spk or "/dev/stdin", key_name="utterance id")
        sys.stdout.write(format_map(make_spk2utt(dict(utt2spk))))
    elif args.command == "filter_duration":
        kept, removed = filter_by_duration(args.data_dir, args.out_dir, args.min, args.max)
        limits = f"shorter than {args.min} s" + (f" or longer than {args.max} s" if args.max is not None else "")
        _print(f"{program}: warning: {len(removed)} of {kept + len(removed)} utterances of {args.data_dir} removed "
               f"({limits}), listed in {args.out_dir / 'removed_by_duration'}" if removed
               else f"{program}: {args.data_dir}: no utterance {limits}; all {kept} kept")
    elif args.command == "speed_perturb":
        count = speed_perturb_dir(args.data_dir, args.out_dir, args.factors, args.python)
        _print(f"{program}: wrote {args.out_dir} ({count} utterances, factors {' '.join(args.factors)})")
    else:
        _print(f"{program}: wrote {split(args.data_dir, args.num_splits)}/1..{args.num_splits}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet2_birq.utils.datadir", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    in_dir = argparse.ArgumentParser(add_help=False)
    in_dir.add_argument("data_dir", type=Path)
    in_out = argparse.ArgumentParser(add_help=False, parents=[in_dir])
    in_out.add_argument("out_dir", type=Path)
    p = commands.add_parser("validate", parents=[in_dir], help="check a data directory")
    p.add_argument("--no-text", action="store_true", help="the directory has no text file (SSL data)")
    p.add_argument("--no-feats", action="store_true",
                   help="accepted for Kaldi compatibility: feats.scp is never required, only checked when present")
    commands.add_parser("fix", parents=[in_dir], help="sort and drop inconsistent utterances (backup in DIR/.backup)")
    p = commands.add_parser("utt2dur", parents=[in_dir], help="write DIR/utt2dur")
    p.add_argument("--nj", type=int, default=4, help="recordings read in parallel (I/O bound)")
    p.add_argument("--skip_bad_audio", "--skip-bad-audio", choices=["true", "false"], default="false",
                   help="true: drop unreadable or empty recordings (listed in DIR/bad_audio) instead of failing")
    p = commands.add_parser("spk2utt", help="utt2spk (file or stdin) -> spk2utt on stdout")
    p.add_argument("utt2spk", nargs="?", help="default: stdin")
    p = commands.add_parser("filter_duration", parents=[in_out],
                            help="utterances of DIR from --min to --max seconds (utt2dur) -> OUT_DIR")
    p.add_argument("--min", type=float, default=0.0, help="seconds; shorter utterances are removed")
    p.add_argument("--max", type=float, default=None, help="seconds; longer utterances are removed")
    p = commands.add_parser("speed_perturb", parents=[in_out],
                            help="speed-perturbed copies of DIR, combined in OUT_DIR")
    p.add_argument("--python", default="python3", help="interpreter of the wav.scp pipes")
    p.add_argument("factors", nargs="+", help="e.g. 0.9 1.0 1.1 (1.0: the original ids)")
    p = commands.add_parser("split", parents=[in_dir], help="split by utterance into DIR/splitN/1..N")
    p.add_argument("--per-utt", action="store_true",
                   help="accepted for Kaldi compatibility; splitting is always per utterance")
    p.add_argument("num_splits", type=int)
    args = parser.parse_args(argv)
    program = {"validate": "validate_data_dir", "fix": "fix_data_dir", "utt2dur": "get_utt2dur",
               "spk2utt": "utt2spk_to_spk2utt", "split": "split_data"}.get(args.command, args.command)
    try:
        return _run_command(args, program)
    except DataDirError as error:
        _print(f"{program}: error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
