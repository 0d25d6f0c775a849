"""Write and validate Kaldi-style data directories.

Files written: ``wav.scp``, ``utt2spk``, ``spk2utt``, optionally ``text``,
``segments`` and ``reco2dur``/``utt2dur`` when durations are given. Every file
is sorted in C-locale order (byte order of the UTF-8 encoding, which is what
``LC_ALL=C sort`` produces and what Kaldi's ``validate_data_dir.sh`` checks).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

logger = logging.getLogger(__name__)

_BAD_ID = re.compile(r"\s")


class KaldiDirError(ValueError):
    pass


def c_sorted(keys: Iterable[str]):
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def _check_id(kind: str, key: str):
    if not key or _BAD_ID.search(key):
        raise KaldiDirError(f"invalid {kind} id {key!r} (empty or contains whitespace)")


def _write_map(path: Path, mapping: Mapping[str, str]):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for k in c_sorted(mapping):
            v = mapping[k]
            f.write(f"{k} {v}\n" if v != "" else f"{k}\n")


def write_data_dir(
    data_dir,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str],
    text: Optional[Mapping[str, str]] = None,
    segments: Optional[Mapping[str, Tuple[str, float, float]]] = None,
    utt2dur: Optional[Mapping[str, float]] = None,
    reco2dur: Optional[Mapping[str, float]] = None,
) -> Path:
    """Write a validated, C-sorted Kaldi data directory and return it.

    ``segments`` maps ``utt -> (recording, start_s, end_s)``; without it the
    keys of ``wav_scp`` are utterance ids.
    """
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("wav.scp", "utt2spk", "spk2utt", "text", "segments",
                 "utt2dur", "reco2dur", "feats.scp", "utt2num_frames",
                 "spk2gender", "cmvn.scp"):
        (d / name).unlink(missing_ok=True)  # stale files from earlier runs

    _write_map(d / "wav.scp", wav_scp)
    _write_map(d / "utt2spk", utt2spk)
    spk2utt: Dict[str, list] = {}
    for u in c_sorted(utt2spk):
        spk2utt.setdefault(utt2spk[u], []).append(u)
    _write_map(d / "spk2utt", {s: " ".join(us) for s, us in spk2utt.items()})
    if text is not None:
        _write_map(d / "text", text)
    if segments is not None:
        _write_map(
            d / "segments",
            {u: f"{r} {s:.2f} {e:.2f}" for u, (r, s, e) in segments.items()},
        )
    if utt2dur is not None:
        _write_map(d / "utt2dur", {u: f"{v:.3f}" for u, v in utt2dur.items()})
    if reco2dur is not None:
        _write_map(d / "reco2dur", {u: f"{v:.3f}" for u, v in reco2dur.items()})
    validate_data_dir(d, require_text=text is not None)
    return d


def _read_map(path: Path, allow_empty_value: bool = False):
    out: Dict[str, str] = {}
    prev = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                raise KaldiDirError(f"{path}:{n}: empty line")
            k, _, v = line.partition(" ")
            if not v.strip() and not allow_empty_value:
                raise KaldiDirError(f"{path}:{n}: no value for {k!r}")
            if k in out:
                raise KaldiDirError(f"{path}:{n}: duplicate key {k!r}")
            kb = k.encode("utf-8")
            if prev is not None and kb < prev:
                raise KaldiDirError(f"{path}:{n}: not sorted (LC_ALL=C) at {k!r}")
            prev = kb
            out[k] = v
    return out


def validate_data_dir(data_dir, require_text: bool = True) -> Dict[str, int]:
    """Pure-Python equivalent of the main checks of Kaldi's
    ``utils/validate_data_dir.sh --no-feats``. Returns counts."""
    d = Path(data_dir)
    for name in ("wav.scp", "utt2spk", "spk2utt"):
        if not (d / name).is_file():
            raise KaldiDirError(f"{d}: missing {name}")
    wav = _read_map(d / "wav.scp")
    utt2spk = _read_map(d / "utt2spk")
    spk2utt = _read_map(d / "spk2utt")
    if not utt2spk:
        raise KaldiDirError(f"{d}: no utterances")
    for u, s in utt2spk.items():
        _check_id("utterance", u)
        if len(s.split()) != 1:
            raise KaldiDirError(f"{d}/utt2spk: bad speaker for {u!r}: {s!r}")
    # Kaldi requires sorting by speaker then utterance to equal sorting by
    # utterance, i.e. the concatenation of spk2utt equals sorted utt2spk.
    flat = [u for s in spk2utt for u in spk2utt[s].split()]
    if flat != list(utt2spk):
        raise KaldiDirError(
            f"{d}: spk2utt and utt2spk disagree or speaker ids are not prefixes "
            f"of utterance ids (sort orders differ)"
        )
    if (d / "segments").is_file():
        segs = _read_map(d / "segments")
        if set(segs) != set(utt2spk):
            diff = sorted(set(segs) ^ set(utt2spk))[:5]
            raise KaldiDirError(f"{d}: segments and utt2spk differ, e.g. {diff}")
        for u, v in segs.items():
            parts = v.split()
            if len(parts) != 3:
                raise KaldiDirError(f"{d}/segments: bad line for {u!r}")
            r, s, e = parts[0], float(parts[1]), float(parts[2])
            if r not in wav:
                raise KaldiDirError(f"{d}/segments: recording {r!r} of {u!r} not in wav.scp")
            if not (0 <= s < e):
                raise KaldiDirError(f"{d}/segments: bad times for {u!r}: {s} {e}")
    else:
        if set(wav) != set(utt2spk):
            diff = sorted(set(wav) ^ set(utt2spk))[:5]
            raise KaldiDirError(f"{d}: wav.scp and utt2spk differ, e.g. {diff}")
    n_text = 0
    if (d / "text").is_file():
        text = _read_map(d / "text")
        if set(text) != set(utt2spk):
            diff = sorted(set(text) ^ set(utt2spk))[:5]
            raise KaldiDirError(f"{d}: text and utt2spk differ, e.g. {diff}")
        n_text = len(text)
    elif require_text:
        raise KaldiDirError(f"{d}: missing text")
    return {"utts": len(utt2spk), "spks": len(spk2utt), "recs": len(wav), "text": n_text}


def main(argv=None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Validate Kaldi data directories "
                                "(pure-Python fallback of utils/validate_data_dir.sh)")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--no-text", action="store_true")
    a = p.parse_args(argv)
    rc = 0
    for d in a.dirs:
        try:
            c = validate_data_dir(d, require_text=not a.no_text)
            print(f"{d}: OK {c}")
        except (KaldiDirError, OSError) as e:
            print(f"ERROR: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    import sys

    sys.exit(main())
