#!/usr/bin/env bash
# YODAS (espnet/yodas, English) data preparation for BiRQ.
#
# Stage 1: download with huggingface_hub (pip install huggingface_hub): first
#          the text/duration metadata of the chosen subsets, then only the
#          audio shards needed for the hour budget. Resumable / skips files
#          already present.
# Stage 2: extract the selected shards and write Kaldi data dirs
#          ${data_dir}/{pretrain,finetune,dev,test}.
# Stage 3: validate them.
#
# Options:
#   --stage N --stop_stage N  sub-stages to run (default 1..3)
#   --download true|false     download (default true)
#   --subsets LIST            comma separated (e.g. en000,en001) or "auto":
#                             all English manual-caption subsets (enNNN,
#                             NNN<100) in order (default auto)
#   --hours H                 pre-training budget in hours (default 5000)
#   --finetune_hours H        labelled fine-tuning subset of pretrain (default 100)
#   --dev_hours H --test_hours H
#                             held-out sets, split by video id (default 5 / 5)
#   --extract_dir DIR         where shards are extracted (default ${YODAS}/extracted)
#   --strict true|false       fail on an utterance without audio (default false:
#                             skip and count)
#   --data_dir DIR            output root (default data)
#   --python CMD              python interpreter (default python3)
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

stage=1
stop_stage=3
download=true
subsets=auto
hours=5000
finetune_hours=100
dev_hours=5
test_hours=5
extract_dir=
strict=false
data_dir=data
python=python3

log "$0 $*"
. ./db.sh
. utils/parse_options.sh

if [ $# -ne 0 ]; then
    log "Error: unexpected arguments: $*"
    exit 2
fi

repo_root=$(cd ../../.. && pwd)
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
common=(--root "${YODAS}" --subsets "${subsets}" --hours "${hours}"
        --dev_hours "${dev_hours}" --test_hours "${test_hours}")

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    if [ "${download}" = true ]; then
        log "Stage 1: download YODAS (${subsets}, ${hours} h + held-out) into ${YODAS}"
        "${python}" -m espnet2_birq.dataprep.yodas download "${common[@]}"
    else
        log "Stage 1: --download false; using the existing copy in ${YODAS}"
    fi
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log "Stage 2: prepare ${data_dir}/{pretrain,finetune,dev,test}"
    extra=()
    [ -n "${extract_dir}" ] && extra+=(--extract_dir "${extract_dir}")
    [ "${strict}" = true ] && extra+=(--strict)
    "${python}" -m espnet2_birq.dataprep.yodas prepare "${common[@]}" \
        --finetune_hours "${finetune_hours}" --data_dir "${data_dir}" ${extra[@]+"${extra[@]}"}
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log "Stage 3: validate data dirs"
    for x in pretrain finetune dev test; do
        if [ -d "${data_dir}/${x}" ]; then
            PYTHON="${python}" utils/validate_data_dir.sh "${data_dir}/${x}"
        fi
    done
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
