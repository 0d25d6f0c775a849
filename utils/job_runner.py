"""Shared implementation of ``utils/run.pl`` and ``utils/slurm.pl``.

Both scripts follow the calling convention of Kaldi's job runners::

    run.pl   [options] [JOB=1:N] log/name.JOB.log command args...
    slurm.pl [options] [JOB=1:N] log/name.JOB.log command args...

``JOB`` (any upper/lower-case identifier may be used instead) is replaced by the
job index in the log path and in every argument of the command.  The command
arguments are joined into one bash command line (see ``join_command``) and run
with ``bash -o pipefail -c``, its stdout and stderr appended to the log.  Every
log starts with a header (the command, start time, host) and ends with the
Kaldi-style footer::

    # Accounting: time=SECONDS threads=N
    # Ended (code EXIT_CODE) at DATE

The call exits with status 1 if any job failed and names the failed jobs'
logs on stderr.

Why Python with ``.pl`` names: ``espnet2.bin.launch`` decides how to start
multi-node training from the *file name* of ``--cmd`` (``run.pl`` refuses
multi-node, ``slurm.pl`` gets an ``srun`` command) and every Kaldi/ESPnet recipe
spells these tools ``utils/run.pl``.  The names are therefore part of the
interface; the language is not.  This module uses only the standard library so
the runners work with any ``python3`` >= 3.8, inside or outside the venv.
"""

import dataclasses
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

# Options shared by both runners; slurm.pl additionally accepts any option
# named in its config file.  Values are kept as strings (as given).
COMMON_OPTIONS = ("gpu", "mem", "num_threads", "max_jobs_run", "num_nodes", "time", "name", "config")

FOOTER_RE = re.compile(r"^# Ended \(code (-?\d+)\) at ")
JOB_RANGE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+)(?::(\d+))?$")
# Arguments made only of these characters are passed to bash unquoted; this
# keeps Kaldi's idiom of passing shell operators as separate words working,
# e.g.  run.pl log cmd1 args \| cmd2 args  or  ... \> out.txt
_SHELL_PLAIN_RE = re.compile(r"[^\s'\"\\]+")

DATE_FORMAT = "%a %b %d %H:%M:%S %Z %Y"


class UsageError(Exception):
    """Bad command line or configuration; reported without a traceback."""


@dataclasses.dataclass
class JobRequest:
    """A parsed runner command line."""

    options: Dict[str, str]
    job_variable: Optional[str]  # e.g. "JOB"; None for a single job
    first_index: int
    last_index: int
    log_template: str
    command_args: List[str]

    @property
    def indices(self) -> List[Optional[int]]:
        if self.job_variable is None:
            return [None]
        return list(range(self.first_index, self.last_index + 1))

    def substitute(self, text: str, index: Optional[int]) -> str:
        """Replace the job variable by ``index`` everywhere in ``text`` (Kaldi semantics)."""
        if self.job_variable is None or index is None:
            return text
        return text.replace(self.job_variable, str(index))

    def log_path(self, index: Optional[int]) -> str:
        return self.substitute(self.log_template, index)

    def command(self, index: Optional[int]) -> str:
        return join_command([self.substitute(arg, index) for arg in self.command_args])

    def int_option(self, name: str, default: int) -> int:
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise UsageError(f"--{name} expects an integer, got '{value}'") from None
        if number < 0:
            raise UsageError(f"--{name} must not be negative, got {number}")
        return number


