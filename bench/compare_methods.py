#!/usr/bin/env python3
"""What does each pre-training method buy? One comparison on the mini_synth demo corpus.

Arms (identical encoder, fine-tuning config, fine-tuning budget and decoding):

* ``scratch``  CTC fine-tuning from a random encoder
* ``best_rq``  BEST-RQ pre-training, then the same fine-tuning
* ``birq``     BiRQ pre-training as published (demo config), then the same fine-tuning
* ``mt4ssl``   MT4SSL pre-training (k-means + EMA-teacher targets), then the same fine-tuning
* ``bljust``   BL-JUST: one joint run on the labelled and the unlabelled set

each for several seeds (the trainer's ``--seed``: initialisation, masks, batch order;
the quantisers' projections are part of the configs and stay fixed) and several
labelled budgets (subsets of the demo's labelled set, the same utterances for every
arm). Budgets are counted in optimiser updates, never epochs, so that a small
labelled set gets as many fine-tuning updates as a large one:

* pre-training: ``--ssl_updates`` for every SSL method;
* fine-tuning: ``--ft_updates`` for every arm and budget;
* BL-JUST: ``--ssl_updates`` joint updates (each one labelled and one unlabelled
  batch) followed by ``--ft_updates`` supervised-only updates (its ``final`` phase).

Everything runs through the demo recipe (``egs2/mini_synth/ssl1/run.sh`` -> ``ssl_asr.sh``)
in a work directory of its own; the corpus audio is shared with the demo (it is a
deterministic function of the options). What can be shared is computed once:
corpus, features, CMVN, token list (from the full labelled set, so every budget has
the same output layer), k-means labels, and each pre-trained encoder (used by every
budget). Each job logs to ``<work_dir>/logs/<job>.log``; re-running the driver
skips finished jobs (the recipe's stage markers), so a killed comparison resumes.

Output (``--out_dir``): ``compare_methods.md`` (mean and standard deviation over
seeds of dev/test WER and CER per method and budget, wall time per arm, and a
verdict column that says when a difference is within the seed spread),
``compare_methods.json`` (every run) and ``compare_methods.png`` (test WER against
the labelled amount, one line per method, error bars = standard deviation).

    bench/compare_methods.py                 # the full comparison (BENCHMARKS.md gives its time)
    bench/compare_methods.py --quick         # tiny corpus, few updates, 2 seeds: a smoke run
    bench/compare_methods.py --methods scratch birq --seeds 0 1 2 --budgets 40 400
    bench/compare_methods.py --report_only   # the report again, from the finished work directory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout
from espnet2_birq.utils import datadir  # noqa: E402
DEMO = REPO / "egs2" / "mini_synth" / "ssl1"
TEMPLATE = REPO / "egs2" / "TEMPLATE" / "ssl1"

METHODS = ("scratch", "best_rq", "birq", "mt4ssl", "bljust")
# not in the default set: BiRQ's stop-gradient variant (this project's additions, BENCHMARKS.md)
VARIANTS = ("birq_stopgrad",)
LABELS = {
    "scratch": "from scratch",
    "best_rq": "BEST-RQ",
    "birq": "BiRQ (published)",
    "birq_stopgrad": "BiRQ, stop-gradient variant",
    "mt4ssl": "MT4SSL",
    "bljust": "BL-JUST",
}
SSL_CONFIGS = {
    "best_rq": "conf/train_ssl_best_rq_tiny.yaml",
    "birq": "conf/train_ssl_birq_tiny.yaml",
    "birq_stopgrad": "conf/train_ssl_birq_tiny_stopgrad.yaml",
    "mt4ssl": "conf/train_ssl_mt4ssl_tiny.yaml",
}
ASR_CONFIG = "conf/train_asr_ctc_tiny.yaml"
BLJUST_CONFIG = "conf/train_bljust_tiny.yaml"
DEV_SET, TEST_SET = "dev", "test"


class CompareError(RuntimeError):
    """A job of the comparison failed; the message names its log."""


@dataclass
class Job:
    name: str
    args: List[str]
    deps: List[str] = field(default_factory=list)
    kind: str = ""  # pretrain, finetune, bljust
    seconds: float = 0.0


# ---------------------------------------------------------------------------- setup
def make_work_recipe(work: Path) -> Path:
    """A recipe directory linked to the demo's scripts; data/ dump/ exp/ are its own."""
    recipe = work / "ssl1"
    recipe.mkdir(parents=True, exist_ok=True)
    links = {
        "run.sh": DEMO / "run.sh",
        "db.sh": DEMO / "db.sh",
        "local": DEMO / "local",
        "conf": DEMO / "conf",
        "ssl_asr.sh": TEMPLATE / "ssl_asr.sh",
        "path.sh": TEMPLATE / "path.sh",
        "cmd.sh": TEMPLATE / "cmd.sh",
        "utils": REPO / "utils",
    }
    for name, target in links.items():
        link = recipe / name
        if link.is_symlink() or link.exists():
            if link.resolve() != target.resolve():
                raise CompareError(f"{link} exists and does not point to {target}; use another --work_dir")
            continue
        link.symlink_to(target)
    return recipe


