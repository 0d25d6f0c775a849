#!/usr/bin/env bash
# mini_synth demo: BiRQ pre-training + CTC fine-tuning on synthetic espeak-ng speech, on CPU.
#   ./run.sh                      # default size (about 10-15 min on 2 CPU cores)
#   ./run.sh --demo_size tiny     # smallest size, for CI (a few minutes; WER not meaningful)
#   ./run.sh --ssl_config conf/train_ssl_best_rq_tiny.yaml   # BEST-RQ instead of BiRQ
#   ./run.sh --train_mode bljust  # BL-JUST: one joint supervised + self-supervised run instead of stages 5-6
# Every other option goes to ssl.sh (./ssl.sh --help).
set -euo pipefail

demo_size=default   # default or tiny
if [ "${1:-}" = --demo_size ] || [ "${1:-}" = --demo-size ]; then
    demo_size=${2:?--demo_size needs a value}
    shift 2
fi

pretrain_set=pretrain
train_set=train
valid_set=dev
test_sets="dev test"

ssl_config=conf/train_ssl_birq_tiny.yaml
asr_config=conf/train_asr_ctc_tiny.yaml
inference_config=conf/decode_ctc_greedy.yaml
bljust_config=conf/train_bljust_tiny.yaml

case "${demo_size}" in
    default)
        local_data_opts="--num_pretrain 4000 --train_fraction 0.1 --num_dev 100 --num_test 200 --nj 2"
        ssl_args=""
        asr_args=""
        bljust_args=""
        ;;
    tiny)
        local_data_opts="--num_pretrain 120 --train_fraction 0.5 --num_dev 12 --num_test 12 --nj 2"
        ssl_args="--max_epoch 1 --num_iters_per_epoch 5"
        asr_args="--max_epoch 1"
        bljust_args="--max_epoch 2 --bljust_conf final_epochs=1 --bljust_conf exploration_updates=1"
        ;;
    *)
        echo "$0: --demo_size must be default or tiny, got '${demo_size}'" >&2
        exit 1
        ;;
esac

./ssl.sh \
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
    "$@"
