#!/usr/bin/env bash
# LibriSpeech data preparation for BiRQ SSL pre-training and fine-tuning.
#
# Stage 1: download + extract the openslr SLR12 tarballs with lhotse (resumable;
#          skipped when already there), and the LM text librispeech-lm-norm.txt.gz
#          of openslr SLR11 (--lm_text true; md5 verified).
# Stage 2: write Kaldi data dirs (lhotse reads the corpus) under ${data_dir}/:
#          pretrain_960 train_clean_100 dev_clean dev_other test_clean test_other,
#          and the LM text as ${data_dir}/local/other_text/text (the n-gram's text)
# Stage 3: validate them.
#
# Options (Kaldi style, e.g. --stage 2 --download false):
#   --stage N --stop_stage N    sub-stages to run (default 1..3)
#   --download true|false       download missing subsets (default true)
#   --subsets "a b ..."         subsets to download (default: all 7 needed)
#   --speaker_level chapter|speaker
#                               utt2spk speaker = <spk>-<chapter> (Kaldi
#                               librispeech convention, default) or <spk>
#   --skip_bad true|false       skip+count bad entries instead of failing
#   --nj N                      threads reading the flac headers (default 4)
#   --keep_archives true|false  keep the .tar.gz after extraction (default true)
#   --lm_text true|false        download and prepare the LM text (default true;
#                               1.5 GB download, 4.3 GB as data/local/other_text/text)
#   --data_dir DIR              output root (default data)
#   --python CMD                python interpreter (default python3)
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

stage=1
stop_stage=3
download=true
subsets="train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other"
speaker_level=chapter
skip_bad=false
nj=4
keep_archives=true
lm_text=true
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
dirs="pretrain_960 train_clean_100 dev_clean dev_other test_clean test_other"

if [ -z "${LIBRISPEECH}" ]; then
    log "Error: LIBRISPEECH is empty; set it in db.sh"
    exit 1
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    if [ "${download}" = true ]; then
        log "Stage 1: download LibriSpeech (${subsets}) into ${LIBRISPEECH}"
        "${python}" -m espnet2_birq.dataprep.librispeech download \
            --root "${LIBRISPEECH}" --subsets ${subsets} --keep_archives "${keep_archives}" \
            --lm_text "${lm_text}"
    else
        log "Stage 1: --download false; using the existing copy in ${LIBRISPEECH}"
    fi
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log "Stage 2: prepare Kaldi data dirs in ${data_dir}"
    if [ ! -d "${LIBRISPEECH}/LibriSpeech" ]; then
        log "Error: ${LIBRISPEECH}/LibriSpeech not found. Run with --download true or set LIBRISPEECH in db.sh"
        exit 1
    fi
    extra=""
    [ "${skip_bad}" = true ] && extra="--skip_bad"
    "${python}" -m espnet2_birq.dataprep.librispeech prepare \
        --corpus_dir "${LIBRISPEECH}/LibriSpeech" --data_dir "${data_dir}" \
        --speaker_level "${speaker_level}" --nj "${nj}" ${extra}
    if [ "${lm_text}" = true ]; then
        lm_gz=${LIBRISPEECH}/librispeech-lm-norm.txt.gz
        if [ ! -f "${lm_gz}" ]; then
            log "Error: ${lm_gz} not found. Run with --download true, or --lm_text false to go without it"
            exit 1
        fi
        if [ -s "${data_dir}/local/other_text/text" ] && [ "${data_dir}/local/other_text/text" -nt "${lm_gz}" ]; then
            log "${data_dir}/local/other_text/text already written from ${lm_gz}; skipping"
        else
            log "writing the LM text ${lm_gz} as ${data_dir}/local/other_text/text"
            mkdir -p "${data_dir}/local/other_text"
            # ids librispeech_lm_norm_<line>; empty lines left out, spaces squeezed, upper case
            # as the transcripts; via a temporary file, so an interrupted run leaves none
            if ! gunzip -c "${lm_gz}" | awk 'NF { $1 = $1; printf("librispeech_lm_norm_%09d %s\n", NR, toupper($0)) }' \
                    > "${data_dir}/local/other_text/text.tmp"; then
                log "Error: cannot read ${lm_gz} (a broken download? delete it and its .done file, run stage 1 again)"
                rm -f "${data_dir}/local/other_text/text.tmp"
                exit 1
            fi
            if [ ! -s "${data_dir}/local/other_text/text.tmp" ]; then
                log "Error: ${lm_gz} holds no sentence"
                rm -f "${data_dir}/local/other_text/text.tmp"
                exit 1
            fi
            mv "${data_dir}/local/other_text/text.tmp" "${data_dir}/local/other_text/text"
        fi
    fi
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log "Stage 3: validate data dirs"
    for d in ${dirs}; do
        # a part of the corpus prepares only the sets its subsets make (stage 2 names the others)
        [ -d "${data_dir}/${d}" ] || { log "${data_dir}/${d} not prepared (its subsets are not in ${LIBRISPEECH}/LibriSpeech)"; continue; }
        PYTHON="${python}" utils/validate_data_dir.sh "${data_dir}/${d}"
    done
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
