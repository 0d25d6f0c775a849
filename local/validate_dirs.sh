#!/usr/bin/env bash
# Validate Kaldi data dirs: the recipe's utils/validate_data_dir.sh when it is
# present (with --no-feats if that script knows the option, as Kaldi's does),
# plus the pure-Python checks of local/kaldi_dir.py.
# Usage: local/validate_dirs.sh <python> <repo_root> DIR [DIR ...]
set -euo pipefail
python=$1; repo_root=$2; shift 2
for d in "$@"; do
    if [ -x utils/validate_data_dir.sh ]; then
        opts=""
        if grep -q -- "--no-feats" utils/validate_data_dir.sh; then
            opts="--no-feats"
        fi
        PYTHON="${python}" utils/validate_data_dir.sh ${opts} "${d}"
    fi
    "${python}" "${repo_root}/local/kaldi_dir.py" "${d}"
done
