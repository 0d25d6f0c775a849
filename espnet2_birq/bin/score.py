"""WER/CER scoring with NIST sclite or kaldialign, and ESPnet-style RESULTS.md tables.

    python -m espnet2_birq.bin.score --ref data/test/text --hyp exp/decode/test/text \\
        --unit word|char --out_dir exp/decode/test/score_wer [--utt2spk data/test/utt2spk] \\
        [--use_sclite auto|true|false] [--missing_hyp error|empty] [--skip_empty_ref false]
    python -m espnet2_birq.bin.score results_table --exp_dir exp/asr_x [--pretrained_model M]

Tokens are words, or characters with ``<space>`` between words (ESPnet's char tokenizer).
NIST sclite (``-i rm``; on ``PATH``, Debian's ``/usr/lib/sctk/bin/sclite`` or ``--sclite``)
scores when found, else kaldialign with sclite's costs (sub 4, del 3, ins 3), ASCII-case-
insensitive like sclite.  Both minimise the same cost, but
on ties kaldialign can pick an alignment with other counts, nearly always more errors: rare for
words, a few percent of the utterances for characters (CER 0.05-0.15 absolute higher).

``out_dir`` gets ``result.txt`` (sclite's output, or its layout: the summary with the
``Sum/Avg`` line ESPnet's ``show_asr_result.sh`` greps, per-utterance ``REF:``/``HYP:``/``Eval:``),
``summary.json`` (sclite's ``%.1f`` percentages, raw ``counts``, ``speakers`` with ``--utt2spk``,
the scorer) and, for sclite, ``ref.trn``/``hyp.trn``.  Unknown hypothesis ids, references
without a hypothesis (``--missing_hyp empty``: all deletions) and empty references
(``--skip_empty_ref true``: left out) are errors.  ``results_table`` prints ESPnet's
``RESULTS.md`` sections for ``<exp>/<decode>/<set>/score_{wer,cer,ter}``, after ESPnet's
``## Environments`` block with ``--pretrained_model``.
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
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import kaldialign
from espnet2.utils.types import str2bool

from espnet2_birq.utils.datadir import DataDirError, read_kaldi_map

logger = logging.getLogger("espnet2_birq.score")
SPACE_TOKEN = "<space>"
_EPS = ""  # the gap symbol for kaldialign: tokens are never empty
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"  # Debian/Ubuntu's sctk package, off PATH
_COLUMNS = ["Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "Err", "S.Err"]


class ScoreError(DataDirError):
    """Inconsistent or malformed scoring input (a malformed text file raises DataDirError itself)."""


def tokenize(text: str, unit: str) -> List[str]:
    """Words, or characters with ``<space>`` between words."""
    if unit == "word":
        return text.split()
    if unit == "char":  # words are joined by single spaces: every space is a word boundary
        return [SPACE_TOKEN if ch == " " else ch for ch in " ".join(text.split())]
    raise ValueError(f"unknown unit '{unit}' (expected word or char)")


def read_text(path: str) -> Dict[str, str]:
    """A Kaldi ``text`` file as ``{utt_id: transcript}`` in file order."""
    return dict(read_kaldi_map(path, min_fields=1, key_name="utterance id"))


def align(ref: Sequence[str], hyp: Sequence[str]):
    """kaldialign's minimum-cost alignment with sclite's costs (sub 4, del 3, ins 3).

    Returns ``[(op, ref_token, hyp_token)]`` with ``op`` one of ``C S D I`` and
    ``None`` for the missing side of a deletion or insertion.
    """
    # Case-folded (ASCII only) as sclite. sclite traces its alignment back from the end, kaldialign
    # from the start: aligning the reversed sequences puts gaps where sclite puts them in most cases.
    pairs = kaldialign.align([t.translate(_LOWER) for t in reversed(ref)],
                             [t.translate(_LOWER) for t in reversed(hyp)], _EPS, sclite_mode=True)[::-1]
    ref_it, hyp_it, ops = iter(ref), iter(hyp), []
    for r, h in pairs:  # back to the original spelling of each token
        rt = next(ref_it) if r != _EPS else None
        ht = next(hyp_it) if h != _EPS else None
        op = "I" if rt is None else "D" if ht is None else "C" if r == h else "S"
        ops.append((op, rt, ht))
    return ops


def utterance_counts(c: int, s: int, d: int, i: int) -> Counter:
    """One utterance's counts, keyed by sclite's column names (``Snt`` 1, ``Wrd`` reference
    tokens, ``Err`` errors, ``S.Err`` 0 or 1): summed, they are the summary's counts."""
    return Counter({"Snt": 1, "Wrd": c + s + d, "Corr": c, "Sub": s, "Del": d, "Ins": i, "Err": s + d + i,
                    "S.Err": int(s + d + i > 0)})


