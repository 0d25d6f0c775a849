#!/usr/bin/env bash
# One-command GPU check of C2 BiRQ and BEST-RQ pre-training (about 2-5 minutes on one
# GPU): step time, utterances/s, peak memory, BiRQ/BEST-RQ ratio, FLOPs and share of the
# bf16 peak, a 2-process DDP smoke run with >= 2 GPUs, GPU-hours of 100 epochs of 960 h.
# Everything is described in bench/gpu_check.py; every option: --help.
#
#   bash bench/gpu_check.sh                                  # defaults: C2 configs, 64 x 15 s
#   bash bench/gpu_check.sh --out_dir exp/gpu_check --peak_tflops 989
#   bash bench/gpu_check.sh --device cpu --out_dir /tmp/gpu_check   # toy size, < 1 minute
#
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
fi
exec "${PYTHON}" bench/gpu_check.py "$@"
