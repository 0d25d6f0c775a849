"""WER/CER scoring compatible with NIST sclite, and ESPnet-style RESULTS.md tables.

Scoring::

    python -m espnet2_birq.bin.score --ref data/test/text \\
        --hyp exp/decode/test/text --unit word --out_dir exp/decode/test/score_wer \\
        [--utt2spk data/test/utt2spk] [--use_sclite auto|true|false] \\
        [--missing_hyp error|empty] [--skip_empty_ref false] [--case_sensitive false]

Both files are Kaldi ``text`` files (``utt_id transcript``).  Tokens are
whitespace-separated words (``--unit word``) or characters (``--unit char``;
runs of whitespace become one ``<space>`` token, as ESPnet's char tokenizer
writes them).

NIST sclite is used when installed (``--use_sclite auto``).  Without it the
built-in aligner reproduces sclite's: a Levenshtein alignment minimising
``4 * #sub + 3 * #del + 3 * #ins`` (sclite's substitution / deletion /
insertion weights) with sclite's tie-breaking, matching case-insensitively for
ASCII letters (sclite's default; ``--case_sensitive true`` is sclite's ``-s``).
Errors are counted from that alignment, so per-utterance and total counts
equal sclite's (tests/test_score.py compares with sclite when it is installed).

Why not kaldialign: its ``sclite_mode`` uses the same 4/3/3 costs but breaks
ties between equal-cost alignments differently, and equal cost does not mean
equal counts (cost ``3N + 3M - 6C - 2S``: one more correct word and three
fewer substitutions cost the same).  Measured with kaldialign 0.12.0 against
sclite 2.4.10 on 17,746 random utterances of 0-8 words: 216 (1.2%) got other
C/S/D/I counts, always with more errors than sclite's, so WER would differ.

With ``--utt2spk`` the outputs also have one row per speaker (sclite's
``SYSTEM SUMMARY PERCENTAGES by SPEAKER``), in ``result.txt`` and under
``speakers`` in ``summary.json``.

Outputs in ``out_dir``:

* ``result.txt``: per-utterance alignments in sclite's ``pra`` layout
  (``id:``, ``Scores: (#C #S #D #I)``, ``REF:``/``HYP:`` with correct tokens
  in lower case and errors in upper case, ``***`` for gaps, ``Eval:``) and a
  summary block whose ``Sum/Avg`` line ESPnet's ``show_asr_result.sh`` greps.
  When sclite is used, ``result.txt`` is sclite's own ``-o all stdout``
  output.
* ``summary.json``: ``Snt Wrd Corr Sub Del Ins Err S.Err`` (percentages
  rounded like sclite's ``%.1f``) plus raw counts, scorer and unit.
* ``ref.trn`` / ``hyp.trn`` (sclite path only): the trn files given to sclite,
  with ``(spk-utt)`` ids like ESPnet's scoring stage.

With ``--use_sclite auto`` (default) sclite is used when it is on ``PATH``
(or given with ``--sclite``); its ``pra`` output is parsed for the
per-utterance counts, so both paths produce identical ``summary.json``.

Id checks: hypothesis ids that are not in the reference are always an error.
Reference ids without a hypothesis are an error by default; with
``--missing_hyp empty`` they are scored as empty hypotheses (all deletions)
and a warning gives their number.  Empty reference transcripts are an error
unless ``--skip_empty_ref true`` (then they are left out and counted).

Results table::

    python -m espnet2_birq.bin.score results_table --exp_dir exp/asr_x [...]

prints, for every ``<exp_dir>/<decode_dir>/<test_set>/score_{wer,cer,ter}``,
an ESPnet ``RESULTS.md`` section (``## <exp>``, ``### WER`` and the
``|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|`` table); with
``--pretrained_model PATH`` ESPnet's ``## Environments`` block (date, python,
espnet and pytorch versions, this project's git hash, the pre-trained model)
comes first.
"""

import argparse
import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from espnet2_birq.utils.datadir import DataDirError, read_kaldi_map

logger = logging.getLogger("espnet2_birq.score")

SUB_COST = 4
DEL_COST = 3
INS_COST = 3
SPACE_TOKEN = "<space>"

