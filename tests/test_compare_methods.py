"""bench/compare_methods.py: the plan (equal budgets for every arm), the labelled subsets,
the report (mean/sd table, spread verdicts, plot) and, at its smallest size, a real run."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "bench" / "compare_methods.py"


def load():
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = mod
    spec.loader.exec_module(mod)
    return mod


cm = load()


def write_data_dir(path: Path, spk_utts):
    path.mkdir(parents=True)
    utts = sorted((f"{spk}_{i:03d}", spk) for spk, n in spk_utts for i in range(n))
    (path / "text").write_text("".join(f"{u} HELLO {u[-1]}\n" for u, _ in utts))
    (path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in utts))
    (path / "wav.scp").write_text("".join(f"{u} /a/{u}.wav\n" for u, _ in utts))
    (path / "utt2dur").write_text("".join(f"{u} 2.0\n" for u, _ in utts))
    spk2utt = {}
    for u, s in utts:
        spk2utt.setdefault(s, []).append(u)
    (path / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())))
    return [u for u, _ in utts]


def test_subset_spreads_over_speakers_and_keeps_files_in_step(tmp_path):
    ids = write_data_dir(tmp_path / "train", [(f"spk{k}", 10) for k in range(8)])
    kept = cm.subset_data_dir(tmp_path / "train", tmp_path / "train16", 16)
    assert len(kept) == 16 and set(kept) <= set(ids)
    speakers = {u.split("_")[0] for u in kept}
    assert len(speakers) == 8  # 2 of each speaker's 10, not the first 16 utterances
    for name in ("text", "utt2spk", "wav.scp", "utt2dur"):
        assert cm.read_ids(tmp_path / "train16" / name) == kept
    spk2utt = (tmp_path / "train16" / "spk2utt").read_text().splitlines()
    assert len(spk2utt) == 8 and all(len(line.split()) == 3 for line in spk2utt)
    assert cm.total_hours(tmp_path / "train16") == pytest.approx(16 * 2.0 / 3600)
    with pytest.raises(cm.CompareError, match="larger than"):
        cm.subset_data_dir(tmp_path / "train", tmp_path / "too_big", 81)


def test_verdict_needs_a_difference_beyond_two_standard_deviations():
    assert cm.verdict([40.0, 41.0, 42.0], [50.0, 51.0, 52.0]).startswith("-10.0 (better")
    assert cm.verdict([50.0, 51.0, 52.0], [40.0, 41.0, 42.0]).startswith("+10.0 (worse")
    # 1.0 apart with sd 1.0: within the spread, whichever is lower
    assert "within spread" in cm.verdict([40.0, 41.0, 42.0], [41.0, 42.0, 43.0])
    assert "within spread" in cm.verdict([40.0, 44.0], [46.0, 46.0])  # -4.0 against 2 x sd 2.83
    assert cm.verdict([40.0], [50.0]) == "n/a (one seed)"


def plan(tmp_path, *extra):
    args = cm.parse_args(["--work_dir", str(tmp_path / "w"), "--out_dir", str(tmp_path / "o"), *extra])
    return args, cm.plan_jobs(args, tmp_path, sorted(args.budgets), max(args.budgets))


def option(job, name):
    return job.args[job.args.index(name) + 1]


def test_every_arm_gets_the_same_budget_in_updates(tmp_path):
    args, jobs = plan(tmp_path, "--ssl_updates", "300", "--ft_updates", "500")
    by_name = {j.name: j for j in jobs}
    pre = [j for j in jobs if j.kind == "pretrain"]
    assert {j.name for j in pre} == {f"pretrain_{m}_seed{s}" for m in ("best_rq", "birq", "mt4ssl") for s in (0, 1, 2)}
    for j in pre:
        assert option(j, "--ssl_args").startswith("--max_epoch 6 --num_iters_per_epoch 50 --seed ")
    ft = [j for j in jobs if j.kind == "finetune"]
    assert len(ft) == 4 * 3 * 2  # scratch + 3 SSL methods, 3 seeds, 2 budgets
    for j in ft:
        seed = j.name.rsplit("seed", 1)[1]
        assert option(j, "--asr_args") == f"--max_epoch 10 --num_iters_per_epoch 50 --seed {seed}"
        if "_scratch_" in j.name:
            assert option(j, "--pretrained_model") == "none" and not j.deps
        else:
            method = j.name.split("_", 1)[1].rsplit("_seed", 1)[0]
            assert j.deps == [f"pretrain_{method}_seed{seed}"]
            assert option(j, "--pretrained_model") == "auto" and option(j, "--ssl_exp") == f"exp/ssl_{method}_seed{seed}"
            assert option(j, "--ssl_config") == cm.SSL_CONFIGS[method]
    bl = [j for j in jobs if j.kind == "bljust"]
    assert len(bl) == 3 * 2
    for j in bl:
        # 300 joint updates (6 epochs) + 500 supervised-only updates (10 final epochs)
        assert option(j, "--bljust_args").startswith("--max_epoch 16 --num_iters_per_epoch 50 --bljust_conf final_epochs=10")
    # the low-resource budget trains on its subset with its own shape files
    small = by_name["train80_scratch_seed0"]
    assert option(small, "--train_set") == "train80" and option(small, "--expdir") == "exp/train80"
    assert option(by_name["train400_scratch_seed0"], "--train_set") == "train"
    # MT4SSL's shared k-means labels are made once: the other seeds wait for the first
    assert by_name["pretrain_mt4ssl_seed1"].deps == ["pretrain_mt4ssl_seed0"]
    assert by_name["pretrain_birq_seed1"].deps == []
    # dependencies come before their dependants in the plan
    order = [j.name for j in jobs]
    assert all(order.index(d) < order.index(j.name) for j in jobs for d in j.deps)


def test_ssl_args_reach_every_pretraining_run_and_not_fine_tuning(tmp_path):
    args, jobs = plan(tmp_path, "--ssl_updates", "300", "--ssl_args", "--optim_conf lr=0.005")
    for j in jobs:
        if j.kind == "pretrain":
            seed = j.name.rsplit("seed", 1)[1]
            # the budget and seed come last: options given here cannot change them
            assert option(j, "--ssl_args") == (
                f"--optim_conf lr=0.005 --max_epoch 6 --num_iters_per_epoch 50 --seed {seed}")
        else:
            assert "lr=0.005" not in " ".join(j.args)


def test_decoding_is_greedy_by_default_and_lm_decoding_shares_one_text_only_lm(tmp_path):
    _, jobs = plan(tmp_path)
    runs = [j for j in jobs if j.kind in ("finetune", "bljust")]
    for j in runs:
        assert option(j, "--use_lm") == "false" and option(j, "--inference_config") == "conf/decode_ctc_greedy.yaml"
    _, jobs = plan(tmp_path, "--decode", "lm")
    runs = [j for j in jobs if j.kind in ("finetune", "bljust")]
    for j in runs:
        assert option(j, "--use_lm") == "true" and option(j, "--inference_config") == "conf/decode_ctc_lm.yaml"
        # one LM for every arm and budget (not the budget's transcripts), trained by the first run
        assert option(j, "--lm_exp") == cm.LM_EXP and option(j, "--lm_train_text") == "data/local/other_text/text"
        assert (runs[0].name in j.deps) == (j is not runs[0])
    assert not [j for j in jobs if j.kind == "pretrain" and "--use_lm" in j.args]
    # the report reads the decoding it asked for when both are on disk
    exp = tmp_path / "exp"
    for tag, err in (("decode_ctc_greedy_asr_model_valid.cer_ctc.ave", 50.0),
                     ("decode_ctc_lm_asr_model_valid.cer_ctc.ave_lm_lm_text_only_valid.loss.ave", 20.0)):
        summary = exp / tag / "test" / "score_wer" / "summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text(json.dumps({"Err": err}))
    assert cm.read_err(exp, "test", "wer") == 50.0
    assert cm.read_err(exp, "test", "wer", "lm") == 20.0


def test_budgets_must_be_whole_validation_intervals(tmp_path):
    with pytest.raises(cm.CompareError, match="multiple of --updates_per_epoch"):
        plan(tmp_path, "--ft_updates", "120")


def test_report_table_and_plot(tmp_path):
    args = cm.parse_args(["--work_dir", str(tmp_path / "w"), "--out_dir", str(tmp_path / "o"), "--seeds", "0", "1", "2"])
    runs = []
    for budget, base in ((40, 90.0), (400, 50.0)):
        for k, method in enumerate(cm.METHODS):
            for seed in (0, 1, 2):
                wer = base - (10.0 * k if budget == 40 else 0.3 * k) + seed
                runs.append(dict(budget=budget, method=method, seed=seed, dev_wer=wer, dev_cer=wer / 3,
                                 test_wer=wer, test_cer=wer / 3, pretrain_seconds=60.0, finetune_seconds=30.0))
    md = cm.write_report(dict(runs=runs, job_seconds=2700.0), args, [40, 400], {40: 80 / 3600, 400: 800 / 3600}, 2.0, tmp_path / "o", 600.0)
    text = md.read_text()
    lines = text.splitlines()
    split = lines.index("Test-set differences (method minus reference; negative: fewer errors):")
    values = [line for line in lines[:split] if line.startswith("| 4")]
    diffs = [line for line in lines[split:] if line.startswith("| 4")]
    assert len(values) == 10 and len(diffs) == 8  # no difference row for scratch itself
    assert "| 40 utts (1.3 min, 1.1%) | BiRQ (published) | 71.0 ± 1.0 | 23.7 ± 0.3 | 71.0 ± 1.0 | 23.7 ± 0.3 | 1.5 |" in values
    birq_40 = next(r for r in diffs if r.startswith("| 40 utts") and "| BiRQ (published) |" in r)
    # WER: -20 vs scratch, -10 vs BEST-RQ; CER a third of that, sd 1/3: all beyond 2 sd
    assert birq_40.count("better, > 2 sd") == 4 and "-20.0 (better" in birq_40 and "-3.3 (better" in birq_40
    birq_400 = next(r for r in diffs if r.startswith("| 400 utts") and "| BiRQ (published) |" in r)
    assert birq_400.count("within spread") == 4
    bestrq_40 = next(r for r in diffs if r.startswith("| 40 utts") and "| BEST-RQ |" in r)
    assert bestrq_40.endswith("|  |  |")  # not compared with itself
    assert "add up to 45 min (22 min with 2 side by side" in text and "this invocation took 10.0 min" in text
    data = json.loads((tmp_path / "o" / "compare_methods.json").read_text())
    assert len(data["runs"]) == 30 and data["seeds"] == [0, 1, 2]
    png = tmp_path / "o" / "compare_methods.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(compare_methods.png)" in text
    assert "BL-JUST: 600 joint updates + 600 supervised-only updates" in text


def test_report_names_bljust_budgets_only_when_bljust_ran(tmp_path):
    args = cm.parse_args(["--work_dir", str(tmp_path / "w"), "--out_dir", str(tmp_path / "o"),
                          "--methods", "scratch", "birq", "--seeds", "0", "1", "--ssl_args", "--optim_conf lr=0.005"])
    runs = [dict(budget=40, method=m, seed=s, dev_wer=50.0 + s, dev_cer=20.0 + s, test_wer=50.0 + s,
                 test_cer=20.0 + s, pretrain_seconds=60.0, finetune_seconds=30.0)
            for m in ("scratch", "birq") for s in (0, 1)]
    text = cm.write_report(dict(runs=runs, job_seconds=360.0), args, [40], {40: 80 / 3600}, 2.0,
                           tmp_path / "o", 60.0).read_text()
    assert "BL-JUST" not in text
    assert "trainer options `--optim_conf lr=0.005` on top of each method's config" in text
    assert json.loads((tmp_path / "o" / "compare_methods.json").read_text())["ssl_args"] == "--optim_conf lr=0.005"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quick_comparison_runs_end_to_end(tmp_path):
    """The smallest real run: tiny corpus, 2 budgets, 20 updates, one seed, from scratch and
    BiRQ (pre-training, then fine-tuning). Five jobs: the other methods take the same paths
    through the recipe (BL-JUST's joint run is in the demo's end-to-end test), every
    method's job plan is checked above, and the seed statistics are checked on the report."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MINI_SYNTH=str(tmp_path / "audio"))
    cmd = [sys.executable, str(SCRIPT), "--quick", "--methods", "scratch", "birq", "--seeds", "0",
           "--work_dir", str(tmp_path / "work"), "--out_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((out / "compare_methods_quick.json").read_text())
    assert len(data["runs"]) == 2 * 2
    for run in data["runs"]:
        for key in ("dev_wer", "dev_cer", "test_wer", "test_cer"):
            assert 0.0 <= run[key] and math.isfinite(run[key])
    assert {r["budget"] for r in data["runs"]} == {12, 60}
    text = (out / "compare_methods_quick.md").read_text()
    for label in ("from scratch", "BiRQ (published)"):
        assert f"| {label} |" in text
    assert (out / "compare_methods_quick.png").stat().st_size > 1000
    # the low-resource arm trained on its 12-utterance subset
    train_log = (tmp_path / "work" / "ssl1" / "exp" / "train12" / "asr_birq_seed0" / "train.log").read_text()
    assert "dump/fbank/train12/feats.scp" in train_log
    # the report alone, from the finished work directory and its recorded job times
    (out / "compare_methods_quick.md").unlink()
    report = subprocess.run([*cmd, "--report_only"], capture_output=True, text=True, timeout=300, env=env)
    assert report.returncode == 0, report.stdout[-4000:] + report.stderr[-4000:]
    rewritten = (out / "compare_methods_quick.md").read_text()
    assert "add up to" in rewritten and "this invocation" not in rewritten


def test_report_only_takes_from_the_work_directory_what_is_not_imported(tmp_path):
    """Seeds 0-1 of BEST-RQ imported, seed 2 and every other arm from the work directory:
    only their jobs (and the pre-training runs those need) are read there."""
    args, jobs = plan(tmp_path, "--methods", "scratch", "best_rq", "birq", "--budgets", "80", "400")
    imported = {("best_rq", b, s) for b in (80, 400) for s in (0, 1)}
    names = {j.name for j in cm.jobs_not_imported(jobs, imported)}
    assert names == {j.name for j in jobs} - {f"{p}_seed{s}" for s in (0, 1) for p in
                                               ("pretrain_best_rq", "train80_best_rq", "train400_best_rq")}
    # a pre-training run is still read when one budget of its seed is not imported
    names = {j.name for j in cm.jobs_not_imported(jobs, {("best_rq", 80, 0)})}
    assert "pretrain_best_rq_seed0" in names and "train80_best_rq_seed0" not in names


def test_report_only_refuses_an_unfinished_work_directory(tmp_path):
    recipe = tmp_path / "w" / "ssl1"
    write_data_dir(recipe / "data" / "train", [("spk", 400)])
    with pytest.raises(cm.CompareError, match="has not finished"):
        cm.main(["--report_only", "--work_dir", str(tmp_path / "w"), "--out_dir", str(tmp_path / "o")])


class RecordingRunner(cm.Runner):
    """Runs nothing: records when each job starts and ends (fake clock steps)."""

    def __init__(self, tmp_path, jobs, fail=()):
        super().__init__(tmp_path, tmp_path / "logs", "tiny", jobs)
        self.events, self.fail = [], set(fail)
        self.active = 0
        self.max_active = 0

    def run_now(self, job):
        import time as _time

        with self.lock:
            self.events.append(("start", job.name))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        _time.sleep(0.05)
        with self.lock:
            self.active -= 1
            self.events.append(("end", job.name))
        if job.name in self.fail:
            raise cm.CompareError(f"job {job.name} failed")
        return job


def test_runner_starts_ready_jobs_and_never_idles_a_slot_on_a_dependency(tmp_path):
    jobs = [cm.Job("pre_a", []), cm.Job("pre_b", [], deps=["pre_a"]), cm.Job("scratch", []),
            cm.Job("ft_a", [], deps=["pre_a"]), cm.Job("ft_b", [], deps=["pre_b"])]
    runner = RecordingRunner(tmp_path, 2)
    done = runner.run_all(jobs)
    assert set(done) == {j.name for j in jobs}
    starts = [n for e, n in runner.events if e == "start"]
    # pre_b cannot start yet, so the second slot takes the next ready job, not a wait
    assert starts[:2] == ["pre_a", "scratch"]
    for job in jobs:
        for dep in job.deps:
            assert runner.events.index(("end", dep)) < runner.events.index(("start", job.name))
    assert runner.max_active == 2


def test_runner_stops_at_the_first_failure(tmp_path):
    jobs = [cm.Job("pre_a", []), cm.Job("ft_a", [], deps=["pre_a"]), cm.Job("other", [])]
    runner = RecordingRunner(tmp_path, 1, fail={"pre_a"})
    with pytest.raises(cm.CompareError, match="pre_a failed"):
        runner.run_all(jobs)
    assert ("start", "ft_a") not in runner.events and ("start", "other") not in runner.events
    with pytest.raises(cm.CompareError, match="unknown jobs"):
        RecordingRunner(tmp_path, 1).run_all([cm.Job("x", [], deps=["nope"])])


def test_birq_stopgrad_variant_is_opt_in_and_uses_its_config(tmp_path):
    import yaml

    args, _ = plan(tmp_path)
    assert "birq_stopgrad" not in args.methods  # the default set stays the five methods
    _, jobs = plan(tmp_path, "--methods", "scratch", "birq_stopgrad", "--seeds", "0")
    pre = [j for j in jobs if j.kind == "pretrain"]
    assert [j.name for j in pre] == ["pretrain_birq_stopgrad_seed0"]
    assert option(pre[0], "--ssl_config") == "conf/train_ssl_birq_tiny_stopgrad.yaml"
    assert option(pre[0], "--ssl_exp") == "exp/ssl_birq_stopgrad_seed0"
    demo = cm.DEMO / "conf"
    base = yaml.safe_load((demo / "train_ssl_birq_tiny.yaml").read_text())
    variant = yaml.safe_load((demo / "train_ssl_birq_tiny_stopgrad.yaml").read_text())
    # same encoder, masking, optimiser and budget; only the loss differs
    assert base["loss"][0]["conf"]["stop_gradient_labels"] is False
    assert variant["loss"][0]["conf"]["stop_gradient_labels"] is True
    base.pop("loss"), variant.pop("loss")
    assert variant == base


def test_imported_runs_are_renamed_and_filtered(tmp_path):
    """--import_runs: an earlier report's runs of some methods, renamed, only the seeds and
    budgets asked for (the seeds it lacks come from the work directory); a run imported twice,
    an import that matches nothing or an unknown new name is an error."""
    runs = [dict(budget=b, method=m, seed=s, dev_wer=1.0, dev_cer=1.0, test_wer=1.0, test_cer=1.0)
            for b in (80, 400) for m in ("best_rq", "birq_l1", "mt4ssl") for s in (0, 1, 2)]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(dict(runs=runs)))
    got = cm.read_imported_runs([f"{old}:best_rq=best_rq,birq_l1=birq_stopgrad"], [0, 1], [80])
    assert sorted((r["method"], r["seed"]) for r in got) == [
        ("best_rq", 0), ("best_rq", 1), ("birq_stopgrad", 0), ("birq_stopgrad", 1)]
    assert {r["budget"] for r in got} == {80} and {r["imported_from"] for r in got} == {"old.json"}
    partial = cm.read_imported_runs([f"{old}:best_rq=best_rq"], [0, 1, 2, 3, 4], [80])
    assert sorted(r["seed"] for r in partial) == [0, 1, 2]
    with pytest.raises(cm.CompareError, match="twice"):
        cm.read_imported_runs([f"{old}:best_rq=best_rq", f"{old}:best_rq=best_rq"], [0], [80])
    with pytest.raises(cm.CompareError, match="no run"):
        cm.read_imported_runs([f"{old}:best_rq=best_rq"], [7], [80])
    with pytest.raises(cm.CompareError, match="unknown method"):
        cm.read_imported_runs([f"{old}:mt4ssl=mt4ssl_old"], [0], [80])
    with pytest.raises(SystemExit):
        cm.parse_args(["--import_runs", f"{old}:best_rq=best_rq"])  # only with --report_only
