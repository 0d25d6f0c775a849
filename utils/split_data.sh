#!/usr/bin/env bash
# Split a data directory by utterance into <data-dir>/split<N>/1..N, each a valid data directory.
#
# usage: utils/split_data.sh [--per-utt] <data-dir> <num-splits>
#
# Thin wrapper around: python -m espnet2_birq.utils.datadir split
# The interpreter is ${PYTHON:-python3}; recipes source path.sh first, which
# activates the project's venv.  The repository root is put on PYTHONPATH so
# this also works before espnet2_birq is pip-installed.
set -euo pipefail
repo_root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m espnet2_birq.utils.datadir split "$@"