def read_ids(path: Path) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split(maxsplit=1)[0] for line in f if line.strip()]


def subset_data_dir(src: Path, dst: Path, count: int) -> List[str]:
    """The labelled subset of ``count`` utterances: evenly spaced over ``src``'s sorted
    ids (utterance ids start with the speaker id, so this spreads the subset over the
    speakers), written by :func:`espnet2_birq.utils.datadir.subset`."""
    ids = read_ids(src / "text")
    if count > len(ids):
        raise CompareError(f"budget {count} is larger than {src} ({len(ids)} utterances)")
    step = len(ids) / count
    keep = {ids[int(i * step)] for i in range(count)}
    # the project's data-dir writer: known files kept in step, recordings of the kept
    # utterances, spk2utt rebuilt
    datadir.subset(src, sorted(keep), dst)
    return sorted(keep)


def total_hours(data_dir: Path) -> float:
    with open(data_dir / "utt2dur", encoding="utf-8") as f:
        return sum(float(line.split()[1]) for line in f if line.strip()) / 3600.0


# ---------------------------------------------------------------------------- runner
class Runner:
    """Runs recipe commands in the work recipe, ``jobs`` at a time, each logged to a file."""

    def __init__(self, recipe: Path, log_dir: Path, demo_size: str, jobs: int):
        self.recipe = recipe
        self.log_dir = log_dir
        self.demo_size = demo_size
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.max_jobs = jobs
        self.lock = threading.Lock()
        self.running: set = set()
        self.stopping = False
        log_dir.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Kill every running job (its whole process group) and start no other."""
        with self.lock:
            self.stopping = True
            procs = list(self.running)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")  # one core per job: jobs run side by side
        env.setdefault("MKL_NUM_THREADS", "1")
        # the corpus audio is shared with the demo recipe (deterministic in its options)
        env.setdefault("MINI_SYNTH", str(DEMO / "downloads" / "mini_synth"))
        env.setdefault("cmd_backend", "local")
        return env

    def run_now(self, job: Job) -> Job:
        log = self.log_dir / f"{job.name}.log"
        cmd = ["./run.sh", "--demo_size", self.demo_size, *job.args]
        say(f"start {job.name} (log: {log})")
        start = time.time()
        with open(log, "w", encoding="utf-8") as f:
            f.write("# " + " ".join(cmd) + "\n")
            f.flush()
            with self.lock:
                if self.stopping:
                    raise CompareError(f"job {job.name} not started: the comparison is stopping")
                # own process group: stop() ends the recipe and everything it started
                proc = subprocess.Popen(cmd, cwd=self.recipe, stdout=f, stderr=subprocess.STDOUT,
                                        env=self.env(), start_new_session=True)
                self.running.add(proc)
            try:
                proc.wait()
            finally:
                with self.lock:
                    self.running.discard(proc)
        if proc.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
            raise CompareError(f"job {job.name} failed (exit {proc.returncode}); log: {log}\n" + "\n".join(tail))
        seconds = time.time() - start
        say(f"done  {job.name} ({seconds:.0f} s)")
        # The report's wall time of a job is its longest run: a re-run that only skips
        # finished stages keeps the first run's time (logs/<job>.seconds, also read by
        # --report_only).
        record = self.log_dir / f"{job.name}.seconds"
        if record.is_file():
            seconds = max(seconds, float(record.read_text()))
        record.write_text(f"{seconds:.1f}\n")
        job.seconds = seconds
        return job

    def run_all(self, jobs: Sequence[Job]) -> Dict[str, Job]:
        """Run ``jobs``, at most ``self.jobs`` at a time, each once its dependencies have
        finished, in list order among the ready ones (no slot waits on a dependency). At
        the first failure the running jobs are killed, nothing else starts, and it is raised."""
        names = {j.name for j in jobs}
        for job in jobs:
            unknown = [d for d in job.deps if d not in names]
            if unknown:
                raise CompareError(f"job {job.name} depends on unknown jobs {unknown}")
        pending, running, done = list(jobs), {}, {}
        while pending or running:
            for job in list(pending):
                if len(running) >= self.max_jobs:
                    break
                if all(d in done for d in job.deps):
                    pending.remove(job)
                    running[self.pool.submit(self.run_now, job)] = job
            if not running:
                raise CompareError(f"jobs {[j.name for j in pending]} wait for each other")
            finished, _ = wait_futures(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                if fut.exception() is not None:
                    self.stop()
                    raise fut.exception()
                done[job.name] = fut.result()
        self.pool.shutdown()
        return done


def say(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} (compare_methods) {msg}", flush=True)


# ---------------------------------------------------------------------------- plan
def epochs_for(updates: int, per_epoch: int, what: str) -> int:
    if updates <= 0 or updates % per_epoch:
        raise CompareError(f"{what} must be a positive multiple of --updates_per_epoch ({per_epoch}), got {updates}")
    return updates // per_epoch


def budget_name(count: int) -> str:
    return f"train{count}"


def ssl_exp(method: str, seed: int) -> str:
    return f"exp/ssl_{method}_seed{seed}"


def asr_exp(budget: int, method: str, seed: int) -> str:
    return f"exp/{budget_name(budget)}/asr_{method}_seed{seed}"


# The one LM of --decode lm: trained on the text-only LM data (none of the labelled
# transcripts, so every budget and arm gets the same LM), by the first fine-tuning run.
LM_EXP = "exp/lm_text_only"


def decode_args(decode: str) -> List[str]:
    """run.sh options of the decoding: greedy CTC without an LM (the default: the arms then
    differ only in their encoders), or the demo's beam search with a character LM."""
    if decode == "greedy":
        return ["--use_lm", "false", "--inference_config", "conf/decode_ctc_greedy.yaml"]
    return ["--use_lm", "true", "--lm_exp", LM_EXP, "--lm_train_text", "data/local/other_text/text",
            "--inference_config", "conf/decode_ctc_lm.yaml"]


