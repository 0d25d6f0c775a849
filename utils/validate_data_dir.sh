#!/usr/bin/env bash
# Check a Kaldi-style data directory; exits 1 naming each problem (file, count, first ids).
#
# usage: utils/validate_data_dir.sh [--no-text] [--no-feats] <data-dir>
#   --no-feats is accepted for Kaldi compatibility (feats.scp is only checked when present).
#
# Thin wrapper around: python -m espnet2_birq.utils.datadir validate
# The interpreter is ${PYTHON:-python3}; recipes source path.sh first, which
# activates the project's venv.  The repository root is put on PYTHONPATH so
# this also works before espnet2_birq is pip-installed.
set -euo pipefail
repo_root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m espnet2_birq.utils.datadir validate "$@"