def ops_counts(ops) -> Counter:
    return utterance_counts(*[sum(op == x for op, _, _ in ops) for x in "CSDI"])


def columns(c: Counter) -> Dict[str, int]:
    """The counts of sclite's summary columns, zeros included (a sum of Counters drops them)."""
    return {key: c[key] for key in _COLUMNS}


def summary_dict(total: Counter) -> Dict[str, object]:
    """Percentages rounded to one decimal (as sclite prints them) plus raw counts."""
    counts = columns(total)
    out: Dict[str, object] = {"Snt": counts["Snt"], "Wrd": counts["Wrd"]}
    for key in _COLUMNS[2:]:
        den = counts["Snt" if key == "S.Err" else "Wrd"]
        out[key] = float(f"{(100.0 * counts[key] / den if den else 0.0):.1f}")
    return {**out, "counts": counts}


def _blen(s: str) -> int:
    return len(s.encode("utf-8"))  # sclite's column widths are in bytes


def format_alignment(utt_id: str, ops, c: Counter) -> str:
    """One utterance in sclite's ``pra`` layout (errors upper case, ``***`` for gaps)."""
    cols = []
    for op, r, h in ops:
        case = _LOWER if op == "C" else _UPPER
        r, h = (t.translate(case) if t is not None else None for t in (r, h))
        width = max(_blen(r or ""), _blen(h or ""))
        cols.append([t if t is not None else "*" * width for t in (r, h)] + ["" if op == "C" else op])
        cols[-1] = [t + " " * (width - _blen(t)) + " " for t in cols[-1]]
    rows = ["".join(col[k] for col in cols) for k in range(3)]
    return (f"id: ({utt_id})\nScores: (#C #S #D #I) {c['Corr']} {c['Sub']} {c['Del']} {c['Ins']}\n"
            f"REF:  {rows[0]}\nHYP:  {rows[1]}\nEval: {rows[2]}\n")


def format_summary(total: Counter, name: str, speakers: Optional[Dict[str, Counter]] = None) -> str:
    """sclite-like summary block: per-speaker and total percentages, then counts."""
    speakers = speakers or {}
    w = max([7] + [len(spk) for spk in speakers])

    def row(label: str, c: Counter, pct: bool) -> str:
        s, n, spec = summary_dict(c) if pct else columns(c), columns(c), ".1f" if pct else "d"
        cells = f"{s['Corr']:4{spec}}" + "".join(f" {s[k]:6{spec}}" for k in _COLUMNS[3:])
        return f"| {label:<{w}} | {n['Snt']:5d} {n['Wrd']:5d} | {cells} |\n"

    title = "SYSTEM SUMMARY PERCENTAGES" + (" by SPEAKER" if speakers else "")
    return (f"{title} ({name})\n| {'SPKR':<{w}} | # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |\n"
            + "".join(row(s, c, True) for s, c in speakers.items()) + row("Sum/Avg", total, True)
            + "".join(row(s, c, False) for s, c in speakers.items()) + row("Sum", total, False))