def plan_jobs(args, recipe: Path, budgets: Sequence[int], full_train: int) -> List[Job]:
    per_epoch = args.updates_per_epoch
    ssl_epochs = epochs_for(args.ssl_updates, per_epoch, "--ssl_updates")
    ft_epochs = epochs_for(args.ft_updates, per_epoch, "--ft_updates")
    common = ["--nj", "1", "--inference_nj", "1"]
    if args.empty_hyps_ok:
        common += ["--empty_hyps_ok", "true"]
    ssl_args = f"--max_epoch {ssl_epochs} --num_iters_per_epoch {per_epoch}"
    if args.ssl_args:
        # e.g. a learning rate for every SSL method; it comes first so the budget and seed still hold
        ssl_args = f"{args.ssl_args} {ssl_args}"
    jobs: List[Job] = []
    for method in args.methods:
        if method not in SSL_CONFIGS:
            continue
        for seed in args.seeds:
            # the k-means labels (MT4SSL) are made by the first run and shared: the
            # recipe has no lock on them, so the other seeds wait for it
            first = f"pretrain_{method}_seed{args.seeds[0]}"
            deps = [first] if method == "mt4ssl" and seed != args.seeds[0] else []
            jobs.append(Job(
                name=f"pretrain_{method}_seed{seed}", kind="pretrain", deps=deps,
                args=[*common, "--stage", "5", "--stop_stage", "5", "--ssl_config", SSL_CONFIGS[method],
                      "--ssl_exp", ssl_exp(method, seed), "--ssl_args", f"{ssl_args} --seed {seed}"],
            ))
    for budget in budgets:
        # stages 6-8 of every budget in exp/<budget>/ with its own shape files (stage 4)
        per_budget = [*common, "--train_set", "train" if budget == full_train else budget_name(budget),
                      "--expdir", f"exp/{budget_name(budget)}", "--stage", "6", "--stop_stage", "8",
                      *decode_args(args.decode)]
        for method in args.methods:
            for seed in args.seeds:
                name = f"{budget_name(budget)}_{method}_seed{seed}"
                exp = asr_exp(budget, method, seed)
                if method == "bljust":
                    bljust_args = (f"--max_epoch {ssl_epochs + ft_epochs} --num_iters_per_epoch {per_epoch}"
                                   f" --bljust_conf final_epochs={ft_epochs} --seed {seed}")
                    jobs.append(Job(name=name, kind="bljust", args=[
                        *per_budget, "--train_mode", "bljust", "--bljust_config", BLJUST_CONFIG,
                        "--asr_exp", exp, "--bljust_args", bljust_args]))
                    continue
                ft_args = f"--max_epoch {ft_epochs} --num_iters_per_epoch {per_epoch} --seed {seed}"
                if method == "scratch":
                    jobs.append(Job(name=name, kind="finetune", args=[
                        *per_budget, "--pretrained_model", "none", "--asr_exp", exp, "--asr_args", ft_args]))
                    continue
                # --pretrained_model auto: the model file the SSL config's best_model_criterion names
                # (stage 6 checks that every encoder tensor loads from it)
                jobs.append(Job(name=name, kind="finetune", deps=[f"pretrain_{method}_seed{seed}"], args=[
                    *per_budget, "--ssl_config", SSL_CONFIGS[method], "--ssl_exp", ssl_exp(method, seed),
                    "--pretrained_model", "auto", "--asr_exp", exp, "--asr_args", ft_args]))
    if args.decode == "lm":
        # the first fine-tuning run trains the shared LM in its stage 6; the others wait for
        # it (the LM directory is locked while it trains)
        runs = [job for job in jobs if job.kind in ("finetune", "bljust")]
        for job in runs[1:]:
            job.deps.append(runs[0].name)
    return jobs