def join_command(args: List[str]) -> str:
    """Join arguments into one bash command line.

    Words without whitespace or quote characters are kept as they are, so the
    shell still interprets operators (``|``, ``>``, ``&&``) and variables the
    caller escaped on purpose, exactly as Kaldi's run.pl does.  Words with
    whitespace or quotes are single-quoted so they reach the program as one
    argument, e.g. ``"ark:gunzip -c a.gz |"``.
    """
    words = []
    for arg in args:
        if _SHELL_PLAIN_RE.fullmatch(arg):
            words.append(arg)
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def parse_command_line(program: str, argv: List[str]) -> JobRequest:
    """Parse ``[--opt value]... [VAR=a:b] [--opt value]... LOG COMMAND...``.

    Options may appear before or after the job range, as with Kaldi's queue.pl.
    Both ``--num-threads`` and ``--num_threads`` spellings are accepted.
    """
    options: Dict[str, str] = {}
    job_variable, first, last = None, 1, 1
    args = list(argv)
    while args:
        head = args[0]
        if head.startswith("--"):
            name, has_inline_value, inline_value = head[2:].partition("=")
            name = name.replace("-", "_")
            if has_inline_value:
                options[name] = inline_value
                args = args[1:]
            else:
                if len(args) < 2:
                    raise UsageError(f"option '{head}' needs a value")
                options[name] = args[1]
                args = args[2:]
            continue
        match = JOB_RANGE_RE.match(head)
        if match and job_variable is None:
            job_variable = match.group(1)
            first = int(match.group(2))
            last = int(match.group(3)) if match.group(3) is not None else first
            if last < first:
                raise UsageError(f"empty job range '{head}'")
            args = args[1:]
            continue
        break
    if len(args) < 2:
        raise UsageError(
            "expected a log file and a command after the options\n"
            f"usage: {program} [options] [JOB=1:N] log/name.JOB.log command args..."
        )
    log_template, command_args = args[0], args[1:]
    if job_variable is not None and last > first and job_variable not in log_template:
        raise UsageError(
            f"running jobs {job_variable}={first}:{last} in parallel but the log file "
            f"'{log_template}' does not contain '{job_variable}', so all jobs would "
            "write the same log"
        )
    return JobRequest(options, job_variable, first, last, log_template, command_args)


def check_option_names(request: JobRequest, accepted_options) -> None:
    """Reject options the runner does not know, so a typo never goes unnoticed."""
    for name in request.options:
        if name not in accepted_options:
            raise UsageError(
                f"unknown option '--{name}' (accepted: "
                + ", ".join("--" + o for o in sorted(accepted_options)) + ")"
            )


def read_exit_code(log_path: str) -> Optional[int]:
    """Exit code recorded in the footer of a job log, or None if the log has no footer."""
    try:
        with open(log_path, "rb") as log:
            lines = log.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        match = FOOTER_RE.match(line)
        if match:
            return int(match.group(1))
    return None


def header_text(command: str, host: str) -> str:
    return f"# {command}\n# Started at {time.strftime(DATE_FORMAT)} on {host}\n#\n"


def footer_text(seconds: int, threads: int, code: int) -> str:
    return (
        f"# Accounting: time={seconds} threads={threads}\n"
        f"# Ended (code {code}) at {time.strftime(DATE_FORMAT)}\n"
    )


def report_failures(program: str, request: JobRequest, failures: List[Tuple[Optional[int], str]]) -> None:
    """Print which jobs failed and where their logs are (at most 20 listed)."""
    total = len(request.indices)
    if request.job_variable is None:
        index, reason = failures[0]
        print(f"{program}: job failed ({reason}), log is in {request.log_path(index)}", file=sys.stderr)
        print_log_tails(program, [request.log_path(index)])
        return
    shown = failures[:20]
    print(
        f"{program}: {len(failures)} / {total} jobs failed "
        f"({request.job_variable}=" + ",".join(str(i) for i, _ in shown)
        + (",..." if len(failures) > len(shown) else "") + "):",
        file=sys.stderr,
    )
    for index, reason in shown:
        print(f"{program}:   {request.log_path(index)} ({reason})", file=sys.stderr)
    if len(failures) > len(shown):
        print(f"{program}:   ... and {len(failures) - len(shown)} more", file=sys.stderr)
    print_log_tails(program, [request.log_path(index) for index, _ in failures])


LOG_TAIL_LINES = 20
LOGS_SHOWN = 3


