# shellcheck shell=bash
# Environment for the recipes of espnet2-birq (sourced by run.sh / ssl_asr.sh).
# The repository root is found from this file's real location (recipes link it as
# egs2/<corpus>/ssl1/path.sh -> ../../TEMPLATE/ssl1/path.sh); its virtual environment
# (.venv) is activated when present, otherwise the current python is used. The repository root goes on PYTHONPATH so the recipes also work
# without `pip install -e .`.
MAIN_ROOT=$(cd -P "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)
export MAIN_ROOT
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "${MAIN_ROOT}/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    . "${MAIN_ROOT}/.venv/bin/activate"
fi
export PYTHONPATH="${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PATH="${PWD}/utils:${PATH}"
export LC_ALL=C
export PYTHONIOENCODING=UTF-8
# NIST sclite (SCTK) scores when found; kaldialign (pip, sclite's costs) otherwise.
if [ -x /usr/lib/sctk/bin/sclite ]; then
    export PATH="${PATH}:/usr/lib/sctk/bin"
fi