# ---------------------------------------------------------------------------- results
def read_err(exp_dir: Path, dset: str, metric: str, decode: str = "greedy") -> float:
    # decodings with an LM carry "_lm_<lm dir>" in their name (ssl_asr.sh's inference tag)
    found = sorted(p for p in exp_dir.glob(f"decode_*/{dset}/score_{metric}/summary.json")
                   if ("_lm_" in p.parents[2].name) == (decode == "lm"))
    if len(found) != 1:
        raise CompareError(f"expected one {decode} {dset} {metric} summary under {exp_dir}/decode_*, "
                           f"found {len(found)}")
    return float(json.loads(found[0].read_text())["Err"])


def mean_std(values: Sequence[float]):
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def verdict(a: Sequence[float], b: Sequence[float]) -> str:
    """Is mean(a) lower (better) than mean(b) by more than two seed standard deviations?

    The spread is the larger of the two arms' standard deviations: a difference
    counts only when it exceeds twice that, the rule the comparison is judged by.
    """
    if len(a) < 2 or len(b) < 2:
        return "n/a (one seed)"
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    spread = max(sa, sb)
    diff = ma - mb
    if abs(diff) > 2 * spread:
        return f"{diff:+.1f} ({'better' if diff < 0 else 'worse'}, > 2 sd)"
    return f"{diff:+.1f} (within spread, 2 sd = {2 * spread:.1f})"