_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)
_ASCII_UPPER = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class ScoreError(Exception):
    """Inconsistent or malformed scoring input."""


# ---------------------------------------------------------------------------
# Reading and tokenising
# ---------------------------------------------------------------------------
def tokenize(text: str, unit: str) -> List[str]:
    """Split a transcript into scoring tokens.

    Args:
        text: Transcript without the utterance id.
        unit: ``word`` (whitespace split) or ``char`` (characters; each run of
            whitespace becomes one ``<space>`` token, leading/trailing
            whitespace is dropped).
    """
    words = text.split()
    if unit == "word":
        return words
    if unit == "char":
        out: List[str] = []
        for i, w in enumerate(words):
            if i > 0:
                out.append(SPACE_TOKEN)
            out.extend(w)
        return out
    raise ValueError(f"unknown unit '{unit}' (expected word or char)")


def read_text(path: str) -> Dict[str, str]:
    """Read a Kaldi ``text`` file into ``{utt_id: transcript}`` (file order kept).

    Lines with only an id give an empty transcript.  A missing file, blank lines and
    duplicate ids raise :class:`ScoreError` naming the file and line.
    """
    try:
        return dict(read_kaldi_map(path, min_fields=1, key_name="utterance id"))
    except DataDirError as error:
        raise ScoreError(str(error)) from None


