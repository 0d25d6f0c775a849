"""Shared implementation of ``utils/run.pl`` and ``utils/slurm.pl``.

Both follow the calling convention of Kaldi's job runners::

    run.pl   [options] [JOB=1:N] log/name.JOB.log command args...
    slurm.pl [options] [JOB=1:N] log/name.JOB.log command args...

``JOB`` (any identifier may be used instead) is replaced by the job index in the log
path and in every argument.  The arguments are joined into one bash command line
(:func:`join_command`) run with ``bash -o pipefail -c``, its output appended to the log,
which starts with the command and ends with Kaldi's footer::

    # Accounting: time=SECONDS threads=N
    # Ended (code EXIT_CODE) at DATE

The call exits with status 1 if any job failed, naming the failed jobs' logs and
showing their last lines on stderr.

Why Python with ``.pl`` names: ``espnet2.bin.launch`` decides how to start multi-node
training from the *file name* of ``--cmd`` (``run.pl`` refuses multi-node, ``slurm.pl``
gets an ``srun`` command) and every Kaldi/ESPnet recipe spells these tools
``utils/run.pl``.  Standard library only: the runners work with any ``python3`` >= 3.8.
"""

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

# Options of both runners; slurm.pl also accepts any option its config file names.
COMMON_OPTIONS = ("gpu", "mem", "num_threads", "max_jobs_run", "num_nodes", "time", "name", "config")
FOOTER_RE = re.compile(r"^# Ended \(code (-?\d+)\) at ")
JOB_RANGE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)(?::(\d+))?$")
# Words of only these characters reach bash unquoted, so Kaldi's idiom of passing shell
# operators as separate words keeps working:  run.pl log cmd1 args \| cmd2 args
_SHELL_PLAIN_RE = re.compile(r"[^\s'\"\\]+")
DATE_FORMAT = "%a %b %d %H:%M:%S %Z %Y"
LOG_TAIL_LINES, LOGS_SHOWN, FAILURES_LISTED = 20, 3, 20
# ssl_asr.sh exports its pid as RECIPE_PID: when the recipe dies (even by SIGKILL, which it
# cannot trap) the runner stops its jobs rather than leave them writing into exp/.
WATCH_SECONDS = 1.0


class UsageError(Exception):
    """Bad command line or configuration; reported without a traceback."""


def join_command(args: List[str]) -> str:
    """One bash command line: words without whitespace or quotes stay as they are (shell
    operators work, as in Kaldi's run.pl), others are quoted into one argument each."""
    return " ".join(arg if _SHELL_PLAIN_RE.fullmatch(arg) else shlex.quote(arg) for arg in args)


class JobRequest:
    """A parsed command line: ``[--opt value]... [VAR=a:b] [--opt value]... LOG COMMAND...``.

    Options may come before or after the job range (as with Kaldi's queue.pl), spelt
    ``--num-threads`` or ``--num_threads``.
    """

    def __init__(self, program: str, argv: List[str]):
        self.options: Dict[str, str] = {}
        self.job_variable: Optional[str] = None
        self.indices: List[Optional[int]] = [None]
        args = list(argv)
        while args and (args[0].startswith("--") or (JOB_RANGE_RE.match(args[0]) and self.job_variable is None)):
            head = args.pop(0)
            if head.startswith("--"):
                name, has_value, value = head[2:].partition("=")
                if not has_value:
                    if not args:
                        raise UsageError(f"option '{head}' needs a value")
                    value = args.pop(0)
                self.options[name.replace("-", "_")] = value
                continue
            variable, first, last = JOB_RANGE_RE.match(head).groups()
            self.job_variable, self.indices, job_range = variable, list(range(int(first), int(last or first) + 1)), head
            if not self.indices:
                raise UsageError(f"empty job range '{head}'")
        if len(args) < 2:
            raise UsageError("expected a log file and a command after the options\n"
                             f"usage: {program} [options] [JOB=1:N] log/name.JOB.log command args...")
        self.log_template, self.command_args = args[0], args[1:]
        if len(self.indices) > 1 and self.job_variable not in self.log_template:
            raise UsageError(f"running jobs {job_range} in parallel but the log file '{self.log_template}' does not "
                             f"contain '{self.job_variable}', so all jobs would write the same log")

    def substitute(self, text: str, index: Optional[int]) -> str:
        """``text`` with the job variable replaced by ``index`` everywhere (Kaldi semantics)."""
        return text if index is None else text.replace(self.job_variable, str(index))

    def log_path(self, index: Optional[int]) -> str:
        return self.substitute(self.log_template, index)

    def command(self, index: Optional[int]) -> str:
        return join_command([self.substitute(arg, index) for arg in self.command_args])

    def int_option(self, name: str, default: int) -> int:
        value = self.options.get(name, str(default))
        if not value.isdigit():
            raise UsageError(f"--{name} expects a non-negative integer, got '{value}'")
        return int(value)

    def check_option_names(self, accepted) -> None:
        """Reject options the runner does not know, so a typo never goes unnoticed."""
        for name in self.options:
            if name not in accepted:
                raise UsageError(f"unknown option '--{name}' (accepted: "
                                 + ", ".join("--" + o for o in sorted(accepted)) + ")")


