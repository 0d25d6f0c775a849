#!/usr/bin/env bash
# YODAS recipe (Hugging Face espnet/yodas, English manual captions): BiRQ (default) or
# BEST-RQ pre-training on ~5,000 h, CTC fine-tuning on a 100 h captioned subset of it
# (split by video), greedy CTC decoding and WER of held-out dev and test sets (5 h each,
# disjoint videos). Every stage lives in ./ssl_asr.sh; this file only sets the YODAS
# defaults (see README.md). The default model is the BiRQ paper's YODAS encoder "C3"
# (10-block, 275M Conformer with windowed attention, 128 utterances per update, 100
# epochs), from the shared ../../../conf/train_ssl_*_c3.yaml; the paper fine-tunes it on
# AMI (../../ami/ssl1, README.md there), this recipe also on its own 100 h subset.
#
#   ./run.sh                       # 5,000 h, all stages on 8 GPUs of this machine (BiRQ, C3)
#   ./run.sh --hours 1000 --finetune_hours 50    # smaller selection (README)
#   ./run.sh --ssl_config ../../../conf/train_ssl_best_rq_c3.yaml   # BEST-RQ baseline (C3)
#   ./run.sh --ssl_config conf/train_ssl_birq_conformer.yaml     # 24-block, 159M alternative
#   ./run.sh --ngpu 1 --ssl_args "--batch_size 16 --accum_grad 8" \
#            --asr_args "--batch_bins 4000000 --accum_grad 4"     # one GPU, same batches
#   cmd_backend=slurm ./run.sh --num_nodes 2                        # 2 Slurm nodes x 8 GPUs
#   ./run.sh --help                # this recipe's settings, then every ssl_asr.sh option
# Recipe options (anywhere on the command line; consumed here, passed to local/data.sh):
#   --hours H                      pre-training budget in hours (default 5000)
#   --finetune_hours H             labelled fine-tuning subset of it (default 100)
# The corpus goes to ${YODAS} (db.sh; stage 1 needs `pip install huggingface_hub`).
# Other options of local/data.sh (e.g. --download false, --subsets en000,en001,
# --dev_hours 5) go through --local_data_opts "..."; this script puts --hours and
# --finetune_hours in front of them. Any other option overrides the defaults below.
set -euo pipefail

hours=5000
finetune_hours=100
user_data_opts=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --hours) hours=${2:?--hours needs a value}; shift 2 ;;
        --finetune_hours) finetune_hours=${2:?--finetune_hours needs a value}; shift 2 ;;
        --local_data_opts) user_data_opts=${2?--local_data_opts needs a value}; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
for x in hours finetune_hours; do
    [[ ${!x} =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "$0: --${x} must be a number, got '${!x}'" >&2; exit 1; }
done

pretrain_set=pretrain             # ~${hours} h (captions unused by pre-training)
train_set=finetune                # ${finetune_hours} h labelled subset of pretrain
valid_set=dev                     # 5 h, videos disjoint from pretrain
test_sets="dev test"

ssl_config=../../../conf/train_ssl_birq_c3.yaml  # the BiRQ paper's C3 (README.md)
asr_config=conf/train_asr_ctc.yaml                # the paper fine-tunes C3 on AMI only; this one fits any encoder
inference_config=conf/decode_ctc_greedy.yaml
bljust_config=conf/train_bljust_conformer.yaml  # --train_mode bljust (joint training, needs --feats_type fbank)

ngpu=8                            # batches are per update over all GPUs (README.md)
feats_type=raw                    # pre-training reads the audio files (no 576 GB fbank dump)
token_type=bpe
nbpe=300                          # unigram BPE for 100 h CTC fine-tuning (README.md)
num_splits_ssl=10                 # pre-training lists in 10 parts, one in memory at a time (README.md)
local_data_opts="--hours ${hours} --finetune_hours ${finetune_hours}${user_data_opts:+ ${user_data_opts}}"

for arg in ${args[@]+"${args[@]}"}; do
    if [ "${arg}" = --help ] || [ "${arg}" = -h ]; then
        cat << HELP
Usage: $0 [--hours H] [--finetune_hours H] [options]   (YODAS: BiRQ/BEST-RQ + CTC fine-tuning)

Recipe options (go to local/data.sh):
  --hours H            pre-training budget in hours (now: ${hours})
  --finetune_hours H   labelled fine-tuning subset of the pre-training set (now: ${finetune_hours})

Recipe settings (passed to ssl_asr.sh; override any of them on the command line):
  --pretrain_set ${pretrain_set}    --train_set ${train_set}
  --valid_set ${valid_set}          --test_sets "${test_sets}"
  --ssl_config ${ssl_config}   (BEST-RQ: ../../../conf/train_ssl_best_rq_c3.yaml;
      24-block, 159M alternative: conf/train_ssl_birq_conformer.yaml, conf/train_ssl_best_rq_conformer.yaml)
  --asr_config ${asr_config}   --inference_config ${inference_config}
  --bljust_config ${bljust_config}   (BL-JUST instead of pre-training + fine-tuning:
      $0 --train_mode bljust --feats_type fbank)
  --ngpu ${ngpu}   --feats_type ${feats_type}   --token_type ${token_type}   --nbpe ${nbpe}   --bpemode unigram
  --num_splits_ssl ${num_splits_ssl}   (stage 5 reads the pre-training lists in parts: ESPnet's --multiple_iterator)
  --local_data_opts "${local_data_opts}"   (options of local/data.sh: --download true|false,
      --subsets auto|en000,..., --dev_hours, --test_hours, --extract_dir, --strict)
Corpus location: YODAS in db.sh (default downloads/yodas).
Multi-node: cmd_backend=slurm $0 --num_nodes N (N nodes x --ngpu GPUs).

Options of ssl_asr.sh (defaults shown are ssl_asr.sh's; the recipe settings above replace them):
HELP
        exec ./ssl_asr.sh --help
    fi
done

./ssl_asr.sh \
    --ngpu "${ngpu}" \
    --pretrain_set "${pretrain_set}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --local_data_opts "${local_data_opts}" \
    --feats_type "${feats_type}" \
    --token_type "${token_type}" \
    --nbpe "${nbpe}" \
    --bpemode unigram \
    --num_splits_ssl "${num_splits_ssl}" \
    --ssl_config "${ssl_config}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --bljust_config "${bljust_config}" \
    ${args[@]+"${args[@]}"}
