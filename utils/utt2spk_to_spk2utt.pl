#!/usr/bin/env bash
# Turn utt2spk into spk2utt (speakers and their utterances in C sort order).
#
# usage: utils/utt2spk_to_spk2utt.pl [utt2spk] > spk2utt   (reads stdin without an argument)
#
# Thin wrapper around: python -m espnet2_birq.utils.datadir spk2utt
# The interpreter is ${PYTHON:-python3}; recipes source path.sh first, which
# activates the project's venv.  The repository root is put on PYTHONPATH so
# this also works before espnet2_birq is pip-installed.
set -euo pipefail
repo_root=$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m espnet2_birq.utils.datadir spk2utt "$@"
