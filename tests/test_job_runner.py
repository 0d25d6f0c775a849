"""Tests for utils/run.pl and utils/slurm.pl (Kaldi job-runner convention).

slurm.pl is tested with fake sbatch/squeue/sacct/srun scripts put first on
PATH: the fake sbatch records its arguments and runs the submitted script
locally once per array index, as Slurm would on a compute node.
"""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_PL = REPO_ROOT / "utils" / "run.pl"
SLURM_PL = REPO_ROOT / "utils" / "slurm.pl"


def run(args, cwd, env=None, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


# --------------------------------------------------------------------------
# run.pl
# --------------------------------------------------------------------------


def test_job_array_substitutes_job_in_log_and_args(tmp_path):
    result = run([RUN_PL, "JOB=1:3", "exp/log/echo.JOB.log", "echo", "job", "JOB", r"|", "tr", "a-z", "A-Z"], tmp_path)
    assert result.returncode == 0, result.stderr
    for index in (1, 2, 3):
        lines = (tmp_path / f"exp/log/echo.{index}.log").read_text().splitlines()
        assert lines[0] == f"# echo job {index} | tr a-z A-Z"  # header: the command
        assert f"JOB {index}" in lines  # the shell pipe ran
        assert lines[-2].startswith("# Accounting: time=") and lines[-2].endswith("threads=1")
        assert lines[-1].startswith("# Ended (code 0) at ")


def test_arguments_with_spaces_stay_one_argument(tmp_path):
    result = run([RUN_PL, "log", "printf", "[%s]\n", "a b", "it's"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[a b]\n[it's]\n" in (tmp_path / "log").read_text()


def job_intervals(directory, count):
    """(start, end) wall-clock times printed by the jobs of the parallelism test."""
    intervals = []
    for index in range(1, count + 1):
        lines = (directory / f"log/sleep.{index}.log").read_text().splitlines()
        stamps = [float(line) for line in lines if not line.startswith("#")]
        intervals.append((stamps[0], stamps[1]))
    return intervals


def test_jobs_run_in_parallel_up_to_max_jobs_run(tmp_path):
    # Judged from timestamps written by the jobs, not from the total time,
    # so a busy machine does not make the test flaky.
    def command(seconds):
        return ["date", "+%s.%N", "&&", "sleep", seconds, "&&", "date", "+%s.%N"]

    result = run([RUN_PL, "--max-jobs-run", "4", "JOB=1:4", "log/sleep.JOB.log", *command("1")], tmp_path)
    assert result.returncode == 0, result.stderr
    intervals = job_intervals(tmp_path, 4)
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)  # all overlapped
    result = run([RUN_PL, "--max_jobs_run", "1", "JOB=1:3", "log/sleep.JOB.log", *command("0.2")], tmp_path)
    assert result.returncode == 0, result.stderr
    intervals = sorted(job_intervals(tmp_path, 3))
    assert all(earlier[1] <= later[0] for earlier, later in zip(intervals, intervals[1:]))  # one at a time


def test_failing_job_fails_the_call_and_names_its_log(tmp_path):
    result = run([RUN_PL, "JOB=1:3", "log/t.JOB.log", "bash", "-c", "echo running JOB; test JOB -ne 2"], tmp_path)
    assert result.returncode == 1
    assert "1 / 3 jobs failed" in result.stderr
    assert "log/t.2.log" in result.stderr and "log/t.1.log" not in result.stderr
    assert (tmp_path / "log/t.2.log").read_text().splitlines()[-1].startswith("# Ended (code 1) at ")
    assert "running 3" in (tmp_path / "log/t.3.log").read_text()  # other jobs still ran


def test_pipeline_failure_is_not_hidden(tmp_path):
    result = run([RUN_PL, "log", "false", "|", "cat"], tmp_path)
    assert result.returncode == 1


def test_scheduler_options_accepted_and_typos_rejected(tmp_path):
    ok = run([RUN_PL, "--gpu", "1", "--mem", "4G", "--num_threads", "2", "--name", "x", "log", "true"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "threads=2" in (tmp_path / "log").read_text()
    typo = run([RUN_PL, "--gpus", "1", "log", "true"], tmp_path)
    assert typo.returncode == 1 and "unknown option '--gpus'" in typo.stderr
    shared_log = run([RUN_PL, "JOB=1:2", "same.log", "true"], tmp_path)
    assert shared_log.returncode == 1 and "does not contain 'JOB'" in shared_log.stderr


# --------------------------------------------------------------------------
# slurm.pl with a fake Slurm
# --------------------------------------------------------------------------

FAKE_SBATCH = r"""#!/usr/bin/env bash
# Records its arguments, then runs the batch script for every array index.
printf '%s\n' "$@" > "$FAKE_SLURM_DIR/sbatch.args"
array=""
for arg in "$@"; do
  case $arg in --array=*) array=${arg#--array=}; array=${array%%\%*} ;; esac
done
script=${!#}
if [ -n "$array" ]; then
  for ((i=${array%-*}; i<=${array#*-}; i++)); do
    [ "$i" = "${FAKE_SBATCH_SKIP:-}" ] && continue  # simulates a task killed before its footer
    SLURM_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i bash "$script" > /dev/null 2>&1
  done
else
  SLURM_JOB_ID=4242 bash "$script" > /dev/null 2>&1
fi
echo 4242
"""

# The first squeue call shows the job as still queued, later ones as gone.
FAKE_SQUEUE = r"""#!/usr/bin/env bash
echo "$@" >> "$FAKE_SLURM_DIR/squeue.calls"
[ "$(wc -l < "$FAKE_SLURM_DIR/squeue.calls")" -le 1 ] && echo 4242_2
exit 0
"""

FAKE_SACCT = r"""#!/usr/bin/env bash
echo "4242|FAILED|1:0"
echo "4242_${FAKE_SBATCH_SKIP:-0}|TIMEOUT|0:0"
"""

# srun on one node: drop srun's own options and run the command.
FAKE_SRUN = r"""#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
exec env SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_STEP_NUM_NODES=1 SLURM_STEP_NODELIST=node1 SLURM_LOCALID=0 "$@"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "fake_bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "slurm_state"
    state.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SLURM_DIR=str(state),
               SLURM_PL_POLL_SECONDS="0.1", SLURM_PL_LOG_WAIT_SECONDS="0.2")
    work = tmp_path / "recipe"
    work.mkdir()
    return work, env, state


def test_slurm_array_maps_options_and_collects_exit_status(fake_slurm):
    work, env, state = fake_slurm
    result = run([SLURM_PL, "--gpu", "2", "--mem", "8G", "--num-threads", "4", "--max-jobs-run", "2",
                  "JOB=1:3", "exp/log/x.JOB.log", "echo", "task", "JOB"], work, env)
    assert result.returncode == 0, result.stderr
    sbatch_args = (state / "sbatch.args").read_text().splitlines()
    assert "--gres=gpu:2" in sbatch_args
    assert sbatch_args[sbatch_args.index("--mem") + 1] == "8G"
    assert sbatch_args[sbatch_args.index("--cpus-per-task") + 1] == "4"
    assert "--array=1-3%2" in sbatch_args and "--parsable" in sbatch_args
    assert len((state / "squeue.calls").read_text().splitlines()) == 2  # waited while queued
    for index in (1, 2, 3):
        log = (work / f"exp/log/x.{index}.log").read_text().splitlines()
        assert f"task {index}" in log
        assert log[-2].startswith("# Accounting: time=") and log[-2].endswith(" threads=4")
        assert log[-1].startswith("# Ended (code 0) at ")
        assert (work / f"exp/log/q/x.{index}.sh").is_file()  # rerunnable by hand


def test_slurm_failed_and_killed_tasks_are_reported(fake_slurm):
    work, env, _ = fake_slurm
    env = dict(env, FAKE_SBATCH_SKIP="3")
    (work / "exp/log").mkdir(parents=True)
    # A footer left by an earlier successful run must not hide the killed task.
    (work / "exp/log/y.3.log").write_text("# Ended (code 0) at yesterday\n")
    result = run([SLURM_PL, "JOB=1:3", "exp/log/y.JOB.log", "test", "JOB", "-ne", "2"], work, env)
    assert result.returncode == 1
    assert "2 / 3 jobs failed" in result.stderr
    assert "exp/log/y.2.log (exit code 1)" in result.stderr
    assert "exp/log/y.3.log (no exit status in the log; Slurm state TIMEOUT" in result.stderr


def test_slurm_config_file_rules(fake_slurm):
    work, env, state = fake_slurm
    (work / "conf").mkdir()
    (work / "conf/slurm.conf").write_text(textwrap.dedent("""\
        command sbatch --export=PATH
        option gpu=0 -p cpu
        option gpu=* -p gpu --gres=gpu:$0
        default gpu=0
        option hostname=* --nodelist $0   # extra option defined by the config
    """))
    result = run([SLURM_PL, "--hostname", "node7", "log/a.log", "true"], work, env)
    assert result.returncode == 0, result.stderr
    sbatch_args = (state / "sbatch.args").read_text().splitlines()
    assert sbatch_args[0] == "--export=PATH"  # from the 'command' line
    assert sbatch_args[sbatch_args.index("--nodelist") + 1] == "node7"
    assert sbatch_args[sbatch_args.index("-p") + 1] == "cpu"  # 'default gpu=0' applied
    result = run([SLURM_PL, "--gpu", "1", "log/b.log", "true"], work, env)
    sbatch_args = (state / "sbatch.args").read_text().splitlines()
    assert "gpu" == sbatch_args[sbatch_args.index("-p") + 1] and "--gres=gpu:1" in sbatch_args
    assert result.returncode == 0, result.stderr
    no_rule = run([SLURM_PL, "--mem", "1G", "log/c.log", "true"], work, env)
    assert no_rule.returncode == 1 and "no rule for --mem 1G" in no_rule.stderr
    unknown = run([SLURM_PL, "--hostnme", "x", "log/c.log", "true"], work, env)
    assert unknown.returncode == 1 and "unknown option '--hostnme'" in unknown.stderr


# --------------------------------------------------------------------------
# espnet2.bin.launch with our runners
# --------------------------------------------------------------------------

RECORD_ARGS = "import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))"


def launch(work, env, *launch_args, **kwargs):
    return run([sys.executable, "-m", "espnet2.bin.launch", *launch_args, "--",
                sys.executable, "-c", RECORD_ARGS, "trainer_args.txt"], work, env, **kwargs)


def test_espnet_launch_single_node_through_run_pl(tmp_path):
    env = dict(os.environ)
    result = launch(tmp_path, env, "--cmd", str(RUN_PL), "--log", "exp/train.log", "--ngpu", "0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trainer_args.txt").read_text() == "--ngpu 0 --multiprocessing_distributed True"
    assert (tmp_path / "exp/train.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")


def test_espnet_launch_refuses_multi_node_with_run_pl(tmp_path):
    result = launch(tmp_path, dict(os.environ), "--cmd", str(RUN_PL), "--log", "train.log", "--ngpu", "0",
                    "--num_nodes", "2")
    assert result.returncode != 0 and "run.pl doesn't support" in result.stderr


def test_espnet_launch_multi_node_through_slurm_pl(fake_slurm):
    work, env, state = fake_slurm
    result = launch(work, env, "--cmd", f"{SLURM_PL} --name birq", "--log", "exp/train.log", "--ngpu", "0",
                    "--num_nodes", "2", "--init_file_prefix", "exp/.dist_init_")
    assert result.returncode == 0, result.stderr
    sbatch_args = (state / "sbatch.args").read_text().splitlines()
    assert sbatch_args[sbatch_args.index("--nodes") + 1] == "2"
    assert sbatch_args[sbatch_args.index("--ntasks-per-node") + 1] == "1"
    assert sbatch_args[sbatch_args.index("--job-name") + 1] == "birq"
    trainer_args = (work / "trainer_args.txt").read_text()
    assert "--dist_launcher slurm" in trainer_args and "--dist_backend gloo" in trainer_args
    assert f"--dist_init_method file://{work}/exp/.dist_init_" in trainer_args


def test_failed_job_log_tail_is_printed(tmp_path):
    """The cause of a failure is on the console, not only in the log file."""
    result = run([RUN_PL, "JOB=1:2", "log/x.JOB.log", "echo", "cause-of-job-JOB", "&&", "test", "JOB", "=", "1"],
                 tmp_path)
    assert result.returncode == 1
    assert "last" in result.stderr and "log/x.2.log" in result.stderr
    assert "| cause-of-job-2" in result.stderr
    assert "cause-of-job-1" not in result.stderr  # only failed jobs are shown


def test_jobs_die_with_the_recipe_that_started_them(tmp_path):
    """A recipe killed with SIGKILL cannot stop its jobs; the runner notices and does."""
    recipe = subprocess.Popen(["sleep", "60"])
    env = dict(os.environ, RECIPE_PID=str(recipe.pid))
    runner = subprocess.Popen([sys.executable, str(RUN_PL), "log/train.log", "sleep", "30", "&&", "touch", "finished"],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    recipe.kill()
    recipe.wait()
    try:
        _, stderr = runner.communicate(timeout=10)
    finally:
        runner.kill()
    assert runner.returncode != 0
    assert f"the recipe (pid {recipe.pid}) is gone" in stderr
    assert not (tmp_path / "finished").exists()
    log = (tmp_path / "log" / "train.log").read_text()
    assert "killed by SIGTERM" in log or "Ended (code 143)" in log or "Ended" not in log