def print_log_tails(program: str, log_paths: List[str]) -> None:
    """Print the last lines of failed jobs' logs: the cause is usually there."""
    for path in log_paths[:LOGS_SHOWN]:
        try:
            with open(path, "rb") as log:
                lines = log.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            continue
        lines = [line for line in lines if not FOOTER_RE.match(line) and not line.startswith("# Accounting:")]
        print(f"{program}: ---- last {min(LOG_TAIL_LINES, len(lines))} lines of {path} ----", file=sys.stderr)
        for line in lines[-LOG_TAIL_LINES:]:
            print(f"{program}: | {line}", file=sys.stderr)
    if len(log_paths) > LOGS_SHOWN:
        print(f"{program}: (logs of {len(log_paths) - LOGS_SHOWN} more failed jobs not shown)", file=sys.stderr)


# The recipe exports its pid as RECIPE_PID: when the recipe dies (even by
# SIGKILL, which it cannot trap), the runner stops its jobs instead of leaving
# them running unsupervised, e.g. a trainer writing into an experiment
# directory that a re-run of the recipe is about to use.
RECIPE_PID_VARIABLE = "RECIPE_PID"
WATCH_SECONDS = 1.0


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def watch_recipe(stop) -> None:
    """Call ``stop(signal.SIGTERM, None)`` once the recipe (RECIPE_PID) or our parent is gone."""
    value = os.environ.get(RECIPE_PID_VARIABLE, "")
    recipe_pid = int(value) if value.isdigit() else None
    parent = os.getppid()

    def loop():
        while True:
            time.sleep(WATCH_SECONDS)
            gone = os.getppid() != parent or (recipe_pid is not None and not process_is_alive(recipe_pid))
            if gone:
                print(f"the recipe (pid {recipe_pid or parent}) is gone; stopping its jobs", file=sys.stderr)
                stop(signal.SIGTERM, None)
                return

    threading.Thread(target=loop, daemon=True).start()


def describe_exit_code(code: int) -> str:
    if code > 128:
        try:
            return f"exit code {code}, killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit code {code}"


# --------------------------------------------------------------------------
# Local runner (run.pl)
# --------------------------------------------------------------------------


class LocalRunner:
    """Runs the jobs as local processes, at most ``--max_jobs_run`` at a time."""

    program = "run.pl"
    accepted_options = frozenset(COMMON_OPTIONS)

    def __init__(self, request: JobRequest):
        self.request = request
        self.threads = request.int_option("num_threads", 1)
        num_nodes = request.int_option("num_nodes", 1)
        if num_nodes > 1:
            raise UsageError(f"--num_nodes {num_nodes}: run.pl runs everything on this machine; use slurm.pl")
        self.max_parallel = request.int_option("max_jobs_run", os.cpu_count() or 1) or 1
        self.host = socket.gethostname()
        self._live: Dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def run_one(self, index: Optional[int]) -> int:
        log_path = self.request.log_path(index)
        command = self.request.command(index)
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(header_text(command, self.host))
            log.flush()
            start = time.time()
            with self._lock:
                if self._stopping:
                    return 1
                # Own process group so that stopping run.pl stops the whole
                # pipeline a job started, not only its bash.
                process = subprocess.Popen(
                    ["bash", "-o", "pipefail", "-c", command],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
                self._live[process.pid] = process
            code = process.wait()
            with self._lock:
                self._live.pop(process.pid, None)
            if code < 0:  # killed by a signal: report it the way a shell would
                code = 128 - code
            log.write(footer_text(int(time.time() - start), self.threads, code))
        return code

    def stop_all(self, signum, _frame) -> None:
        with self._lock:
            self._stopping = True
            for process in self._live.values():
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        print(f"{self.program}: stopped by {signal.Signals(signum).name}; running jobs were terminated",
              file=sys.stderr)
        os._exit(128 + signum)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.stop_all)
        watch_recipe(self.stop_all)
        indices = self.request.indices
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(indices))) as pool:
            codes = list(pool.map(self.run_one, indices))
        failures = [(i, describe_exit_code(c)) for i, c in zip(indices, codes) if c != 0]
        if failures:
            report_failures(self.program, self.request, failures)
            return 1
        return 0


# --------------------------------------------------------------------------
# Slurm runner (slurm.pl)
# --------------------------------------------------------------------------

# Same syntax as Kaldi's conf/slurm.conf:
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


