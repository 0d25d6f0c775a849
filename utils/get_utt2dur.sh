#!/usr/bin/env bash
# Write <data-dir>/utt2dur (seconds) from segments, or by reading the audio with soundfile.
#
# usage: utils/get_utt2dur.sh [--nj N] <data-dir>
#
# Thin wrapper around: python -m espnet2_birq.utils.datadir utt2dur
# The interpreter is ${PYTHON:-python3}; recipes source path.sh first, which
# activates the project's venv.  The repository root is put on PYTHONPATH so
# this also works before espnet2_birq is pip-installed.
set -euo pipefail
repo_root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m espnet2_birq.utils.datadir utt2dur "$@"
