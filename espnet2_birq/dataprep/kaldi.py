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

from espnet2_birq.utils import datadir

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


def validate_data_dir(data_dir, require_text: bool = True) -> Dict[str, int]:
    """Validate with the project's checker (:func:`espnet2_birq.utils.datadir.validate`,
    the implementation behind ``utils/validate_data_dir.sh``) and return counts.

    Raises:
        KaldiDirError: naming every problem found (file, count and first ids).
    """
    d = Path(data_dir)
    problems = datadir.validate(d, require_text=require_text)
    if problems:
        raise KaldiDirError(f"{d}: " + "; ".join(problems))
    counts = {}
    for key, name in (("utts", "utt2spk"), ("spks", "spk2utt"), ("recs", "wav.scp"),
                      ("text", "text")):
        path = d / name
        counts[key] = len(datadir.KaldiMap.read(path).keys) if path.is_file() else 0
    return counts