@dataclasses.dataclass
class SlurmConfig:
    submit_command: List[str]
    exact_rules: Dict[Tuple[str, str], List[str]]
    wildcard_rules: Dict[str, List[str]]
    defaults: Dict[str, str]

    @property
    def option_names(self):
        return {name for name, _ in self.exact_rules} | set(self.wildcard_rules) | set(self.defaults)

    @classmethod
    def parse(cls, text: str, origin: str) -> "SlurmConfig":
        submit_command: List[str] = []
        exact, wildcard, defaults = {}, {}, {}
        for line_number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{origin}:{line_number}"
            try:
                words = shlex.split(line)
            except ValueError as error:
                raise UsageError(f"{where}: cannot parse '{raw_line}': {error}") from None
            keyword = words[0]
            if keyword == "command":
                if len(words) < 2:
                    raise UsageError(f"{where}: 'command' needs the submit program, e.g. 'command sbatch'")
                submit_command = words[1:]
                continue
            if keyword not in ("option", "default") or len(words) < 2 or "=" not in words[1]:
                raise UsageError(
                    f"{where}: expected 'command ...', 'option NAME=VALUE args...' or "
                    f"'default NAME=VALUE', got '{raw_line}'"
                )
            name, _, value = words[1].partition("=")
            name = name.replace("-", "_")
            if keyword == "default":
                defaults[name] = value
            elif value == "*":
                wildcard[name] = words[2:]
            else:
                exact[(name, value)] = words[2:]
        if not submit_command:
            raise UsageError(f"{origin}: no 'command' line (e.g. 'command sbatch --export=ALL')")
        return cls(submit_command, exact, wildcard, defaults)

    def sbatch_args(self, options: Dict[str, str]) -> List[str]:
        """Translate runner options into scheduler arguments following the rules."""
        args: List[str] = []
        for name in sorted(self.option_names | set(options)):
            if name in ("config", "max_jobs_run"):
                continue  # handled by slurm.pl itself
            value = options.get(name, self.defaults.get(name))
            if value is None:
                continue
            if (name, value) in self.exact_rules:
                args += self.exact_rules[(name, value)]
            elif name in self.wildcard_rules:
                args += [word.replace("$0", value) for word in self.wildcard_rules[name]]
            else:
                raise UsageError(f"the Slurm config has no rule for --{name} {value}")
        return args


def load_slurm_config(config_path: Optional[str]) -> SlurmConfig:
    """--config FILE, else conf/slurm.conf if the recipe has one, else the built-in rules."""
    if config_path is None and Path("conf/slurm.conf").is_file():
        config_path = "conf/slurm.conf"
    if config_path is None:
        return SlurmConfig.parse(DEFAULT_SLURM_CONFIG, "<built-in slurm config>")
    try:
        text = Path(config_path).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read config file {config_path}: {error}") from None
    return SlurmConfig.parse(text, config_path)


