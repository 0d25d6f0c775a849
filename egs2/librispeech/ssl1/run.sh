#!/usr/bin/env bash
# LibriSpeech recipe: BiRQ (default) or BEST-RQ pre-training on the 960 h of
# train-{clean-100,clean-360,other-500}, CTC fine-tuning on train-clean-100 (100 h),
# CTC beam search with a 4-gram over the BPE tokens of the LibriSpeech LM text (the
# paper decodes with a 4-gram LM) and WER of dev/test clean/other. Every stage lives in ./ssl_asr.sh;
# this file only sets the LibriSpeech defaults (see README.md). The default model is
# the BiRQ paper's LibriSpeech setup "C2" (10-block, 155M Conformer, 64 utterances per
# update, 100 epochs; CTC fine-tuning 30 epochs with a tri-stage schedule), from the
# shared ../../../conf/*_c2.yaml.
#
#   ./run.sh                       # all stages on 8 GPUs of this machine (BiRQ, C2)
#   ./run.sh --ssl_config ../../../conf/train_ssl_best_rq_c2.yaml   # BEST-RQ baseline (C2)
#   ./run.sh --ssl_config conf/train_ssl_birq_conformer.yaml \
#            --asr_config conf/train_asr_ctc.yaml                    # 24-block, 159M alternative
#   ./run.sh --ngpu 1 --ssl_args "--batch_size 16 --accum_grad 4" \
#            --asr_args "--batch_size 16 --accum_grad 4"          # one GPU, same batches
#   cmd_backend=slurm ./run.sh --num_nodes 2                        # 2 Slurm nodes x 8 GPUs
#   ./run.sh --stage 6 --pretrained_model none                      # fine-tune from scratch
#   ./run.sh --use_ngram false --inference_config conf/decode_ctc_greedy.yaml  # greedy, no LM
#   ./run.sh --help                # this recipe's settings, then every ssl_asr.sh option
# The corpus goes to ${LIBRISPEECH} (db.sh; 61 GB of downloads). Options of
# local/data.sh (e.g. --download false) go through --local_data_opts "...".
# Any later option overrides the defaults below (the last occurrence wins).
set -euo pipefail

pretrain_set=pretrain_960         # 960 h, transcripts unused by pre-training
train_set=train_clean_100         # 100 h labelled fine-tuning set
valid_set=dev_other               # validation of pre-training and fine-tuning
test_sets="dev_clean dev_other test_clean test_other"

ssl_config=../../../conf/train_ssl_birq_c2.yaml  # the BiRQ paper's C2 (README.md)
asr_config=../../../conf/train_asr_ctc_c2.yaml   # its fine-tuning: CTC, 30 epochs, tri-stage lr
inference_config=conf/decode_ctc_ngram.yaml   # CTC prefix beam search + the n-gram below
use_ngram=true                    # stage 6 trains a 4-gram over the BPE tokens (README.md, "Decoding")
ngram_num=4
ngram_trainer=lmplz               # 40M sentences: kenlm's lmplz (on PATH; docs/recipes.md)
lm_train_text=data/local/other_text/text  # librispeech-lm-norm.txt.gz (openslr SLR11), local/data.sh
bljust_config=conf/train_bljust_conformer.yaml  # --train_mode bljust (joint training, needs --feats_type fbank)

ngpu=8                            # batches are per update over all GPUs (README.md)
feats_type=raw                    # pre-training reads the flac files (no 110 GB fbank dump)
token_type=bpe
nbpe=300                          # unigram BPE for 100 h CTC fine-tuning (README.md)
local_data_opts=""

for arg in "$@"; do
    if [ "${arg}" = --help ] || [ "${arg}" = -h ]; then
        cat << HELP
Usage: $0 [options]   (LibriSpeech: BiRQ/BEST-RQ pre-training + CTC fine-tuning)

Recipe settings (passed to ssl_asr.sh; override any of them on the command line):
  --pretrain_set ${pretrain_set}    --train_set ${train_set}
  --valid_set ${valid_set}          --test_sets "${test_sets}"
  --ssl_config ${ssl_config}   (BEST-RQ: ../../../conf/train_ssl_best_rq_c2.yaml)
  --asr_config ${asr_config}   --inference_config ${inference_config}
      (24-block, 159M alternative: --ssl_config conf/train_ssl_birq_conformer.yaml or
      conf/train_ssl_best_rq_conformer.yaml, with --asr_config conf/train_asr_ctc.yaml)
  --use_ngram ${use_ngram}   --ngram_num ${ngram_num}   --ngram_trainer ${ngram_trainer}
  --lm_train_text ${lm_train_text}
      (a 4-gram over the BPE tokens of the LM text; greedy CTC without it:
      --use_ngram false --inference_config conf/decode_ctc_greedy.yaml; the official
      word 4-gram fits only a word-unit token list: --ngram_file, README.md)
  --bljust_config ${bljust_config}   (BL-JUST instead of pre-training + fine-tuning:
      $0 --train_mode bljust --feats_type fbank)
  --ngpu ${ngpu}   --feats_type ${feats_type}   --token_type ${token_type}   --nbpe ${nbpe}   --bpemode unigram
  --local_data_opts "${local_data_opts}"   (options of local/data.sh: --download true|false,
      --subsets, --speaker_level chapter|speaker, --skip_bad, --keep_archives,
      --lm_text true|false)
Corpus location: LIBRISPEECH in db.sh (default downloads/librispeech).
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
    --ssl_config "${ssl_config}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --use_ngram "${use_ngram}" \
    --ngram_num "${ngram_num}" \
    --ngram_trainer "${ngram_trainer}" \
    --lm_train_text "${lm_train_text}" \
    --bljust_config "${bljust_config}" \
    "$@"
