#!/usr/bin/env bash
# AMI meeting corpus data preparation for BiRQ SSL pre-training / fine-tuning.
#
# Stage 1: download with lhotse the audio (IHM: one wav per headset; SDM:
#          Array1-01) into ${AMI}/wav_db and the manual annotations
#          (ami_public_manual_1.6.2.zip, extracted into ${AMI}/annotations).
#          Resumable.
# Stage 2: write Kaldi data dirs ${data_dir}/${mic}_{train,dev,eval} (lhotse's
#          full-corpus-ASR partition and segmentation, Kaldi s5b ids).
# Stage 3: validate them.
#
# Options:
#   --stage N --stop_stage N  sub-stages to run (default 1..3)
#   --download true|false     download missing files (default true)
#   --mic ihm|sdm             microphone condition (default ihm)
#   --skip_bad true|false     skip+count meetings with missing audio instead
#                             of failing (default false)
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
mic=ihm
skip_bad=false
data_dir=data
python=python3

log "$0 $*"
. ./db.sh
. utils/parse_options.sh

if [ $# -ne 0 ]; then
    log "Error: unexpected arguments: $*"
    exit 2
fi
case "${mic}" in
    ihm|sdm) ;;
    *) log "Error: --mic must be ihm or sdm (got ${mic})"; exit 2 ;;
esac

repo_root=$(cd ../../.. && pwd)
export PYTHONPATH="${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    if [ "${download}" = true ]; then
        log "Stage 1: download AMI ${mic} audio + annotations into ${AMI}"
        "${python}" -m espnet2_birq.dataprep.ami download \
            --root "${AMI}" --mic "${mic}"
    else
        log "Stage 1: --download false; using the existing copy in ${AMI}"
    fi
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log "Stage 2: prepare ${data_dir}/${mic}_{train,dev,eval}"
    extra=""
    [ "${skip_bad}" = true ] && extra="--skip_bad"
    "${python}" -m espnet2_birq.dataprep.ami prepare \
        --root "${AMI}" --mic "${mic}" --data_dir "${data_dir}" ${extra}
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log "Stage 3: validate data dirs"
    for x in train dev eval; do
        PYTHON="${python}" utils/validate_data_dir.sh "${data_dir}/${mic}_${x}"
    done
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
