#!/usr/bin/env python3
"""Run jobs on a Slurm cluster, Kaldi slurm.pl convention.

usage: slurm.pl [options] [JOB=1:N] log/name.JOB.log command args...

options (both spellings --num_threads / --num-threads work):
  --max_jobs_run N   at most N jobs at the same time (Slurm array throttle %N)
  --num_threads N    threads per job (--cpus-per-task)
  --gpu N            GPUs per job (--gres=gpu:N)
  --mem SIZE         memory per job (--mem)
  --time T, --name NAME, --num_nodes N (--time, --job-name, --nodes N --ntasks-per-node 1)
  --config FILE      Kaldi-style slurm.conf (default: conf/slurm.conf if present)

The implementation is shared with the other runner in job_runner.py next to
this file; it is named .pl because recipes and espnet2.bin.launch expect
these names.
"""
import os
import sys

sys.dont_write_bytecode = True  # keep utils/ free of __pycache__ on shared file systems
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import job_runner  # noqa: E402  (located via the path above)

if __name__ == "__main__":
    if len(sys.argv) == 1 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 1)
    sys.exit(job_runner.main("slurm"))