# ---------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------
def align(
    ref: Sequence[str], hyp: Sequence[str], case_sensitive: bool = False
) -> List[Tuple[str, Optional[str], Optional[str]]]:
    """sclite-style minimum-cost alignment of two token sequences.

    Costs: correct 0, substitution 4, deletion 3, insertion 3.  Ties are
    broken like sclite when tracing back from the end: a diagonal step
    (correct/substitution) first, then an insertion, then a deletion.

    Args:
        ref: Reference tokens (length ``N``).
        hyp: Hypothesis tokens (length ``M``).
        case_sensitive: Compare tokens exactly instead of ASCII-case-folded.

    Returns:
        List of ``(op, ref_token, hyp_token)`` in order, where ``op`` is
        ``C`` (correct), ``S`` (substitution), ``D`` (deletion, ``hyp_token``
        is ``None``) or ``I`` (insertion, ``ref_token`` is ``None``).
    """
    if case_sensitive:
        r, h = list(ref), list(hyp)
    else:
        r = [t.translate(_ASCII_LOWER) for t in ref]
        h = [t.translate(_ASCII_LOWER) for t in hyp]
    n, m = len(r), len(h)
    # cost[i][j]: cost of aligning r[:i] with h[:j]
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i * DEL_COST
    for j in range(1, m + 1):
        cost[0][j] = j * INS_COST
    for i in range(1, n + 1):
        ri = r[i - 1]
        row, prev = cost[i], cost[i - 1]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (0 if ri == h[j - 1] else SUB_COST)
            dele = prev[j] + DEL_COST
            ins = row[j - 1] + INS_COST
            row[j] = min(diag, dele, ins)
    ops: List[Tuple[str, Optional[str], Optional[str]]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0:
            same = r[i - 1] == h[j - 1]
            if cost[i][j] == cost[i - 1][j - 1] + (0 if same else SUB_COST):
                ops.append(("C" if same else "S", ref[i - 1], hyp[j - 1]))
                i, j = i - 1, j - 1
                continue
        if j > 0 and cost[i][j] == cost[i][j - 1] + INS_COST:
            ops.append(("I", None, hyp[j - 1]))
            j -= 1
            continue
        assert i > 0 and cost[i][j] == cost[i - 1][j] + DEL_COST
        ops.append(("D", ref[i - 1], None))
        i -= 1
    ops.reverse()
    return ops


# ---------------------------------------------------------------------------
# Counting and reporting
# ---------------------------------------------------------------------------
@dataclass
class Counts:
    """Error counts; ``snt`` sentences and ``serr`` erroneous sentences."""

    corr: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0
    snt: int = 0
    serr: int = 0

    @property
    def wrd(self) -> int:
        return self.corr + self.sub + self.dele

    @property
    def err(self) -> int:
        return self.sub + self.dele + self.ins

    def add(self, other: "Counts") -> None:
        self.corr += other.corr
        self.sub += other.sub
        self.dele += other.dele
        self.ins += other.ins
        self.snt += other.snt
        self.serr += other.serr

    @classmethod
    def from_ops(cls, ops) -> "Counts":
        c = cls(snt=1)
        for op, _, _ in ops:
            if op == "C":
                c.corr += 1
            elif op == "S":
                c.sub += 1
            elif op == "D":
                c.dele += 1
            else:
                c.ins += 1
        c.serr = 1 if c.err > 0 else 0
        return c

    @classmethod
    def from_scores(cls, c: int, s: int, d: int, i: int) -> "Counts":
        return cls(corr=c, sub=s, dele=d, ins=i, snt=1, serr=int(s + d + i > 0))


def _pct(num: int, den: int) -> float:
    """Percentage as sclite prints it (0 when the denominator is 0)."""
    return 0.0 if den == 0 else 100.0 * num / den


def summary_dict(total: Counts) -> Dict[str, object]:
    """Summary numbers: percentages rounded to one decimal plus raw counts."""

    def r(x: float) -> float:
        return float(f"{x:.1f}")

    return {
        "Snt": total.snt,
        "Wrd": total.wrd,
        "Corr": r(_pct(total.corr, total.wrd)),
        "Sub": r(_pct(total.sub, total.wrd)),
        "Del": r(_pct(total.dele, total.wrd)),
        "Ins": r(_pct(total.ins, total.wrd)),
        "Err": r(_pct(total.err, total.wrd)),
        "S.Err": r(_pct(total.serr, total.snt)),
        "counts": {
            "Snt": total.snt,
            "Wrd": total.wrd,
            "Corr": total.corr,
            "Sub": total.sub,
            "Del": total.dele,
            "Ins": total.ins,
            "Err": total.err,
            "S.Err": total.serr,
        },
    }


def _blen(s: str) -> int:
    return len(s.encode("utf-8"))


def format_alignment(utt_id: str, ops, counts: Counts) -> str:
    """One utterance's alignment in sclite's ``pra`` layout."""
    ref_cols, hyp_cols, eval_cols = [], [], []
    for op, r, h in ops:
        if op == "C":
            rt, ht = r.translate(_ASCII_LOWER), h.translate(_ASCII_LOWER)
        else:
            rt = r.translate(_ASCII_UPPER) if r is not None else None
            ht = h.translate(_ASCII_UPPER) if h is not None else None
        # sclite measures column widths in bytes (UTF-8), so do we.
        width = max(_blen(rt or ""), _blen(ht or ""))
        rt = rt if rt is not None else "*" * width
        ht = ht if ht is not None else "*" * width
        ev = "" if op == "C" else op
        ref_cols.append(rt + " " * (width - _blen(rt)))
        hyp_cols.append(ht + " " * (width - _blen(ht)))
        eval_cols.append(ev + " " * (width - _blen(ev)))
    lines = [
        f"id: ({utt_id})",
        f"Scores: (#C #S #D #I) {counts.corr} {counts.sub} {counts.dele} "
        f"{counts.ins}",
        "REF:  " + "".join(c + " " for c in ref_cols),
        "HYP:  " + "".join(c + " " for c in hyp_cols),
        "Eval: " + "".join(c + " " for c in eval_cols),
    ]
    return "\n".join(lines) + "\n"


def format_summary(
    total: Counts, name: str, speakers: Optional[Dict[str, Counts]] = None
) -> str:
    """sclite-like summary block: per-speaker and total percentages, then counts."""
    speakers = speakers or {}
    width = max([7] + [len(spk) for spk in speakers])

    def pct_row(label: str, c: Counts) -> str:
        s = summary_dict(c)
        return (
            f"| {label:<{width}} | {c.snt:5d} {c.wrd:5d} | "
            f"{s['Corr']:4.1f} {s['Sub']:6.1f} {s['Del']:6.1f} {s['Ins']:6.1f} "
            f"{s['Err']:6.1f} {s['S.Err']:6.1f} |\n"
        )

    def count_row(label: str, c: Counts) -> str:
        return (
            f"| {label:<{width}} | {c.snt:5d} {c.wrd:5d} | "
            f"{c.corr:4d} {c.sub:6d} {c.dele:6d} {c.ins:6d} "
            f"{c.err:6d} {c.serr:6d} |\n"
        )

    title = "SYSTEM SUMMARY PERCENTAGES"
    if speakers:
        title += " by SPEAKER"
    header = (
        f"| {'SPKR':<{width}} | # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |\n"
    )
    return (
        f"{title} ({name})\n"
        + header
        + "".join(pct_row(spk, c) for spk, c in speakers.items())
        + pct_row("Sum/Avg", total)
        + "".join(count_row(spk, c) for spk, c in speakers.items())
        + count_row("Sum", total)
    )


def speaker_counts(
    per_utt: Dict[str, Counts], utt2spk: Dict[str, str]
) -> Dict[str, Counts]:
    """Per-speaker sums of per-utterance counts, speakers sorted by name."""
    out: Dict[str, Counts] = {}
    for utt, c in per_utt.items():
        if utt not in utt2spk:
            raise ScoreError(f"utterance '{utt}' is not in utt2spk")
        out.setdefault(utt2spk[utt], Counts()).add(c)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------
# Input checking
# ---------------------------------------------------------------------------
def prepare_pairs(
    ref: Dict[str, str],
    hyp: Dict[str, str],
    ref_path: str,
    hyp_path: str,
    missing_hyp: str = "error",
    skip_empty_ref: bool = False,
) -> Tuple[List[Tuple[str, str, str]], Dict[str, int]]:
    """Match reference and hypothesis ids.

    Returns:
        ``[(utt_id, ref_text, hyp_text)]`` in reference order, and counts of
        ``missing_hyp`` (scored as empty) and ``skipped_empty_ref``.

    Raises:
        ScoreError: naming the offending ids.
    """
    extra = [k for k in hyp if k not in ref]
    if extra:
        raise ScoreError(
            f"{len(extra)} utterance ids of {hyp_path} are not in {ref_path}: "
            f"{extra[:10]}"
        )
    missing = [k for k in ref if k not in hyp]
    if missing and missing_hyp == "error":
        raise ScoreError(
            f"{len(missing)} utterance ids of {ref_path} have no hypothesis in "
            f"{hyp_path}: {missing[:10]} (pass --missing_hyp empty to score them "
            f"as empty hypotheses, i.e. all deletions)"
        )
    if missing:
        logger.warning(
            "%d reference utterances have no hypothesis and are scored as empty "
            "hypotheses (all deletions): %s",
            len(missing),
            missing[:10],
        )
    empty = [k for k, v in ref.items() if v.strip() == ""]
    if empty and not skip_empty_ref:
        raise ScoreError(
            f"{len(empty)} utterances of {ref_path} have an empty reference "
            f"transcript: {empty[:10]} (pass --skip_empty_ref true to skip them)"
        )
    if empty:
        logger.warning(
            "skipping %d utterances with an empty reference transcript: %s",
            len(empty),
            empty[:10],
        )
    empty_set = set(empty)
    pairs = [
        (k, v, hyp.get(k, "")) for k, v in ref.items() if k not in empty_set
    ]
    if not pairs:
        raise ScoreError(f"{ref_path}: nothing to score")
    return pairs, {"missing_hyp": len(missing), "skipped_empty_ref": len(empty)}


# ---------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------
def score_python(
    pairs, unit: str, case_sensitive: bool = False
) -> Tuple[Counts, Dict[str, Counts], str]:
    """Score with the built-in aligner.

    Returns:
        Totals, per-utterance counts and the per-utterance alignment text.
    """
    total = Counts()
    per_utt: Dict[str, Counts] = {}
    blocks = []
    for utt_id, ref_text, hyp_text in pairs:
        ops = align(tokenize(ref_text, unit), tokenize(hyp_text, unit), case_sensitive)
        c = Counts.from_ops(ops)
        per_utt[utt_id] = c
        total.add(c)
        blocks.append(format_alignment(utt_id, ops, c))
    return total, per_utt, "\n".join(blocks)


def trn_id(utt_id: str, utt2spk: Optional[Dict[str, str]]) -> str:
    """``spk-utt`` like ESPnet's scoring stage (``utt`` without utt2spk)."""
    if utt2spk is None:
        return utt_id
    if utt_id not in utt2spk:
        raise ScoreError(f"utterance '{utt_id}' is not in utt2spk")
    return f"{utt2spk[utt_id]}-{utt_id}"


def write_trn(path: str, items: Sequence[Tuple[str, List[str]]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for tid, toks in items:
            f.write(f"{' '.join(toks)} ({tid})\n")


_SCORES_RE = re.compile(r"^Scores: \(#C #S #D #I\)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")
_ID_RE = re.compile(r"^id: \((.*)\)\s*$")


def parse_sclite_pra(text: str) -> Dict[str, Tuple[int, int, int, int]]:
    """Per-utterance ``(C, S, D, I)`` from sclite's ``pra`` output."""
    out: Dict[str, Tuple[int, int, int, int]] = {}
    current = None
    for line in text.splitlines():
        m = _ID_RE.match(line)
        if m:
            current = m.group(1)
            continue
        m = _SCORES_RE.match(line)
        if m and current is not None:
            out[current] = tuple(int(x) for x in m.groups())
            current = None
    return out


# Debian/Ubuntu's ``sctk`` package installs sclite here, off PATH.
_DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"


def find_sclite(sclite: Optional[str]) -> Optional[str]:
    if sclite:
        return sclite if os.path.isfile(sclite) else shutil.which(sclite)
    found = shutil.which("sclite")
    if found is None and os.access(_DEBIAN_SCLITE, os.X_OK):
        found = _DEBIAN_SCLITE
    return found


def score_sclite(
    pairs,
    unit: str,
    out_dir: str,
    sclite: str,
    utt2spk: Optional[Dict[str, str]] = None,
    case_sensitive: bool = False,
) -> Tuple[Counts, Dict[str, Counts], str]:
    """Score with NIST sclite (``-i rm -o all stdout``) and parse its output.

    Returns:
        Totals, per-utterance counts and sclite's full output.
    """
    ids = {utt: trn_id(utt, utt2spk) for utt, _, _ in pairs}
    if len(set(ids.values())) != len(ids):
        raise ScoreError("trn ids are not unique after adding speaker prefixes")
    ref_trn = os.path.join(out_dir, "ref.trn")
    hyp_trn = os.path.join(out_dir, "hyp.trn")
    write_trn(ref_trn, [(ids[u], tokenize(r, unit)) for u, r, _ in pairs])
    write_trn(hyp_trn, [(ids[u], tokenize(h, unit)) for u, _, h in pairs])
    cmd = [sclite, "-r", ref_trn, "trn", "-h", hyp_trn, "trn", "-i", "rm"]
    if case_sensitive:
        cmd.append("-s")
    cmd += ["-o", "all", "stdout"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ScoreError(
            f"sclite failed (exit {proc.returncode}): "
            f"{proc.stderr.decode('utf-8', 'replace')[-1000:]}"
        )
    scores = parse_sclite_pra(output)
    per_utt: Dict[str, Counts] = {}
    total = Counts()
    for utt, _, _ in pairs:
        if ids[utt] not in scores:
            raise ScoreError(
                f"sclite output has no alignment for utterance '{utt}' "
                f"(id '{ids[utt]}'); see {out_dir}/result.txt"
            )
        c = Counts.from_scores(*scores[ids[utt]])
        per_utt[utt] = c
        total.add(c)
    if len(scores) != len(pairs):
        raise ScoreError(
            f"sclite scored {len(scores)} utterances but {len(pairs)} were given"
        )
    return total, per_utt, output


def score_files(
    ref_path: str,
    hyp_path: str,
    unit: str,
    out_dir: str,
    use_sclite: str = "auto",
    sclite: Optional[str] = None,
    utt2spk_path: Optional[str] = None,
    missing_hyp: str = "error",
    skip_empty_ref: bool = False,
    case_sensitive: bool = False,
) -> Dict[str, object]:
    """Score ``hyp_path`` against ``ref_path`` and write ``out_dir`` outputs.

    Returns:
        The dict written to ``summary.json``.
    """
    ref = read_text(ref_path)
    hyp = read_text(hyp_path)
    utt2spk = None
    if utt2spk_path is not None:
        utt2spk = {k: v.split()[0] for k, v in read_text(utt2spk_path).items() if v}
    pairs, notes = prepare_pairs(
        ref, hyp, ref_path, hyp_path, missing_hyp, skip_empty_ref
    )
    os.makedirs(out_dir, exist_ok=True)
    exe = None
    if use_sclite in ("auto", "true"):
        exe = find_sclite(sclite)
        if exe is None and use_sclite == "true":
            raise ScoreError(
                f"--use_sclite true but sclite was not found "
                f"({sclite or 'sclite'} on PATH); install NIST SCTK"
            )
    if exe is not None:
        total, per_utt, result = score_sclite(
            pairs, unit, out_dir, exe, utt2spk, case_sensitive
        )
        speakers = speaker_counts(per_utt, utt2spk) if utt2spk is not None else {}
        scorer = "sclite"
    else:
        total, per_utt, aligned = score_python(pairs, unit, case_sensitive)
        speakers = speaker_counts(per_utt, utt2spk) if utt2spk is not None else {}
        result = (
            format_summary(total, hyp_path, speakers)
            + "\n\nDUMP OF SYSTEM ALIGNMENT STRUCTURE\n\n"
            + aligned
        )
        scorer = "python"
    summary = summary_dict(total)
    if speakers:
        summary["speakers"] = {spk: summary_dict(c) for spk, c in speakers.items()}
    summary.update(
        {
            "unit": unit,
            "scorer": scorer,
            "ref": ref_path,
            "hyp": hyp_path,
            **notes,
        }
    )
    with open(os.path.join(out_dir, "result.txt"), "w", encoding="utf-8") as f:
        f.write(result)
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    label = "WER" if unit == "word" else "CER"
    logger.info(
        "%s %.1f%% (Snt %d, Wrd %d, Corr %.1f Sub %.1f Del %.1f Ins %.1f, "
        "S.Err %.1f) [%s] -> %s",
        label,
        summary["Err"],
        summary["Snt"],
        summary["Wrd"],
        summary["Corr"],
        summary["Sub"],
        summary["Del"],
        summary["Ins"],
        summary["S.Err"],
        scorer,
        out_dir,
    )
    return summary


# ---------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------
_COLUMNS = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
_SUMAVG_RE = re.compile(
    r"\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)"
    r"\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\|"
)


def read_score_dir(score_dir: str) -> Optional[List[str]]:
    """Table cells ``[Snt, Wrd, Corr, ..., S.Err]`` of a score directory.

    Uses ``summary.json`` when present, else the ``Sum/Avg`` line of
    ``result.txt`` (so directories scored by ESPnet's own sclite stage work).
    """
    js = os.path.join(score_dir, "summary.json")
    if os.path.isfile(js):
        with open(js, encoding="utf-8") as f:
            s = json.load(f)
        return [str(s["Snt"]), str(s["Wrd"])] + [
            f"{float(s[k]):.1f}" for k in _COLUMNS[2:]
        ]
    res = os.path.join(score_dir, "result.txt")
    if os.path.isfile(res):
        with open(res, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _SUMAVG_RE.search(line)
                if m:
                    return list(m.groups())
        raise ScoreError(f"{res}: no Sum/Avg line found")
    return None


def _git(project_dir: str, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(
            ["git", "-C", project_dir, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:  # git not installed
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environments(
    project_dir: str, pretrained_model: str, notes: Sequence[str] = ()
) -> str:
    """ESPnet's ``## Environments`` block of ``RESULTS.md``.

    Same fields as ESPnet's ``show_asr_result.sh`` (date, python, espnet and
    pytorch versions, git hash and commit date), the hash being this project's
    (``project_dir``), plus the pre-trained (SSL) model the ASR model started
    from.  A checkout with uncommitted changes is marked as such, since the hash
    alone would not reproduce it.
    """
    import time

    import espnet
    import torch

    lines = [
        "## Environments",
        f"- date: `{time.strftime('%a %b %d %H:%M:%S %Z %Y')}`",  # like `LC_ALL=C date`
        f"- python version: `{sys.version}`",
        f"- espnet version: `espnet {espnet.__version__}`",
        f"- pytorch version: `pytorch {torch.__version__}`",
    ]
    git_hash = _git(project_dir, "rev-parse", "HEAD")
    if git_hash is None:
        lines.append(f"- Git hash: unknown ({project_dir} is not a git checkout)")
    else:
        dirty = _git(project_dir, "status", "--porcelain", "--untracked-files=no")
        note = " (with uncommitted changes)" if dirty else ""
        lines.append(f"- Git hash: `{git_hash}`{note}")
        lines.append(f"  - Commit date: `{_git(project_dir, 'log', '-1', '--format=%cd')}`")
    lines.append(f"- Pretrained model: `{pretrained_model}`")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def results_table(exp_dirs: Sequence[str], metrics=("wer", "cer", "ter")) -> str:
    """ESPnet ``RESULTS.md`` sections for the given experiment directories."""
    out = []
    for exp in exp_dirs:
        exp = exp.rstrip("/")
        if not os.path.isdir(exp):
            raise ScoreError(f"{exp}: not a directory")
        section = [f"## {os.path.basename(exp)}"]
        for metric in metrics:
            dirs = sorted(glob.glob(os.path.join(exp, "*", "*", f"score_{metric}")))
            rows = []
            for d in dirs:
                cells = read_score_dir(d)
                if cells is None:
                    continue
                dataset = os.path.relpath(os.path.dirname(d), exp)
                rows.append("|" + "|".join([dataset] + cells) + "|")
            if rows:
                section += [
                    f"### {metric.upper()}",
                    "",
                    "|dataset|" + "|".join(_COLUMNS) + "|",
                    "|" + "---|" * (len(_COLUMNS) + 1),
                    *rows,
                    "",
                ]
        if len(section) == 1:
            logger.warning("%s: no score_{wer,cer,ter} directories found", exp)
            continue
        out.append("\n".join(section))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def _str2bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got '{value}'")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s",
    )
    try:
        if argv and argv[0] == "results_table":
            p = argparse.ArgumentParser(
                prog="python -m espnet2_birq.bin.score results_table",
                description="Print ESPnet RESULTS.md sections to stdout.",
            )
            p.add_argument("--exp_dir", nargs="+", required=True)
            p.add_argument(
                "--pretrained_model",
                default=None,
                help="print ESPnet's '## Environments' block first, naming this "
                "pre-trained model ('none' when trained from scratch)",
            )
            p.add_argument(
                "--project_dir",
                default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                help="git checkout whose hash goes into the Environments block",
            )
            p.add_argument(
                "--note", action="append", default=[],
                help="extra line for the Environments block (repeatable)",
            )
            args = p.parse_args(argv[1:])
            text = results_table(args.exp_dir)
            if args.pretrained_model is not None:
                print("# RESULTS")
                print(environments(args.project_dir, args.pretrained_model, args.note))
            if text:
                print(text)
            return 0
        p = argparse.ArgumentParser(
            prog="python -m espnet2_birq.bin.score",
            description="WER/CER scoring (sclite-compatible).",
        )
        p.add_argument("--ref", required=True, help="reference Kaldi text")
        p.add_argument("--hyp", required=True, help="hypothesis Kaldi text")
        p.add_argument("--unit", choices=["word", "char"], default="word")
        p.add_argument("--out_dir", required=True)
        p.add_argument("--utt2spk", default=None, help="for (spk-utt) trn ids")
        p.add_argument("--use_sclite", choices=["auto", "true", "false"], default="auto")
        p.add_argument("--sclite", default=None, help="sclite executable")
        p.add_argument("--missing_hyp", choices=["error", "empty"], default="error")
        p.add_argument("--skip_empty_ref", type=_str2bool, default=False)
        p.add_argument("--case_sensitive", type=_str2bool, default=False)
        args = p.parse_args(argv)
        score_files(
            args.ref,
            args.hyp,
            args.unit,
            args.out_dir,
            use_sclite=args.use_sclite,
            sclite=args.sclite,
            utt2spk_path=args.utt2spk,
            missing_hyp=args.missing_hyp,
            skip_empty_ref=args.skip_empty_ref,
            case_sensitive=args.case_sensitive,
        )
    except ScoreError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
