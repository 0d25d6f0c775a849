#!/usr/bin/env bash
# AMI meeting corpus recipe: BiRQ (default) or BEST-RQ pre-training on the train split
# of the full-corpus-ASR partition, CTC fine-tuning on the same (transcribed) split,
# CTC beam search with a 4-gram over the BPE tokens of the training transcripts and WER
# of dev and eval. One microphone condition per run: individual headsets (ihm, default)
# or the first channel of array 1 (sdm); each has its own dump/<mic>, exp/<mic> and
# data/<mic>_token_list, so the two runs side by side share nothing.
# Every stage lives in ./ssl_asr.sh; this file only sets the AMI defaults (see README.md).
# The default model is the BiRQ paper's AMI/YODAS encoder "C3" (10-block, 275M Conformer
# with windowed attention, 128 utterances per update; CTC fine-tuning 30 epochs with a
# tri-stage schedule), from the shared ../../../conf/*_c3.yaml. The paper pre-trains it
# on YODAS (../../yodas/ssl1) and fine-tunes here: README.md, "The paper's protocol".
#
#   ./run.sh                       # IHM, all stages on 8 GPUs of this machine (BiRQ, C3)
#   ./run.sh --mic sdm             # SDM: sets sdm_train, sdm_dev, sdm_eval; dump/sdm, exp/sdm
#   ./run.sh --ngram_file lm.arpa  # decode with an external n-gram over the same BPE tokens
#   ./run.sh --use_ngram false --inference_config conf/decode_ctc_greedy.yaml  # greedy, no LM
#   ./run.sh --ssl_config ../../../conf/train_ssl_best_rq_c3.yaml   # BEST-RQ baseline (C3)
#   ./run.sh --ssl_config conf/train_ssl_birq_conformer.yaml \
#            --asr_config conf/train_asr_ctc.yaml                    # 24-block, 159M alternative
#   ./run.sh --ngpu 1 --ssl_args "--batch_size 16 --accum_grad 8" \
#            --asr_args "--batch_size 16 --accum_grad 8"          # one GPU, same batches
#   cmd_backend=slurm ./run.sh --num_nodes 2                        # 2 Slurm nodes x 8 GPUs
#   ./run.sh --help                # this recipe's settings, then every ssl_asr.sh option
# Recipe option (anywhere on the command line; consumed here, not passed to ssl_asr.sh):
#   --mic ihm|sdm                  microphone condition (default ihm)
# The corpus goes to ${AMI} (db.sh). Other options of local/data.sh (e.g.
# --download false, --skip_bad true) go through --local_data_opts "..."; this script
# puts --mic in front of them. Any other option overrides the defaults below.
set -euo pipefail

mic=ihm
user_data_opts=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mic) mic=${2:?--mic needs a value}; shift 2 ;;
        --mic=*) mic=${1#--mic=}; shift ;;
        --local_data_opts) user_data_opts=${2?--local_data_opts needs a value}; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
case "${mic}" in
    ihm|sdm) ;;
    *) echo "$0: --mic must be ihm or sdm, got '${mic}'" >&2; exit 1 ;;
esac

pretrain_set=${mic}_train         # ~80 h of segments (transcripts unused by pre-training)
train_set=${mic}_train            # the same segments, labelled, for fine-tuning
valid_set=${mic}_dev
test_sets="${mic}_dev ${mic}_eval"

ssl_config=../../../conf/train_ssl_birq_c3.yaml  # the BiRQ paper's C3 (README.md)
asr_config=../../../conf/train_asr_ctc_c3.yaml   # its fine-tuning: CTC, 30 epochs, tri-stage lr
inference_config=conf/decode_ctc_ngram.yaml   # CTC prefix beam search + the n-gram below
use_ngram=true                    # stage 6: a 4-gram over the BPE tokens of <mic>_train's text
ngram_num=4
ngram_trainer=kaldingram          # pip-installed with the package: the same n-gram everywhere
bljust_config=conf/train_bljust_conformer.yaml  # --train_mode bljust (joint training, needs --feats_type fbank)

ngpu=8                            # batches are per update over all GPUs (README.md)
feats_type=fbank                  # utterances are segments of long recordings: dump fbank
token_type=bpe
nbpe=300                          # unigram BPE for ~80 h CTC fine-tuning (README.md)
local_data_opts="--mic ${mic}${user_data_opts:+ ${user_data_opts}}"
# one condition per directory: a second --mic neither overwrites nor refuses the first one's
dumpdir=dump/${mic}
expdir=exp/${mic}
token_listdir=data/${mic}_token_list

for arg in ${args[@]+"${args[@]}"}; do
    if [ "${arg}" = --help ] || [ "${arg}" = -h ]; then
        cat << HELP
Usage: $0 [--mic ihm|sdm] [options]   (AMI: BiRQ/BEST-RQ pre-training + CTC fine-tuning)

Recipe option:
  --mic ihm|sdm   microphone condition (now: ${mic}); sets <mic>_train, <mic>_dev, <mic>_eval,
                  --dumpdir dump/<mic> --expdir exp/<mic> --token_listdir data/<mic>_token_list

Recipe settings (passed to ssl_asr.sh; override any of them on the command line):
  --pretrain_set ${pretrain_set}    --train_set ${train_set}
  --valid_set ${valid_set}          --test_sets "${test_sets}"
  --ssl_config ${ssl_config}   (BEST-RQ: ../../../conf/train_ssl_best_rq_c3.yaml)
  --asr_config ${asr_config}   --inference_config ${inference_config}
      (24-block, 159M alternative: --ssl_config conf/train_ssl_birq_conformer.yaml or
      conf/train_ssl_best_rq_conformer.yaml, with --asr_config conf/train_asr_ctc.yaml)
  --use_ngram ${use_ngram}   --ngram_num ${ngram_num}   --ngram_trainer ${ngram_trainer}
      (n-gram text: --lm_train_text, default data/${train_set}/text; an external n-gram over
      the same tokens: --ngram_file FILE; greedy CTC without it: --use_ngram false
      --inference_config conf/decode_ctc_greedy.yaml)
  --dumpdir ${dumpdir}   --expdir ${expdir}   --token_listdir ${token_listdir}
  --bljust_config ${bljust_config}   (BL-JUST instead of pre-training + fine-tuning:
      $0 --train_mode bljust --feats_type fbank)
  --ngpu ${ngpu}   --feats_type ${feats_type}   --token_type ${token_type}   --nbpe ${nbpe}   --bpemode unigram
  --local_data_opts "${local_data_opts}"   (options of local/data.sh: --mic, --download true|false,
      --skip_bad true|false)
Corpus location: AMI in db.sh (default downloads/ami).
Multi-node: cmd_backend=slurm $0 --num_nodes N (N nodes x --ngpu GPUs).

Options of ssl_asr.sh (defaults shown are ssl_asr.sh's; the recipe settings above replace them):
HELP
        exec ./ssl_asr.sh --help
    fi
done

./ssl_asr.sh \
    --ngpu "${ngpu}" \
    --dumpdir "${dumpdir}" \
    --expdir "${expdir}" \
    --token_listdir "${token_listdir}" \
    --pretrain_set "${pretrain_set}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --local_data_opts "${local_data_opts}" \
    --feats_type "${feats_type}" \
    --token_type "${token_type}" \
    --nbpe "${nbpe}" \
    --bpemode unigram \
    --ssl_config "${ssl_config}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --use_ngram "${use_ngram}" \
    --ngram_num "${ngram_num}" \
    --ngram_trainer "${ngram_trainer}" \
    --bljust_config "${bljust_config}" \
    ${args[@]+"${args[@]}"}