class SlurmRunner:
    """Submits the jobs as one ``sbatch`` (array) job and waits for them.

    Each job index gets a self-contained script ``<logdir>/q/<name>.<index>.sh``
    (it can be rerun by hand with bash).  For a job array, the submitted script
    only dispatches to the script of ``$SLURM_ARRAY_TASK_ID``.  When the Slurm
    job has left the queue, each job's exit status is read from the footer of
    its log; logs without a footer (job killed by time limit, OOM, node
    failure, scancel) count as failed and the Slurm state from ``sacct`` is
    shown.  Slurm's own messages for a job go to ``<logdir>/q/<name>.<index>.log``.

    Environment: SLURM_PL_POLL_SECONDS (default 30) how often squeue is asked;
    SLURM_PL_LOG_WAIT_SECONDS (default 60) how long to wait for log footers to
    appear on a shared file system after the job left the queue.
    """

    program = "slurm.pl"

    def __init__(self, request: JobRequest, config: SlurmConfig):
        self.request = request
        self.config = config
        self.threads = request.int_option("num_threads", 1)
        self.max_parallel = request.int_option("max_jobs_run", 0)
        self.poll_seconds = float(os.environ.get("SLURM_PL_POLL_SECONDS", "30"))
        self.log_wait_seconds = float(os.environ.get("SLURM_PL_LOG_WAIT_SECONDS", "60"))
        self.job_id: Optional[str] = None

    def q_file_template(self, suffix: str) -> str:
        """Path (relative as given, job variable unsubstituted) of a file in <logdir>/q/.

        e.g. log template exp/log/x.JOB.log, suffix .sh -> exp/log/q/x.JOB.sh
        """
        directory, name = os.path.split(self.request.log_template)
        stem = name[: -len(".log")] if name.endswith(".log") else name
        return os.path.join(directory, "q", stem + suffix)

    def task_script_path(self, index: Optional[int]) -> Path:
        return Path(self.request.substitute(self.q_file_template(".sh"), index)).absolute()

    def write_task_script(self, index: Optional[int]) -> Path:
        log_path = Path(self.request.log_path(index)).absolute()
        command = self.request.command(index)
        script_path = self.task_script_path(index)
        script_path.parent.mkdir(parents=True, exist_ok=True)
        # The log is truncated now, at submission, so that a footer left by an
        # earlier run can never be mistaken for this run's exit status.
        log_path.write_text(f"# {command}\n# Queued at {time.strftime(DATE_FORMAT)}\n", encoding="utf-8")
        q = shlex.quote
        script_path.write_text(
            "#!/usr/bin/env bash\n"
            f"# Generated by slurm.pl; rerun this job by hand with: bash {q(str(script_path))}\n"
            f"cd {q(os.getcwd())} || exit 1\n"
            f"log={q(str(log_path))}\n"
            f"echo \"# Started at $(date '+{DATE_FORMAT}') on $(hostname)"
            " (Slurm job ${SLURM_JOB_ID:-none})\" >> \"$log\"\n"
            "echo '#' >> \"$log\"\n"
            "start=$SECONDS\n"
            f"bash -o pipefail -c {q(command)} >> \"$log\" 2>&1\n"
            "code=$?\n"
            f"printf '# Accounting: time=%d threads=%d\\n# Ended (code %d) at %s\\n' "
            f"$((SECONDS - start)) {self.threads} \"$code\" \"$(date '+{DATE_FORMAT}')\" >> \"$log\"\n"
            "exit \"$code\"\n",
            encoding="utf-8",
        )
        script_path.chmod(0o755)
        return script_path

    def submit(self) -> str:
        request = self.request
        indices = request.indices
        for index in indices:
            self.write_task_script(index)
        submit = list(self.config.submit_command) + self.config.sbatch_args(request.options) + ["--parsable"]
        # Slurm's own messages (e.g. "CANCELLED DUE TO TIME LIMIT") go next to
        # the job scripts; '%' is a pattern character in sbatch file names.
        output_template = self.q_file_template(".log").replace("%", "%%")
        if request.job_variable is not None:
            output_template = output_template.replace(request.job_variable, "%a")
        if not os.path.isabs(output_template):  # only the given path is substituted, not the cwd
            output_template = os.getcwd().replace("%", "%%") + os.sep + output_template
        if request.job_variable is None:
            script = self.task_script_path(None)
        else:
            # The submitted script only dispatches to the task's own script.
            # Only the template is split at the variable: the recipe's absolute
            # directory may itself contain the letters "JOB".
            script_template = self.q_file_template(".sh")
            script = Path(script_template).absolute()
            if request.job_variable not in script_template:  # JOB=1:1 with a fixed log name
                script = Path(self.q_file_template(".array.sh")).absolute()
            target = '"${SLURM_ARRAY_TASK_ID}"'.join(
                shlex.quote(part) for part in script_template.split(request.job_variable)
            )
            if not os.path.isabs(script_template):
                target = shlex.quote(os.getcwd() + os.sep) + target
            script.write_text(
                "#!/usr/bin/env bash\n"
                "# Generated by slurm.pl: runs the script of this array task.\n"
                f"exec bash {target}\n",
                encoding="utf-8",
            )
            script.chmod(0o755)
            array = f"{request.first_index}-{request.last_index}"
            if self.max_parallel:
                array += f"%{self.max_parallel}"
            submit.append(f"--array={array}")
        submit += [f"--output={output_template}", str(script)]
        result = subprocess.run(submit, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise UsageError(
                f"submission failed (exit code {result.returncode}): {join_command(submit)}\n"
                + result.stderr.strip()
            )
        # --parsable prints "jobid" or "jobid;cluster"
        job_id = result.stdout.strip().split(";")[0]
        if not re.match(r"^\d+$", job_id):
            raise UsageError(f"could not read the job id from sbatch output '{result.stdout.strip()}'")
        print(f"{self.program}: submitted Slurm job {job_id}: {join_command(submit)}", file=sys.stderr)
        return job_id

    def job_in_queue(self) -> bool:
        result = subprocess.run(
            ["squeue", "--noheader", "--jobs", self.job_id, "--format=%i"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        if result.returncode == 0:
            return bool(result.stdout.strip())
        if "Invalid job id" in result.stderr:
            return False  # finished long enough ago to be purged from the controller
        # The controller may be briefly unreachable; keep waiting rather than
        # declaring jobs finished.
        print(f"{self.program}: squeue failed, retrying: {result.stderr.strip()}", file=sys.stderr)
        return True

    def slurm_states(self) -> Dict[str, str]:
        """Map 'JOBID' or 'JOBID_INDEX' to 'STATE exit=X:Y' from sacct (empty if unavailable)."""
        try:
            result = subprocess.run(
                ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", self.job_id,
                 "--format=JobID,State,ExitCode"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        except FileNotFoundError:
            return {}
        states = {}
        for line in result.stdout.splitlines():
            fields = line.split("|")
            if len(fields) >= 3:
                states[fields[0]] = f"Slurm state {fields[1]}, exit {fields[2]}"
        return states

    def cancel(self, signum, _frame) -> None:
        if self.job_id is not None:
            subprocess.run(["scancel", self.job_id])
            print(f"{self.program}: stopped by {signal.Signals(signum).name}; cancelled Slurm job {self.job_id}",
                  file=sys.stderr)
        os._exit(128 + signum)

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.cancel)
        watch_recipe(self.cancel)
        self.job_id = self.submit()
        while self.job_in_queue():
            time.sleep(self.poll_seconds)
        indices = self.request.indices
        codes = {i: read_exit_code(self.request.log_path(i)) for i in indices}
        deadline = time.time() + self.log_wait_seconds
        while any(c is None for c in codes.values()) and time.time() < deadline:
            time.sleep(min(2.0, self.log_wait_seconds))
            codes = {i: (c if c is not None else read_exit_code(self.request.log_path(i))) for i, c in codes.items()}
        failures = [(i, describe_exit_code(c)) for i, c in codes.items() if c not in (None, 0)]
        missing = [i for i, c in codes.items() if c is None]
        if missing:
            states = self.slurm_states()
            for index in missing:
                key = self.job_id if index is None or self.request.job_variable is None else f"{self.job_id}_{index}"
                state = states.get(key, "Slurm state unknown")
                failures.append((index, f"no exit status in the log; {state}"))
            failures.sort(key=lambda failure: failure[0] or 0)
        if failures:
            report_failures(self.program, self.request, failures)
            return 1
        return 0


def main(runner_name: str, argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    program = f"{runner_name}.pl"
    try:
        if runner_name == "run":
            request = parse_command_line(program, argv)
            check_option_names(request, LocalRunner.accepted_options)
            return LocalRunner(request).run()
        if runner_name == "slurm":
            request = parse_command_line(program, argv)
            # The config may define extra options (Kaldi convention), so it is
            # loaded before the option names are checked.
            config = load_slurm_config(request.options.get("config"))
            check_option_names(request, set(COMMON_OPTIONS) | config.option_names)
            if shutil.which(config.submit_command[0]) is None:
                raise UsageError(f"'{config.submit_command[0]}' not found on PATH (is this a Slurm login node?)")
            return SlurmRunner(request, config).run()
        raise ValueError(f"unknown runner {runner_name}")
    except UsageError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1
