"""The bench scripts at their smallest sizes: they run and print the figures they promise."""

import importlib.util
import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_step_cost_prints_ratios_and_verdict(capsys, single_thread):
    spec = importlib.util.spec_from_file_location(
        "step_cost", REPO / "bench" / "step_cost.py"
    )
    step_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cost)
    step_cost.main(
        ["--size", "debug", "--batch", "2", "--seconds", "1", "--reps", "1",
         "--allocator", "system", "--guard_steps", "1", "--guard_reps", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    for variant in ("best_rq", "birq", "birq_sg", "prefix", "mt4ssl"):
        assert re.search(rf"^{variant}\s+\d+\.\d{{3}}", out, re.M), out
    r_min = float(re.search(r"r_min = 1 \+ prefix/best_rq = (\d+\.\d+)", out)[1])
    assert r_min > 1.0
    assert re.search(r"birq/best_rq\s+= \d+\.\d{3}", out)
    assert re.search(r"mt4ssl/best_rq\s+= \d+\.\d{3}", out)
    assert re.search(r"target birq/best_rq <= r_min \+ 0.05 = [\d.]+: (MET|MISSED)", out)
    assert re.search(r"per-repetition .*: median [+-]\d\.\d{3}, quartiles", out)
    assert re.search(r"^best_rq .* \d+$", out, re.M)  # page faults per step
    # the guards' cost: plain against guarded ESPnet training steps, and their own work
    for model in ("birq", "mt4ssl"):
        assert re.search(
            rf"^guard {model}\s+plain \d+\.\d{{3}} s  guarded \d+\.\d{{3}} s  guarded/plain = "
            r"\d+\.\d{3}  guard work \d+\.\d\d ms/update = \d\.\d{4} of a plain step$", out, re.M), out


def test_step_cost_reexecs_with_the_retaining_allocator(tmp_path):
    """The script's default measures with freed memory kept in the process."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "step_cost.py"), "--size", "debug",
         "--batch", "1", "--seconds", "0.5", "--reps", "1", "--guard_models", "none"],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                          "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "allocator=retain" in result.stdout, result.stdout


def test_label_path_cost_prints_ratios(capsys):
    spec = importlib.util.spec_from_file_location(
        "label_path_cost", REPO / "bench" / "label_path_cost.py"
    )
    label_path_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(label_path_cost)
    label_path_cost.main(["--frames", "20", "--dim", "8", "--codes", "32", "--reps", "2"])
    out = capsys.readouterr().out
    for name in ("head", "plain", "fused"):
        assert re.search(rf"^{name}\s+median\s+\d+\.\d ms", out, re.M), out
    for ratio in ("plain/head", "fused/head", "fused/plain"):
        assert re.search(rf"^{ratio} = \d+\.\d\d$", out, re.M), out


def run_gpu_check(tmp_path, *extra):
    """bench/gpu_check.sh at its CPU toy size, as a user runs it."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    result = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--device", "cpu",
         "--out_dir", str(tmp_path / "out"), *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_gpu_check_runs_on_cpu_at_toy_size(tmp_path):
    """The GPU check's whole path (task, ESPnet's loop, FLOP count, estimate, report) on a
    toy model, so that it cannot rot between the runs on a GPU."""
    import json

    result = run_gpu_check(tmp_path)
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    methods = {r["method"]: r for r in summary["methods"]}
    assert sorted(methods) == ["best_rq", "birq"]
    for r in methods.values():
        assert "error" not in r, r
        assert r["batch"] == 2 and r["step_s"] > 0 and r["utt_per_s"] > 0
        assert (r["micro_batch"], r["accum_grad"], r["out_of_memory_at"]) == (2, 1, [])
        assert r["flops_per_step"] > 0 and r["gpu_hours"] > 0
        assert r["config"].endswith(f"train_ssl_{r['method']}_c2.yaml")
    assert methods["birq"]["params"] > methods["best_rq"]["params"]  # the enhanced head
    assert summary["birq_over_best_rq"] > 0
    assert summary["ddp_reason"] == "0 GPU(s), needs 2"
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| birq |" in text and "| best_rq |" in text and "BiRQ / BEST-RQ update time" in text
    assert text in result.stdout


def test_gpu_check_ddp_smoke_runs_on_cpu(tmp_path):
    """The 2-process DDP path (gloo on the CPU), which a one-GPU machine never takes."""
    import json

    # a missing config falls back to the C2 shape on the shipped conformer config
    run_gpu_check(tmp_path, "--ddp", "on", "--methods", "birq", "--flops", "off",
                  "--birq_config", str(tmp_path / "missing.yaml"))
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert summary["methods"][0]["config"].endswith("train_ssl_birq_conformer.yaml (C2 shape: config missing)")
    ddp = summary["ddp"]
    assert ddp["returncode"] == 0 and ddp["processes"] == 2 and ddp["parameters_in_sync"], ddp


def test_gpu_check_peak_table():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_check.peak_tflops("NVIDIA H200") == 989
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("NVIDIA H100 NVL") is None
    assert gpu_check.peak_tflops("NVIDIA L4") is None


def test_gpu_check_falls_back_to_gradient_accumulation_when_out_of_memory(monkeypatch, single_thread, tmp_path):
    """64 utterances of 15 s may not fit one GPU: the update is then made of smaller
    micro-batches (ESPnet's accum_grad), the largest that fits; simulated here."""
    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    real = gpu_check.train_steps
    seen = []

    def limited(model, optimizers, schedulers, targs, batch, steps, *rest):
        seen.append((len(batch["speech"]), targs.accum_grad, steps))
        if len(batch["speech"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, optimizers, schedulers, targs, batch, steps, *rest)

    monkeypatch.setattr(gpu_check, "train_steps", limited)
    args = gpu_check.parse_args(["--device", "cpu", "--batch", "8", "--methods", "best_rq",
                                 "--out_dir", str(tmp_path)])
    assert gpu_check.micro_batches(args) == [8, 4, 2, 1]
    work = tmp_path / "work"
    work.mkdir()
    result = gpu_check.measure("best_rq", args, torch.device("cpu"), work)
    assert seen == [(8, 1, 3), (4, 2, 6), (2, 4, 12)]  # (warm-up + timed updates) x accum
    assert result["out_of_memory_at"] == [8, 4]
    assert result["micro_batch"] == 2 and result["accum_grad"] == 4
    assert result["step_s"] > 0 and result["utt_per_s"] == 8 / result["step_s"]


def test_data_loading_prints_rates_and_cores(tmp_path):
    """bench/data_loading.py at a toy size: every stage's rate, and the cores per step time."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "data_loading.py"), "--num_utts", "3", "--seconds", "1.5",
         "--step_seconds", "0.5", "1", "--work_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for stage in ("extract_fbank", "read_fbank", "read_raw", "frontend_cpu"):
        rate = float(rows[stage].split("|")[3])
        assert rate > 0, rows[stage]
    assert "0.5" in rows and "1" in rows  # one row per planned step time
    assert len((tmp_path / "fbank" / "feats.1.scp").read_text().splitlines()) == 3