def collect(recipe: Path, args, budgets, jobs: Dict[str, Job], skip=frozenset()) -> dict:
    """Scores of the finished runs; ``skip``: (method, budget, seed) taken from elsewhere."""
    runs = []
    for budget in budgets:
        for method in args.methods:
            for seed in args.seeds:
                if (method, budget, seed) in skip:
                    continue
                name = f"{budget_name(budget)}_{method}_seed{seed}"
                exp = recipe / asr_exp(budget, method, seed)
                row = dict(budget=budget, method=method, seed=seed, exp=str(exp.relative_to(recipe)))
                for dset in (DEV_SET, TEST_SET):
                    for metric in ("wer", "cer"):
                        row[f"{dset}_{metric}"] = read_err(exp, dset, metric, args.decode)
                row["finetune_seconds"] = round(jobs[name].seconds, 1)
                pre = jobs.get(f"pretrain_{method}_seed{seed}")
                row["pretrain_seconds"] = round(pre.seconds, 1) if pre else 0.0
                runs.append(row)
    return dict(runs=runs, job_seconds=round(sum(j.seconds for j in jobs.values()), 1))


def write_report(results: dict, args, budgets, hours: Dict[int, float], pretrain_hours: float, out_dir: Path,
                 elapsed: float, estimated: bool = False) -> Path:
    runs = results["runs"]
    job_minutes = results["job_seconds"] / 60
    by = {}
    for r in runs:
        by.setdefault((r["budget"], r["method"]), []).append(r)
    lines = [
        "<!-- Written by bench/compare_methods.py; the command is below. -->",
        "# Pre-training methods compared on mini_synth",
        "",
        f"Command: `{args.command_line}`",
        "",
        f"- Pre-training set: {pretrain_hours:.2f} h (unlabelled); {args.ssl_updates} pre-training updates per SSL method"
        + (f", trainer options `{args.ssl_args}` on top of each method's config." if args.ssl_args else "."),
        f"- Fine-tuning: `{ASR_CONFIG}`, {args.ft_updates} updates for every arm and budget"
        + (f"; BL-JUST: {args.ssl_updates} joint updates + {args.ft_updates} supervised-only updates "
           f"(`{BLJUST_CONFIG}`)." if "bljust" in args.methods else "."),
        f"- Seeds: {' '.join(map(str, args.seeds))} (trainer seed of pre-training and fine-tuning); "
        + ("greedy CTC decoding" if args.decode == "greedy" else
           f"CTC beam search with one character LM for every arm (`conf/decode_ctc_lm.yaml`; `{LM_EXP}`, "
           "trained on the text-only LM data only)")
        + "; model: average of the 3 best checkpoints by dev CER.",
        "- Values: mean ± standard deviation over seeds, in %. Wall time: mean minutes per run "
        "(pre-training + fine-tuning incl. decoding; a job's longest run, so a re-run that skips "
        f"finished stages keeps the first run's time), measured with {args.jobs} jobs side by side on this machine.",
        f"- The jobs' times add up to {job_minutes:.0f} min ({job_minutes / args.jobs:.0f} min with "
        f"{args.jobs} side by side, preparation not included)"
        + ("." if estimated else f"; this invocation took {elapsed / 60:.1f} min."),
        "- Differences: of the test means; a difference counts only when it is larger than twice the "
        "larger standard deviation of the two arms, otherwise the cell says *within spread*.",
        *([getattr(args, "imported_note")] if getattr(args, "imported_note", None) else []),
        "",
        "| labelled | method | dev WER | dev CER | test WER | test CER | min/run |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(values):
        m, s = mean_std(values)
        return f"{m:.1f} ± {s:.1f}" if not math.isnan(s) else f"{m:.1f}"

    def label(budget):
        return f"{budget} utts ({hours[budget] * 60:.1f} min, {100 * hours[budget] / pretrain_hours:.1f}%)"

    def cells(budget, method):
        return [r for r in by[(budget, method)]]

    for budget in budgets:
        for method in args.methods:
            rs = cells(budget, method)
            minutes = statistics.fmean((r["pretrain_seconds"] + r["finetune_seconds"]) / 60 for r in rs)
            lines.append(
                f"| {label(budget)} | {LABELS[method]} | {fmt([r['dev_wer'] for r in rs])} "
                f"| {fmt([r['dev_cer'] for r in rs])} | {fmt([r['test_wer'] for r in rs])} "
                f"| {fmt([r['test_cer'] for r in rs])} | {minutes:.1f} |"
            )
    # differences of the test means, against from-scratch and against BEST-RQ
    lines += [
        "",
        "Test-set differences (method minus reference; negative: fewer errors):",
        "",
        "| labelled | method | WER vs scratch | CER vs scratch | WER vs BEST-RQ | CER vs BEST-RQ |",
        "|---|---|---|---|---|---|",
    ]
    for budget in budgets:
        for method in args.methods:
            if method == "scratch":
                continue
            row = [label(budget), LABELS[method]]
            for ref in ("scratch", "best_rq"):
                for metric in ("test_wer", "test_cer"):
                    if method == ref or (budget, ref) not in by or (ref == "best_rq" and method == "scratch"):
                        row.append("")
                    else:
                        row.append(verdict([r[metric] for r in cells(budget, method)],
                                           [r[metric] for r in cells(budget, ref)]))
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"![test WER against labelled amount]({args.out_name}.png)", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / f"{args.out_name}.md"
    md.write_text("\n".join(lines))
    (out_dir / f"{args.out_name}.json").write_text(json.dumps(
        dict(command=args.command_line, ssl_updates=args.ssl_updates, ssl_args=args.ssl_args,
             ft_updates=args.ft_updates, decode=args.decode,
             seeds=args.seeds, budgets=list(budgets), labelled_hours={str(b): hours[b] for b in budgets},
             pretrain_hours=pretrain_hours, elapsed_seconds=round(elapsed, 1), **results), indent=1) + "\n")
    plot(by, args, budgets, hours, out_dir / f"{args.out_name}.png")
    return md


def plot(by, args, budgets, hours, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [hours[b] * 60 for b in budgets]
    for i, method in enumerate(args.methods):
        stats = [mean_std([r["test_wer"] for r in by[(b, method)]]) for b in budgets]
        # methods side by side around each budget, so that error bars do not hide each other
        offset = [x * (1 + 0.03 * (i - len(args.methods) / 2)) for x in xs]
        ax.errorbar(offset, [m for m, _ in stats], yerr=[0 if math.isnan(s) else s for _, s in stats],
                    marker="o", capsize=3, label=LABELS[method])
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{b} utts\n{x:.1f} min" for b, x in zip(budgets, xs)])
    ax.set_xlabel("labelled data")
    ax.set_ylabel("test WER (%)")
    ax.set_title(f"mini_synth, {len(args.seeds)} seeds (mean ± sd)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny corpus, 2 seeds, 2 budgets, 20 updates each (a few minutes)")
    p.add_argument("--demo_size", choices=("default", "tiny"), default=None, help="corpus size (default: default)")
    p.add_argument("--methods", nargs="+", choices=METHODS + VARIANTS, default=list(METHODS),
                   help=f"default: {' '.join(METHODS)}; also {' '.join(VARIANTS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (--quick: 0 1)")
    p.add_argument("--budgets", nargs="+", type=int, default=None,
                   help="labelled utterances per budget, at most the demo's whole labelled set, from which "
                        "the token list is made (default: 80 400, i.e. 2%% and 10%% of the pre-training audio; "
                        "--quick: 12 60)")
    p.add_argument("--ssl_updates", type=int, default=None, help="pre-training updates (default: 600; --quick: 20)")
    p.add_argument("--ssl_args", default="",
                   help="extra trainer options for every pre-training run, e.g. "
                        "'--optim_conf lr=0.005 --scheduler_conf warmup_steps=100' (default: none)")
    p.add_argument("--ft_updates", type=int, default=None, help="fine-tuning updates (default: 600; --quick: 20)")
    p.add_argument("--updates_per_epoch", type=int, default=None,
                   help="ESPnet epoch length in updates: validation and checkpoints (default: 50; --quick: 10)")
    p.add_argument("--decode", choices=("greedy", "lm"), default="greedy",
                   help="greedy CTC (default), or the demo's beam search with one character LM for every arm "
                        "(fine-tuned models of an earlier run are reused: only decoding is added)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one core each (default: 2)")
    p.add_argument("--work_dir", type=Path, default=None,
                   help="recipe work directory (default: bench/work/compare_methods_<size>)")
    p.add_argument("--out_dir", type=Path, default=None, help="report directory (default: bench/results)")
    p.add_argument("--out_name", default=None, help="report file stem (default: compare_methods[_quick])")
    p.add_argument("--report_only", action="store_true",
                   help="run nothing: write the report from a finished --work_dir (wall times from its logs/*.seconds)")
    p.add_argument("--import_runs", nargs="+", default=[], metavar="JSON:OLD=NEW[,OLD=NEW]",
                   help="with --report_only: take the runs of these methods from an earlier report's JSON "
                        "(renamed OLD -> NEW; only the seeds and budgets asked for); the seeds it lacks "
                        "come from the work directory")
    p.add_argument("--empty_hyps_ok", action="store_true",
                   help="score models that emit only blanks (--quick sets it: 20 updates may not learn)")
    args = p.parse_args(argv)
    args.command_line = " ".join(["bench/compare_methods.py", *(argv if argv is not None else sys.argv[1:])])
    quick = args.quick
    args.demo_size = args.demo_size or ("tiny" if quick else "default")
    args.seeds = args.seeds if args.seeds is not None else ([0, 1] if quick else [0, 1, 2])
    args.budgets = args.budgets or ([12, 60] if quick else [80, 400])
    args.ssl_updates = args.ssl_updates or (20 if quick else 600)
    args.ft_updates = args.ft_updates or (20 if quick else 600)
    args.updates_per_epoch = args.updates_per_epoch or (10 if quick else 50)
    args.empty_hyps_ok = args.empty_hyps_ok or quick
    args.work_dir = (args.work_dir or REPO / "bench" / "work" / f"compare_methods_{args.demo_size}").resolve()
    args.out_dir = (args.out_dir or REPO / "bench" / "results").resolve()
    args.out_name = args.out_name or ("compare_methods_quick" if quick else "compare_methods")
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must be distinct")
    if args.import_runs and not args.report_only:
        p.error("--import_runs is for --report_only")
    if "scratch" not in args.methods:
        p.error("--methods must include scratch: every verdict is relative to it")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    if args.report_only:
        return report_only(args)
    recipe = make_work_recipe(args.work_dir)
    runner = Runner(recipe, args.work_dir / "logs", args.demo_size, args.jobs)
    say(f"work directory {recipe}; methods {' '.join(args.methods)}; seeds {args.seeds}; budgets {args.budgets}")

    # 1. corpus, features, CMVN, token list (from the whole labelled set) and shapes: once
    runner.run_now(Job("prepare", ["--nj", "2", "--stop_stage", "4"]))
    full_train = len(read_ids(recipe / "data" / "train" / "text"))
    budgets = sorted(set(args.budgets))
    if budgets[-1] > full_train:
        raise CompareError(f"a budget of {budgets[-1]} utterances is larger than the labelled set "
                           f"({full_train} utterances)")
    for budget in budgets:
        if budget != full_train:
            subset_data_dir(recipe / "data" / "train", recipe / "data" / budget_name(budget), budget)
        # features of the subset (the rest is done) and the budget's shape files; the
        # token list of the whole labelled set is kept (stage 3 skipped)
        runner.run_now(Job(f"prepare_{budget_name(budget)}", [
            "--nj", "1", "--stage", "2", "--stop_stage", "4", "--skip_stages", "3",
            "--train_set", "train" if budget == full_train else budget_name(budget),
            "--expdir", f"exp/{budget_name(budget)}"]))

    # 2. pre-training runs, then every fine-tuning / BL-JUST run, `--jobs` at a time
    jobs = plan_jobs(args, recipe, budgets, full_train)
    try:
        done = runner.run_all(jobs)
    except BaseException:  # a failed job, Ctrl-C or SIGTERM: no job outlives the driver
        runner.stop()
        raise

    # 3. report
    hours = {b: total_hours(recipe / "data" / ("train" if b == full_train else budget_name(b))) for b in budgets}
    results = collect(recipe, args, budgets, done)
    md = write_report(results, args, budgets, hours, total_hours(recipe / "data" / "pretrain"), args.out_dir,
                      time.time() - start)
    print(md.read_text())
    say(f"report: {md} (+ .json, .png); {(time.time() - start) / 60:.1f} min")
    return 0


def read_imported_runs(specs: Sequence[str], seeds: Sequence[int], budgets: Sequence[int]) -> List[dict]:
    """Runs of earlier reports, ``JSON:OLD=NEW[,OLD=NEW]``: methods renamed, other methods, seeds and
    budgets dropped. A seed an earlier report lacks may come from the work directory (``report_only``)."""
    runs = []
    for spec in specs:
        path, _, mapping = spec.rpartition(":")
        if not path or not mapping:
            raise CompareError(f"--import_runs {spec}: expected JSON:OLD=NEW[,OLD=NEW]")
        names = dict(pair.split("=", 1) for pair in mapping.split(","))
        unknown = set(names.values()) - set(LABELS)
        if unknown:
            raise CompareError(f"--import_runs {spec}: unknown method names {sorted(unknown)}")
        data = json.loads(Path(path).read_text())
        found = [dict(r, method=names[r["method"]], imported_from=Path(path).name) for r in data["runs"]
                 if r["method"] in names and r["seed"] in seeds and r["budget"] in budgets]
        if not found:
            raise CompareError(f"--import_runs {spec}: no run of {sorted(names)} with seeds {list(seeds)} "
                               f"at budgets {list(budgets)}")
        runs += found
    keys = [(r["method"], r["budget"], r["seed"]) for r in runs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise CompareError(f"--import_runs: (method, budget, seed) imported twice: {twice}")
    return runs


def report_only(args) -> int:
    # the report shows the command that ran the jobs
    args.command_line = args.command_line.replace(" --report_only", "")
    recipe = args.work_dir / "ssl1"
    budgets = sorted(set(args.budgets))
    full_train = len(read_ids(recipe / "data" / "train" / "text"))
    imported = read_imported_runs(args.import_runs, args.seeds, budgets)
    skip = {(r["method"], r["budget"], r["seed"]) for r in imported}
    jobs = jobs_not_imported(plan_jobs(args, recipe, budgets, full_train), skip)
    for job in jobs:
        seconds = args.work_dir / "logs" / f"{job.name}.seconds"
        if not seconds.is_file():
            raise CompareError(f"{seconds} missing: job {job.name} has not finished; run without --report_only")
        job.seconds = float(seconds.read_text())
    done = {job.name: job for job in jobs}
    hours = {b: total_hours(recipe / "data" / ("train" if b == full_train else budget_name(b))) for b in budgets}
    results = collect(recipe, args, budgets, done, skip=skip)
    results["runs"] += imported
    if imported:
        seeds_of = {}
        for r in imported:
            seeds_of.setdefault((r["method"], r["imported_from"]), set()).add(r["seed"])
        args.imported_note = (
            "- Imported from earlier reports of the same regime (their times are not in the total): "
            + "; ".join(f"{method} seeds {' '.join(map(str, sorted(seeds)))} from {source}"
                        for (method, source), seeds in sorted(seeds_of.items())) + ".")
    md = write_report(results, args, budgets, hours,
                      total_hours(recipe / "data" / "pretrain"), args.out_dir, 0.0, estimated=True)
    print(md.read_text())
    return 0


def jobs_not_imported(jobs: Sequence[Job], imported: set) -> List[Job]:
    """The jobs whose results come from the work directory: every fine-tuning (or BL-JUST) run
    whose (method, budget, seed) is not in ``imported``, and the pre-training runs they need."""
    def key(job):  # train80_birq_seed3 -> ("birq", 80, 3)
        budget, rest = job.name.split("_", 1)
        method, seed = rest.rsplit("_seed", 1)
        return method, int(budget[len("train"):]), int(seed)
    kept = [job for job in jobs if job.kind != "pretrain" and key(job) not in imported]
    needed = {dep for job in kept for dep in job.deps}
    return [job for job in jobs if job.kind == "pretrain" and job.name in needed] + kept


def raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        sys.exit(main())
    except CompareError as e:
        say(f"ERROR: {e}")
        sys.exit(1)
