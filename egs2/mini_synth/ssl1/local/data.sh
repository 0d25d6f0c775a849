#!/usr/bin/env bash
# Generate the mini_synth demo corpus: synthetic English speech made offline with
# the espeak-ng library shipped by the `espeakng-loader` pip package (no downloads).
#
# Writes Kaldi data dirs data/{pretrain,train,dev,test} (wav.scp, text, utt2spk,
# spk2utt, utt2dur; utt2category as extra metadata) and 16 kHz 16-bit mono wav
# files under ${MINI_SYNTH} (db.sh; default ${PWD}/downloads/mini_synth).
# The corpus is a deterministic function of the options: re-running with the same
# options is a no-op, an interrupted run resumes where it stopped.
# Held-out test conditions are described in data/local/mini_synth/HELDOUT.md.
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
SECONDS=0

stage=1
stop_stage=3
num_pretrain=2500     # unlabelled pre-training utterances (~2 s each)
train_fraction=0.1    # labelled fine-tuning set size, relative to num_pretrain
num_dev=100
num_test=200
num_speakers=40       # speakers (voice + pitch + rate configurations) of pretrain/train/dev
num_test_speakers=10  # speakers of test; all with voices unseen in the other splits
seed=1
add_noise=true        # white noise at a random SNR in [min_snr, max_snr] dB per utterance
min_snr=20
max_snr=40
nj=2                  # parallel synthesis jobs
data_dir=data
audio_dir=            # default: ${MINI_SYNTH} from db.sh
overwrite=false       # regenerate when a corpus made with other options exists
num_lm_text=20000     # stage 3: sentences of text-only LM data (data/local/other_text/text); 0: none

help_message="Usage: $0 [options]
Generate the mini_synth synthetic speech corpus (espeak-ng, offline).
Options (default):
  --stage ${stage} --stop_stage ${stop_stage}  (1: synthesize + write data dirs, 2: validate, 3: LM text)
  --num_pretrain ${num_pretrain} --train_fraction ${train_fraction} --num_dev ${num_dev} --num_test ${num_test}
  --num_speakers ${num_speakers} --num_test_speakers ${num_test_speakers} --seed ${seed}
  --add_noise ${add_noise} --min_snr ${min_snr} --max_snr ${max_snr}
  --nj ${nj} --data_dir ${data_dir} --audio_dir <dir> (default: \${MINI_SYNTH} from db.sh)
  --overwrite ${overwrite}
  --num_lm_text ${num_lm_text}  (text-only LM data from the seen templates, without any dev/test sentence)"

[ -f ./path.sh ] && . ./path.sh
[ -f ./db.sh ] && . ./db.sh

if [ -f utils/parse_options.sh ]; then
    . utils/parse_options.sh
else  # recipe without its utils link: use the repository's copy
    . "$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)/utils/parse_options.sh"
fi

if [ $# -ne 0 ]; then
    log "${help_message}"
    exit 2
fi

if [ -z "${audio_dir}" ]; then
    audio_dir=${MINI_SYNTH:-${PWD}/downloads/mini_synth}
fi
python=${PYTHON:-python3}
local_dir=$(dirname "${BASH_SOURCE[0]}")

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log "stage 1: synthesizing the mini_synth corpus (audio: ${audio_dir}, data: ${data_dir})"
    "${python}" "${local_dir}/make_corpus.py" \
        --data_dir "${data_dir}" --audio_dir "${audio_dir}" \
        --num_pretrain "${num_pretrain}" --train_fraction "${train_fraction}" \
        --num_dev "${num_dev}" --num_test "${num_test}" \
        --num_speakers "${num_speakers}" --num_test_speakers "${num_test_speakers}" \
        --seed "${seed}" --add_noise "${add_noise}" --min_snr "${min_snr}" --max_snr "${max_snr}" \
        --nj "${nj}" --overwrite "${overwrite}"
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log "stage 2: validating the data dirs"
    validate=utils/validate_data_dir.sh
    [ -x "${validate}" ] || validate="$(cd "${local_dir}/../../../.." && pwd)/utils/validate_data_dir.sh"
    for x in pretrain train dev test; do
        PYTHON=${python} "${validate}" "${data_dir}/${x}"
    done
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ] && [ "${num_lm_text}" -gt 0 ]; then
    # Text-only data for ssl_asr.sh --use_lm (--lm_train_text), as librispeech-lm-norm is for
    # LibriSpeech: seen templates only, and no sentence of the dev or test transcripts.
    log "stage 3: ${num_lm_text} sentences of LM text -> ${data_dir}/local/other_text/text"
    "${python}" "${local_dir}/make_lm_text.py" --num_sentences "${num_lm_text}" --seed "${seed}" \
        --exclude "${data_dir}/dev/text" "${data_dir}/test/text" --out "${data_dir}/local/other_text/text"
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
