#!/usr/bin/env python3
"""BiRQ's label statistics over training, read from ESPnet's ``train.log``.

ESPnet's reporter writes one line per epoch (``<N>epoch results: [train] k=v, ...,
[valid] k=v, ...``). This tool collects, for each pre-training run given, the statistics
that say whether BiRQ's enhanced labels stay healthy while it trains:

* ``birq_ppl_e`` / ``birq_codes_e``: perplexity and distinct codes of the noise-free
  arg-max enhanced labels of the masked frames (a collapsed generator shows about 1);
* ``birq_label_agreement``: share of trained-on labels (the Gumbel sample) equal to
  that arg-max;
* ``birq_acc_e``: the enhanced head's accuracy on the labels it is trained on;
* ``best_rq_acc``: the anchoring (BEST-RQ) accuracy.

Values of several runs (e.g. seeds) are averaged per epoch, with the standard deviation.

    bench/birq_training_stats.py exp/ssl_birq_seed*/train.log            # markdown table
    bench/birq_training_stats.py --split valid --json out.json exp/*/train.log
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List

KEYS = ("best_rq_acc", "birq_acc_e", "birq_ppl_e", "birq_codes_e", "birq_label_agreement")
EPOCH_LINE = re.compile(r"(\d+)epoch results: (.*)$")
SECTION = re.compile(r"\[(\w+)\] ([^\[]*)")
VALUE = re.compile(r"(\w+)=([-+0-9.eE]+|nan|inf)(?:,|$)")


def parse_log(path: Path) -> Dict[int, Dict[str, Dict[str, float]]]:
    """{epoch: {split: {key: value}}} of one ESPnet ``train.log``.

    A resumed run repeats no epoch; if a log holds one twice, the last line wins.
    """
    epochs: Dict[int, Dict[str, Dict[str, float]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = EPOCH_LINE.search(line)
        if not match:
            continue
        epoch = int(match.group(1))
        for split, body in SECTION.findall(match.group(2)):
            values = {k: float(v) for k, v in VALUE.findall(body.strip().rstrip(","))}
            epochs.setdefault(epoch, {})[split] = values
    if not epochs:
        raise ValueError(f"{path}: no '<N>epoch results' line (not an ESPnet train.log?)")
    return epochs


def summarise(logs: List[Path], split: str) -> List[Dict]:
    """Per epoch: mean and sd over the runs of every key in KEYS the logs have."""
    runs = [parse_log(p) for p in logs]
    rows = []
    for epoch in sorted(set().union(*runs)):
        row: Dict = {"epoch": epoch, "runs": 0}
        for key in KEYS:
            values = [r[epoch][split][key] for r in runs
                      if epoch in r and split in r[epoch] and key in r[epoch][split]]
            if values:
                row["runs"] = max(row["runs"], len(values))
                row[key] = statistics.mean(values)
                row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: List[Dict], split: str) -> str:
    keys = [k for k in KEYS if any(k in r for r in rows)]
    lines = [f"| epoch ({split}) | runs | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [f"{r[k]:.3f} ± {r[k + '_sd']:.3f}" if k in r else "" for k in keys]
        lines.append(f"| {r['epoch']} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("logs", nargs="+", type=Path, help="ESPnet train.log files (one per run)")
    p.add_argument("--split", default="train", help="train or valid (default: train)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        p.error(f"no such log: {' '.join(missing)}")
    rows = summarise(args.logs, args.split)
    print(markdown(rows, args.split))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
