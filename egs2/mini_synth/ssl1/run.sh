#!/usr/bin/env bash
# mini_synth demo: BiRQ pre-training + CTC fine-tuning on synthetic espeak-ng speech, on CPU.
#   ./run.sh                      # default size (README.md gives the measured time)
#   ./run.sh --demo_size tiny     # smallest size, for CI (WER not meaningful)
#   ./run.sh --ssl_config conf/train_ssl_best_rq_tiny.yaml   # BEST-RQ instead of BiRQ
#   ./run.sh --train_mode bljust  # BL-JUST: one joint supervised + self-supervised run instead of stages 5-6
#   ./run.sh --use_lm false --inference_config conf/decode_ctc_greedy.yaml   # greedy CTC, no LM
# --demo_size may come anywhere; every other option goes to ssl_asr.sh (./ssl_asr.sh --help).
# The audio of each size is kept apart (${MINI_SYNTH}/<size>), but data/, dump/ and exp/
# hold one size at a time: switching sizes needs --demo_reset true (removes them).
set -euo pipefail

demo_size=default   # default or tiny
demo_reset=false    # true: remove data/ dump/ exp/ made with another --demo_size first
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --demo_size|--demo-size) demo_size=${2:?--demo_size needs a value}; shift 2 ;;
        --demo_size=*|--demo-size=*) demo_size=${1#*=}; shift ;;
        --demo_reset|--demo-reset) demo_reset=${2:?--demo_reset needs true or false}; shift 2 ;;
        --demo_reset=*|--demo-reset=*) demo_reset=${1#*=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
case "${demo_reset}" in true|false) ;; *) echo "$0: --demo_reset must be true or false, got '${demo_reset}'" >&2; exit 1 ;; esac

pretrain_set=pretrain
train_set=train
valid_set=dev
test_sets="dev test"

ssl_config=conf/train_ssl_birq_tiny.yaml
asr_config=conf/train_asr_ctc_tiny.yaml
inference_config=conf/decode_ctc_lm.yaml        # beam search with the character LM (stage 6)
bljust_config=conf/train_bljust_tiny.yaml
lm_config=conf/train_lm_rnn_tiny.yaml
# the labelled transcripts and the text-only LM data of local/data.sh (stage 3)
lm_train_text="data/${train_set}/text data/local/other_text/text"

case "${demo_size}" in
    default)
        extra_opts=()
        local_data_opts="--num_pretrain 4000 --train_fraction 0.1 --num_dev 100 --num_test 200 --nj 2 --num_lm_text 20000"
        ssl_args=""
        asr_args=""
        bljust_args=""
        lm_args=""
        ;;
    tiny)
        local_data_opts="--num_pretrain 120 --train_fraction 0.5 --num_dev 12 --num_test 12 --nj 2 --num_lm_text 200"
        ssl_args="--max_epoch 1 --num_iters_per_epoch 5"
        asr_args="--max_epoch 1"
        lm_args="--max_epoch 1"
        # one fine-tuning epoch is a smoke test: the model may still emit only blanks
        extra_opts=(--empty_hyps_ok true)
        bljust_args="--max_epoch 2 --bljust_conf final_epochs=1 --bljust_conf exploration_updates=1"
        ;;
    *)
        echo "$0: --demo_size must be default or tiny, got '${demo_size}'" >&2
        exit 1
        ;;
esac

# One size at a time in data/ dump/ exp/ (ssl_asr.sh would otherwise keep features and models
# of the other size as done).
size_stamp=data/.demo_size
held=
if [ -f "${size_stamp}" ]; then
    held=$(cat "${size_stamp}")
elif [ -f data/.mini_synth.done ]; then
    held="unrecorded (made before data/.demo_size existed)"
fi
if [ -n "${held}" ] && [ "${held}" != "${demo_size}" ]; then
    if [ "${demo_reset}" = true ]; then
        echo "$0: removing data/ dump/ exp/ of the ${held} demo"
        rm -rf data dump exp
    else
        echo "$0: data/, dump/ and exp/ hold the ${held} demo; to run the ${demo_size} demo" \
             "here instead, add --demo_reset true (removes them), or use another copy of this directory" >&2
        exit 1
    fi
fi
for arg in ${args[@]+"${args[@]}"}; do
    if [ "${arg}" = --help ] || [ "${arg}" = -h ]; then
        exec ./ssl_asr.sh --help
    fi
done
mkdir -p data
echo "${demo_size}" > "${size_stamp}"

[ -f ./db.sh ] && . ./db.sh
local_data_opts+=" --audio_dir ${MINI_SYNTH}/${demo_size}"

./ssl_asr.sh \
    --ngpu 0 \
    --nj 2 \
    --inference_nj 1 \
    --pretrain_set "${pretrain_set}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --local_data_opts "${local_data_opts}" \
    --feats_type fbank \
    --token_type char \
    --ssl_config "${ssl_config}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --ssl_args "${ssl_args}" \
    --asr_args "${asr_args}" \
    --bljust_config "${bljust_config}" \
    --bljust_args "${bljust_args}" \
    --use_lm true \
    --lm_config "${lm_config}" \
    --lm_train_text "${lm_train_text}" \
    --lm_args "${lm_args}" \
    ${extra_opts[@]+"${extra_opts[@]}"} \
    ${args[@]+"${args[@]}"}