def prepare_pairs(ref, hyp, ref_path, hyp_path, missing_hyp="error", skip_empty_ref=False):
    """``[(utt_id, ref_text, hyp_text)]`` in reference order, and counts of the
    ``missing_hyp`` (scored as empty) and ``skipped_empty_ref`` utterances."""
    extra = [k for k in hyp if k not in ref]
    if extra:
        raise ScoreError(f"{len(extra)} utterance ids of {hyp_path} are not in {ref_path}: {extra[:10]}")
    missing = [k for k in ref if k not in hyp]
    if missing and missing_hyp == "error":
        raise ScoreError(
            f"{len(missing)} utterance ids of {ref_path} have no hypothesis in {hyp_path}: {missing[:10]} "
            "(pass --missing_hyp empty to score them as empty hypotheses, i.e. all deletions)")
    if missing:
        logger.warning("%d reference utterances have no hypothesis and are scored as empty "
                       "hypotheses (all deletions): %s", len(missing), missing[:10])
    empty = [k for k, v in ref.items() if not v.strip()]
    if empty and not skip_empty_ref:
        raise ScoreError(f"{len(empty)} utterances of {ref_path} have an empty reference transcript: "
                         f"{empty[:10]} (pass --skip_empty_ref true to skip them)")
    if empty:
        logger.warning("skipping %d utterances with an empty reference transcript: %s", len(empty), empty[:10])
    pairs = [(k, v, hyp.get(k, "")) for k, v in ref.items() if v.strip()]  # empty ones: skipped (or refused)
    if not pairs:
        raise ScoreError(f"{ref_path}: nothing to score")
    return pairs, {"missing_hyp": len(missing), "skipped_empty_ref": len(empty)}


def score_kaldialign(pairs, unit: str):
    """Per-utterance counts and ``pra`` alignment blocks from :func:`align`."""
    per_utt, blocks = {}, []
    for utt_id, ref_text, hyp_text in pairs:
        ops = align(tokenize(ref_text, unit), tokenize(hyp_text, unit))
        per_utt[utt_id] = ops_counts(ops)
        blocks.append(format_alignment(utt_id, ops, per_utt[utt_id]))
    return per_utt, "\n".join(blocks)


# sclite prints each utterance's counts on the line after its id
_PRA_SCORES_RE = re.compile(r"^id: \((.*)\)[ \t]*\nScores: \(#C #S #D #I\)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", re.M)


def parse_sclite_pra(text: str) -> Dict[str, Tuple[int, int, int, int]]:
    """Per-utterance ``(C, S, D, I)`` from sclite's ``pra`` output."""
    return {m.group(1): tuple(int(x) for x in m.groups()[1:]) for m in _PRA_SCORES_RE.finditer(text)}


def find_sclite(sclite: Optional[str]) -> Optional[str]:
    if sclite:
        return sclite if os.path.isfile(sclite) else shutil.which(sclite)
    return shutil.which("sclite") or (_DEBIAN_SCLITE if os.access(_DEBIAN_SCLITE, os.X_OK) else None)


def score_sclite(pairs, unit, out_dir, sclite, utt2spk=None):
    """Per-utterance counts and the full output of NIST sclite (``-i rm -o all stdout``)."""
    ids = {utt: utt if utt2spk is None else f"{utt2spk[utt]}-{utt}" for utt, _, _ in pairs}
    if len(set(ids.values())) != len(ids):
        raise ScoreError("trn ids are not unique after adding speaker prefixes")
    for side, name in ((1, "ref.trn"), (2, "hyp.trn")):
        Path(out_dir, name).write_text("".join(f"{' '.join(tokenize(p[side], unit))} ({ids[p[0]]})\n" for p in pairs),
                                       encoding="utf-8")
    cmd = [sclite, "-r", os.path.join(out_dir, "ref.trn"), "trn", "-h", os.path.join(out_dir, "hyp.trn"),
           "trn", "-i", "rm", "-o", "all", "stdout"]
    proc = subprocess.run(cmd, capture_output=True)
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise ScoreError(f"sclite failed (exit {proc.returncode}): {proc.stderr.decode('utf-8', 'replace')[-1000:]}")
    scores = parse_sclite_pra(output)
    missing = [utt for utt in ids if ids[utt] not in scores]
    if missing or len(scores) != len(pairs):
        raise ScoreError(f"sclite scored {len(scores)} of {len(pairs)} utterances (not: {missing[:10]}); "
                         f"see {out_dir}/result.txt")
    return {utt: utterance_counts(*scores[ids[utt]]) for utt in ids}, output