def read_log(path: str) -> List[str]:
    return Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()


def read_exit_code(log_path: str) -> Optional[int]:
    """Exit code recorded in the footer of a job log, or None if the log has no footer."""
    try:
        codes = [int(m.group(1)) for m in map(FOOTER_RE.match, read_log(log_path)) if m]
    except FileNotFoundError:
        return None
    return codes[-1] if codes else None


def describe_exit_code(code: int) -> str:
    if code > 128 and code - 128 in signal.valid_signals():
        return f"exit code {code}, killed by {signal.Signals(code - 128).name}"
    return f"exit code {code}"


def say(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def report_failures(program: str, request: JobRequest, failures: List[Tuple[Optional[int], str]]) -> None:
    """Name the failed jobs' logs (at most 20) and print the last lines of the first ones."""
    if request.job_variable is None:
        say(f"{program}: job failed ({failures[0][1]}), log is in {request.log_path(None)}")
    else:
        shown, more = failures[:FAILURES_LISTED], len(failures) - FAILURES_LISTED
        say(f"{program}: {len(failures)} / {len(request.indices)} jobs failed ({request.job_variable}="
            + ",".join(str(i) for i, _ in shown) + (",...):" if more > 0 else "):"),
            *[f"{program}:   {request.log_path(index)} ({reason})" for index, reason in shown],
            *([f"{program}:   ... and {more} more"] if more > 0 else []))
    for index, _ in failures[:LOGS_SHOWN]:  # the cause is usually at the end of the log
        try:
            lines = [line for line in read_log(request.log_path(index))
                     if not line.startswith(("# Ended (code", "# Accounting:"))]
        except OSError:
            continue
        say(f"{program}: ---- last {min(LOG_TAIL_LINES, len(lines))} lines of {request.log_path(index)} ----",
            *[f"{program}: | {line}" for line in lines[-LOG_TAIL_LINES:]])
    if len(failures) > LOGS_SHOWN:
        say(f"{program}: (logs of {len(failures) - LOGS_SHOWN} more failed jobs not shown)")


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as stat:  # a zombie (dead, not yet reaped) counts as dead
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except ProcessLookupError:
        return False
    except (OSError, IndexError):  # not ours to signal, or no /proc: alive
        return True


def watch_recipe(stop) -> None:
    """Call ``stop(signal.SIGTERM, None)`` once the recipe (RECIPE_PID) or our parent is gone."""
    value = os.environ.get("RECIPE_PID", "")
    recipe_pid, parent = (int(value) if value.isdigit() else None), os.getppid()

    def loop():
        while os.getppid() == parent and (recipe_pid is None or process_is_alive(recipe_pid)):
            time.sleep(WATCH_SECONDS)
        say(f"the recipe (pid {recipe_pid or parent}) is gone; stopping its jobs")
        stop(signal.SIGTERM, None)

    threading.Thread(target=loop, daemon=True).start()


class LocalRunner:
    """run.pl: the jobs as local processes, at most ``--max_jobs_run`` at a time."""

    program = "run.pl"

    def __init__(self, request: JobRequest):
        request.check_option_names(COMMON_OPTIONS)
        if request.int_option("num_nodes", 1) > 1:
            raise UsageError(f"--num_nodes {request.options['num_nodes']}: run.pl runs everything on this machine; "
                             "use slurm.pl")
        self.request, self.threads = request, request.int_option("num_threads", 1)
        self.max_parallel = request.int_option("max_jobs_run", os.cpu_count() or 1) or 1
        self._live: Dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def run_one(self, index: Optional[int]) -> int:
        log_path, command = self.request.log_path(index), self.request.command(index)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"# {command}\n# Started at {time.strftime(DATE_FORMAT)} on {socket.gethostname()}\n#\n")
            log.flush()
            start = time.time()
            with self._lock:
                if self._stopping:
                    return 1
                # Own process group: stopping run.pl stops the whole pipeline of a job.
                process = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
                self._live[process.pid] = process
            code = process.wait()
            with self._lock:
                self._live.pop(process.pid, None)
            code = 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
            log.write(f"# Accounting: time={int(time.time() - start)} threads={self.threads}\n"
                      f"# Ended (code {code}) at {time.strftime(DATE_FORMAT)}\n")
        return code

    def stop(self, signum, _frame) -> None:
        with self._lock:
            self._stopping = True
            for process in self._live.values():
                with contextlib.suppress(ProcessLookupError):  # the job has just ended
                    os.killpg(process.pid, signal.SIGTERM)
        say(f"{self.program}: stopped by {signal.Signals(signum).name}; running jobs were terminated")
        os._exit(128 + signum)

    def run(self) -> List[Tuple[Optional[int], str]]:
        """The failed jobs: ``[(index, why)]``."""
        indices = self.request.indices
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(indices))) as pool:
            codes = list(pool.map(self.run_one, indices))
        return [(i, describe_exit_code(c)) for i, c in zip(indices, codes) if c != 0]


