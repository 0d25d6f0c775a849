"""bench/step_cost.py at its smallest size: it runs and prints the figures it promises."""

import importlib.util
import re

from tests.conftest import REPO


def test_step_cost_prints_ratios_and_verdict(capsys, single_thread):
    spec = importlib.util.spec_from_file_location(
        "step_cost", REPO / "bench" / "step_cost.py"
    )
    step_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_cost)
    step_cost.main(
        ["--size", "debug", "--batch", "2", "--seconds", "1", "--reps", "1",
         "--allocator", "system"]
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


def test_step_cost_reexecs_with_the_retaining_allocator(tmp_path):
    """The script's default measures with freed memory kept in the process."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "step_cost.py"), "--size", "debug",
         "--batch", "1", "--seconds", "0.5", "--reps", "1"],
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
