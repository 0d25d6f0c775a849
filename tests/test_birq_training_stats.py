"""bench/birq_training_stats.py reads ESPnet's epoch lines and averages runs per epoch."""

import importlib.util
import math

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location(
    "birq_training_stats", REPO / "bench" / "birq_training_stats.py"
)
stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stats)

LOG = """\
[host] 2026-12-05 21:50:00,000 (trainer:300) INFO: 1epoch:train:1-10batch: iter_time=1.0, loss=9.0, best_rq_acc=0.100
[host] 2026-12-05 21:51:00,000 (trainer:338) INFO: 1epoch results: [train] iter_time=1.0, loss=9.000, best_rq_acc={a1}, birq_ppl_e={p1}, birq_codes_e=40.000, birq_label_agreement=1.234e-02, time=1 minute and 2 seconds, total_count=50, gpu_max_cached_mem_GB=0.0, [valid] loss=8.5, best_rq_acc=0.150, birq_ppl_e=20.000, time=3.1 seconds, total_count=50
[host] 2026-12-05 21:52:00,000 (trainer:338) INFO: 2epoch results: [train] best_rq_acc={a2}, birq_ppl_e={p2}, [valid] best_rq_acc=0.200
"""


def write(tmp_path, name, a1, p1, a2, p2):
    path = tmp_path / name
    path.write_text(LOG.format(a1=a1, p1=p1, a2=a2, p2=p2))
    return path


def test_epoch_lines_are_parsed_per_split(tmp_path):
    log = write(tmp_path, "a.log", 0.12, 30.0, 0.2, 25.0)
    epochs = stats.parse_log(log)
    assert sorted(epochs) == [1, 2]
    assert epochs[1]["train"]["best_rq_acc"] == 0.12
    assert epochs[1]["train"]["birq_label_agreement"] == pytest.approx(0.01234)
    assert epochs[1]["valid"]["birq_ppl_e"] == 20.0
    assert "time" not in epochs[1]["train"]  # not a number
    assert epochs[2]["valid"] == {"best_rq_acc": 0.2}


def test_runs_are_averaged_per_epoch(tmp_path, capsys):
    logs = [write(tmp_path, "a.log", 0.1, 30.0, 0.2, 20.0),
            write(tmp_path, "b.log", 0.3, 10.0, 0.4, 40.0)]
    rows = stats.summarise(logs, "train")
    assert rows[0]["runs"] == 2
    assert rows[0]["best_rq_acc"] == pytest.approx(0.2)
    assert rows[0]["best_rq_acc_sd"] == pytest.approx(math.sqrt(0.02))
    assert rows[1]["birq_ppl_e"] == pytest.approx(30.0)
    assert stats.main([str(p) for p in logs] + ["--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "| 2 | 2 | 0.300 ± 0.141" in out
    assert (tmp_path / "o.json").is_file()


def test_a_file_that_is_no_train_log_is_an_error(tmp_path):
    other = tmp_path / "x.log"
    other.write_text("nothing here\n")
    with pytest.raises(ValueError, match="x.log"):
        stats.parse_log(other)