# slurm.pl's rules, in the syntax of Kaldi's conf/slurm.conf:
#   command <submit command>           the sbatch call (without options below)
#   option NAME=VALUE <sbatch args>    used when --NAME VALUE is given
#   option NAME=* <sbatch args>        any other value; $0 is replaced by it
#   default NAME=VALUE                 value used when --NAME is not given
DEFAULT_SLURM_CONFIG = """\
command sbatch --export=ALL
option name=* --job-name $0
option time=* --time $0
option mem=* --mem $0
option num_threads=* --cpus-per-task $0
option num_nodes=1
option num_nodes=* --nodes $0 --ntasks-per-node 1
option gpu=0
option gpu=* --gres=gpu:$0
"""


class SlurmConfig:
    """The rules of a Kaldi-style slurm.conf: ``rules[(name, value or "*")]`` -> sbatch args."""

    def __init__(self, text: str, origin: str):
        self.submit_command: List[str] = []
        self.rules: Dict[Tuple[str, str], List[str]] = {}
        self.defaults: Dict[str, str] = {}
        for line_number, raw_line in enumerate(text.splitlines(), start=1):
            where = f"{origin}:{line_number}"
            try:
                words = shlex.split(raw_line.split("#", 1)[0])
            except ValueError as error:
                raise UsageError(f"{where}: cannot parse '{raw_line}': {error}") from None
            if words[:1] == ["command"] and len(words) > 1:
                self.submit_command = words[1:]
            elif words[:1] in (["option"], ["default"]) and len(words) > 1 and "=" in words[1]:
                name, _, value = words[1].partition("=")
                if words[0] == "default":
                    self.defaults[name.replace("-", "_")] = value
                else:
                    self.rules[(name.replace("-", "_"), value)] = words[2:]
            elif words:
                raise UsageError(f"{where}: expected 'command ...', 'option NAME=VALUE args...' or "
                                 f"'default NAME=VALUE', got '{raw_line}'")
        if not self.submit_command:
            raise UsageError(f"{origin}: no 'command' line (e.g. 'command sbatch --export=ALL')")

    @classmethod
    def load(cls, path: Optional[str]) -> "SlurmConfig":
        """--config FILE, else conf/slurm.conf if the recipe has one, else the built-in rules."""
        path = path or ("conf/slurm.conf" if Path("conf/slurm.conf").is_file() else None)
        if path is None:
            return cls(DEFAULT_SLURM_CONFIG, "<built-in slurm config>")
        try:
            return cls(Path(path).read_text(encoding="utf-8"), path)
        except OSError as error:
            raise UsageError(f"cannot read config file {path}: {error}") from None

    @property
    def option_names(self):
        return {name for name, _ in self.rules} | set(self.defaults)

    def sbatch_args(self, options: Dict[str, str]) -> List[str]:
        args: List[str] = []
        for name in sorted((self.option_names | set(options)) - {"config", "max_jobs_run"}):  # slurm.pl's own
            value = options.get(name, self.defaults.get(name))
            rule = self.rules.get((name, value), self.rules.get((name, "*")))
            if value is not None and rule is None:
                raise UsageError(f"the Slurm config has no rule for --{name} {value}")
            args += [word.replace("$0", value) for word in rule] if value is not None else []
        return args