def sclite_version(sclite: str) -> str:
    out = subprocess.run([sclite], capture_output=True, text=True, errors="replace", timeout=60)
    m = re.search(r"sclite Version: (\S+?),", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def score_files(ref_path, hyp_path, unit, out_dir, use_sclite="auto", sclite=None, utt2spk_path=None,
                missing_hyp="error", skip_empty_ref=False) -> Dict[str, object]:
    """Score ``hyp_path`` against ``ref_path``, write ``out_dir``; returns ``summary.json``'s dict."""
    ref, hyp = read_text(ref_path), read_text(hyp_path)
    utt2spk = None if utt2spk_path is None else {k: v.split()[0] for k, v in read_text(utt2spk_path).items() if v}
    pairs, notes = prepare_pairs(ref, hyp, ref_path, hyp_path, missing_hyp, skip_empty_ref)
    unknown = [utt for utt, _, _ in pairs if utt2spk is not None and utt not in utt2spk]
    if unknown:
        raise ScoreError(f"{len(unknown)} utterances are not in {utt2spk_path}: {unknown[:10]}")
    os.makedirs(out_dir, exist_ok=True)
    exe = find_sclite(sclite) if use_sclite in ("auto", "true") else None
    if exe is None and use_sclite == "true":
        raise ScoreError(f"--use_sclite true but sclite was not found ({sclite or 'sclite'} on PATH "
                         f"or {_DEBIAN_SCLITE}); install NIST SCTK (Debian/Ubuntu: apt install sctk)")
    if exe is not None:
        per_utt, result = score_sclite(pairs, unit, out_dir, exe, utt2spk)
        scorer, version = "sclite", sclite_version(exe)
    else:
        per_utt, aligned = score_kaldialign(pairs, unit)
        scorer, version = "kaldialign", kaldialign.__version__
    total, speakers = sum(per_utt.values(), Counter()), {}
    for utt, counts in per_utt.items() if utt2spk is not None else ():
        speakers[utt2spk[utt]] = speakers.get(utt2spk[utt], Counter()) + counts
    speakers = dict(sorted(speakers.items()))
    if exe is None:
        result = (format_summary(total, hyp_path, speakers) + "\n\nDUMP OF SYSTEM ALIGNMENT STRUCTURE\n\n"
                  + aligned)
    summary = summary_dict(total)
    if speakers:
        summary["speakers"] = {spk: summary_dict(c) for spk, c in speakers.items()}
    summary.update(unit=unit, scorer=scorer, scorer_version=version, ref=ref_path, hyp=hyp_path, **notes)
    Path(out_dir, "result.txt").write_text(result, encoding="utf-8")
    Path(out_dir, "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("%s %.1f%% (Snt %d, Wrd %d, Corr %.1f Sub %.1f Del %.1f Ins %.1f, S.Err %.1f) [%s %s] -> %s",
                "WER" if unit == "word" else "CER", *[summary[k] for k in
                ["Err", "Snt", "Wrd", "Corr", "Sub", "Del", "Ins", "S.Err"]], scorer, version, out_dir)
    return summary


_SUMAVG_RE = re.compile(r"\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|" + r"\s*([-\d.]+)" * 6 + r"\s*\|")


def read_score_dir(score_dir: str):
    """Table cells ``[Snt, Wrd, Corr, ..., S.Err]`` of a score directory (None: not scored) and
    its scorer, from ``summary.json`` or else the ``Sum/Avg`` line of ``result.txt`` (ESPnet's
    own sclite stage)."""
    js, res = os.path.join(score_dir, "summary.json"), os.path.join(score_dir, "result.txt")
    cells, scorer = None, None
    if os.path.isfile(js):
        s = json.loads(Path(js).read_text(encoding="utf-8"))
        cells = [str(s["Snt"]), str(s["Wrd"])] + [f"{float(s[k]):.1f}" for k in _COLUMNS[2:]]
        name = {"sclite": "NIST sclite", "kaldialign": "kaldialign"}.get(s.get("scorer"), s.get("scorer"))
        scorer = f"{name or 'unknown'} {s.get('scorer_version', '')}".strip()
        scorer += " (sclite_mode)" if s.get("scorer") == "kaldialign" else ""
    elif os.path.isfile(res):
        with open(res, encoding="utf-8", errors="replace") as f:
            found = [m.groups() for m in map(_SUMAVG_RE.search, f) if m]
        if not found:
            raise ScoreError(f"{res}: no Sum/Avg line found")
        cells, scorer = list(found[0]), "unknown (result.txt only)"
    return cells, scorer


def _git(project_dir: str, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", project_dir, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    except OSError:  # git not installed
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environments(project_dir: str, pretrained_model: str, notes: Sequence[str] = ()) -> str:
    """ESPnet's ``## Environments`` block (as ``show_asr_result.sh``), with this project's git
    hash (marked when the checkout has uncommitted changes) and the pre-trained model."""
    import espnet
    import torch

    lines = ["## Environments", f"- date: `{time.strftime('%a %b %d %H:%M:%S %Z %Y')}`",
             f"- python version: `{sys.version}`", f"- espnet version: `espnet {espnet.__version__}`",
             f"- pytorch version: `pytorch {torch.__version__}`"]
    git_hash = _git(project_dir, "rev-parse", "HEAD")
    if git_hash is None:
        lines.append(f"- Git hash: unknown ({project_dir} is not a git checkout)")
    else:
        dirty = _git(project_dir, "status", "--porcelain", "--untracked-files=no")
        lines.append(f"- Git hash: `{git_hash}`" + (" (with uncommitted changes)" if dirty else ""))
        lines.append(f"  - Commit date: `{_git(project_dir, 'log', '-1', '--format=%cd')}`")
    lines += [f"- Pretrained model: `{pretrained_model}`"] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def results_table(exp_dirs: Sequence[str], metrics=("wer", "cer", "ter")) -> str:
    """ESPnet ``RESULTS.md`` sections, each table followed by the scorer(s) of its numbers."""
    out = []
    for exp in (e.rstrip("/") for e in exp_dirs):
        if not os.path.isdir(exp):
            raise ScoreError(f"{exp}: not a directory")
        section = [f"## {os.path.basename(exp)}"]
        for metric in metrics:
            rows, scorers = [], []
            for d in sorted(glob.glob(os.path.join(exp, "*", "*", f"score_{metric}"))):
                cells, scorer = read_score_dir(d)
                if cells is not None:
                    rows.append("|" + "|".join([os.path.relpath(os.path.dirname(d), exp)] + cells) + "|")
                    scorers += [scorer] if scorer not in scorers else []
            if rows:
                section += [f"### {metric.upper()}", "", "|dataset|" + "|".join(_COLUMNS) + "|",
                            "|" + "---|" * (len(_COLUMNS) + 1), *rows, "",
                            f"Scored with {', '.join(scorers)}.", ""]
        if len(section) == 1:
            logger.warning("%s: no score_{wer,cer,ter} directories found", exp)
        else:
            out.append("\n".join(section))
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        if argv and argv[0] == "results_table":
            p = argparse.ArgumentParser(prog="python -m espnet2_birq.bin.score results_table",
                                        description="Print ESPnet RESULTS.md sections to stdout.")
            p.add_argument("--exp_dir", nargs="+", required=True)
            p.add_argument("--pretrained_model", default=None, help="print ESPnet's '## Environments' block "
                           "first, naming this pre-trained model ('none' when trained from scratch)")
            p.add_argument("--project_dir", default=project, help="git checkout named in the Environments block")
            p.add_argument("--note", action="append", default=[], help="extra Environments line (repeatable)")
            args = p.parse_args(argv[1:])
            text = results_table(args.exp_dir)
            if args.pretrained_model is not None:
                print("# RESULTS")
                print(environments(args.project_dir, args.pretrained_model, args.note))
            if text:
                print(text)
            return 0
        p = argparse.ArgumentParser(prog="python -m espnet2_birq.bin.score",
                                    description="WER/CER scoring (NIST sclite, or kaldialign with sclite's costs).")
        p.add_argument("--ref", required=True, help="reference Kaldi text")
        p.add_argument("--hyp", required=True, help="hypothesis Kaldi text")
        p.add_argument("--unit", choices=["word", "char"], default="word")
        p.add_argument("--out_dir", required=True)
        p.add_argument("--utt2spk", default=None, help="per-speaker rows and (spk-utt) trn ids")
        p.add_argument("--use_sclite", choices=["auto", "true", "false"], default="auto",
                       help="auto: sclite when found, else kaldialign")
        p.add_argument("--sclite", default=None, help="sclite executable")
        p.add_argument("--missing_hyp", choices=["error", "empty"], default="error")
        p.add_argument("--skip_empty_ref", type=str2bool, default=False)
        a = p.parse_args(argv)
        score_files(a.ref, a.hyp, a.unit, a.out_dir, use_sclite=a.use_sclite, sclite=a.sclite,
                    utt2spk_path=a.utt2spk, missing_hyp=a.missing_hyp, skip_empty_ref=a.skip_empty_ref)
    except DataDirError as e:  # ScoreError included
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