class SlurmRunner:
    """slurm.pl: the jobs as one ``sbatch`` (array) job, waited for.

    Each job gets a script ``<logdir>/q/<name>.<index>.sh`` (rerunnable by hand with bash);
    an array job runs the one of ``$SLURM_ARRAY_TASK_ID``.  Once the job has left the queue,
    each exit status is read from its log's footer; a log without one (time limit, OOM,
    node failure, scancel) counts as failed and ``sacct``'s state is shown.  Slurm's own
    messages go to ``<logdir>/q/<name>.<index>.log``.

    Environment: SLURM_PL_POLL_SECONDS (default 30) between squeue calls;
    SLURM_PL_LOG_WAIT_SECONDS (default 60) to wait for log footers on a shared file system.
    """

    program = "slurm.pl"

    def __init__(self, request: JobRequest):
        self.config = SlurmConfig.load(request.options.get("config"))
        # The config may define extra options (Kaldi convention): checked after loading it.
        request.check_option_names(set(COMMON_OPTIONS) | self.config.option_names)
        if shutil.which(self.config.submit_command[0]) is None:
            raise UsageError(f"'{self.config.submit_command[0]}' not found on PATH (is this a Slurm login node?)")
        self.request, self.threads = request, request.int_option("num_threads", 1)
        self.max_parallel = request.int_option("max_jobs_run", 0)
        self.poll_seconds = float(os.environ.get("SLURM_PL_POLL_SECONDS", "30"))
        self.log_wait_seconds = float(os.environ.get("SLURM_PL_LOG_WAIT_SECONDS", "60"))
        self.array = len(request.indices) > 1
        self.job_id: Optional[str] = None

    def q_file(self, suffix: str, index: Optional[int] = None, absolute: bool = True) -> str:
        """``<logdir>/q/<name><suffix>`` (e.g. exp/log/x.JOB.log -> exp/log/q/x.JOB.sh)."""
        directory, name = os.path.split(self.request.log_template)
        stem = name[: -len(".log")] if name.endswith(".log") else name
        path = self.request.substitute(os.path.join(directory, "q", stem + suffix), index)
        return os.path.join(os.getcwd(), path) if absolute else path

    def write_task_script(self, index: Optional[int]) -> None:
        log_path, command = os.path.abspath(self.request.log_path(index)), self.request.command(index)
        script = Path(self.q_file(".sh", index))
        script.parent.mkdir(parents=True, exist_ok=True)
        # The log is truncated at submission: an earlier run's footer must never pass for this run's.
        Path(log_path).write_text(f"# {command}\n# Queued at {time.strftime(DATE_FORMAT)}\n", encoding="utf-8")
        q = shlex.quote
        script.write_text(
            f"#!/usr/bin/env bash\n# Generated by slurm.pl; rerun this job by hand with: bash {q(str(script))}\n"
            f"cd {q(os.getcwd())} || exit 1\nlog={q(log_path)}\n"
            f"echo \"# Started at $(date '+{DATE_FORMAT}') on $(hostname)"
            " (Slurm job ${SLURM_JOB_ID:-none})\" >> \"$log\"\n"
            f"echo '#' >> \"$log\"\nstart=$SECONDS\nbash -o pipefail -c {q(command)} >> \"$log\" 2>&1\ncode=$?\n"
            f"printf '# Accounting: time=%d threads=%d\\n# Ended (code %d) at %s\\n' "
            f"$((SECONDS - start)) {self.threads} \"$code\" \"$(date '+{DATE_FORMAT}')\" >> \"$log\"\n"
            "exit \"$code\"\n", encoding="utf-8")
        script.chmod(0o755)

    def submit(self) -> str:
        request = self.request
        for index in request.indices:
            self.write_task_script(index)
        submit = self.config.submit_command + self.config.sbatch_args(request.options) + ["--parsable"]
        output = self.q_file(".log", absolute=False).replace("%", "%%")  # '%': a pattern character of sbatch
        script = self.q_file(".sh", request.indices[0])
        if self.array:  # a dispatcher to the task's script; only the template (not the cwd) holds the variable
            output = output.replace(request.job_variable, "%a")
            template = self.q_file(".sh", absolute=False)
            target = '"${SLURM_ARRAY_TASK_ID}"'.join(shlex.quote(p) for p in template.split(request.job_variable))
            target = target if os.path.isabs(template) else shlex.quote(os.getcwd() + os.sep) + target
            script = self.q_file(".array.sh")
            Path(script).write_text(f"#!/usr/bin/env bash\n# Generated by slurm.pl: runs the script of this array "
                                    f"task.\nexec bash {target}\n", encoding="utf-8")
            throttle = f"%{self.max_parallel}" if self.max_parallel else ""
            submit.append(f"--array={request.indices[0]}-{request.indices[-1]}{throttle}")
        submit += [f"--output={os.path.join(os.getcwd().replace('%', '%%'), output)}", script]
        result = subprocess.run(submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise UsageError(f"submission failed (exit code {result.returncode}): {join_command(submit)}\n"
                             + result.stderr.strip())
        job_id = result.stdout.strip().split(";")[0]  # --parsable prints "jobid" or "jobid;cluster"
        if not job_id.isdigit():
            raise UsageError(f"could not read the job id from sbatch output '{result.stdout.strip()}'")
        say(f"{self.program}: submitted Slurm job {job_id}: {join_command(submit)}")
        return job_id

    def job_in_queue(self) -> bool:
        result = subprocess.run(["squeue", "--noheader", "--jobs", self.job_id, "--format=%i"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode == 0 or "Invalid job id" in result.stderr:  # long finished: purged
            return result.returncode == 0 and bool(result.stdout.strip())
        # The controller may be briefly unreachable: keep waiting rather than call the jobs finished.
        say(f"{self.program}: squeue failed, retrying: {result.stderr.strip()}")
        return True

    def slurm_states(self) -> Dict[str, str]:
        """'JOBID' or 'JOBID_INDEX' -> 'Slurm state STATE, exit X:Y' from sacct (empty if unavailable)."""
        try:
            result = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", self.job_id,
                                     "--format=JobID,State,ExitCode"], stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            return {}
        rows = [line.split("|") for line in result.stdout.splitlines()]
        return {row[0]: f"Slurm state {row[1]}, exit {row[2]}" for row in rows if len(row) >= 3}

    def stop(self, signum, _frame) -> None:
        if self.job_id is not None:
            subprocess.run(["scancel", self.job_id])
            say(f"{self.program}: stopped by {signal.Signals(signum).name}; cancelled Slurm job {self.job_id}")
        os._exit(128 + signum)

    def run(self) -> List[Tuple[Optional[int], str]]:
        self.job_id = self.submit()
        while self.job_in_queue():
            time.sleep(self.poll_seconds)
        codes = {i: read_exit_code(self.request.log_path(i)) for i in self.request.indices}
        deadline = time.time() + self.log_wait_seconds
        while None in codes.values() and time.time() < deadline:
            time.sleep(min(2.0, self.log_wait_seconds))
            codes = {i: read_exit_code(self.request.log_path(i)) if c is None else c for i, c in codes.items()}
        states = self.slurm_states() if None in codes.values() else {}
        return [(i, describe_exit_code(c) if c is not None else "no exit status in the log; " + states.get(
            f"{self.job_id}_{i}" if self.array else self.job_id, "Slurm state unknown"))
            for i, c in codes.items() if c != 0]


def main(runner_name: str, argv: Optional[List[str]] = None) -> int:
    program = f"{runner_name}.pl"
    try:
        request = JobRequest(program, sys.argv[1:] if argv is None else argv)
        runner = LocalRunner(request) if runner_name == "run" else SlurmRunner(request)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, runner.stop)
        watch_recipe(runner.stop)  # the recipe's death stops the jobs, too
        failures = runner.run()
    except UsageError as error:
        say(f"{program}: error: {error}")
        return 1
    if failures:
        report_failures(program, request, failures)
    return 1 if failures else 0
