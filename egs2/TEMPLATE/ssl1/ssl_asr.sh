#!/usr/bin/env bash
# Self-supervised pre-training (BEST-RQ / BiRQ) + CTC(/attention) ASR fine-tuning recipe.
# ESPnet egs2 style: run it from a recipe directory (egs2/<corpus>/ssl1) through run.sh.
# Options that mean the same as in ESPnet's egs2/TEMPLATE/asr1/asr.sh have asr.sh's names.
#
# Stages:
#   1 data preparation (local/data.sh), validation, utt2dur
#   2 features: 80-dim fbank -> dump/fbank/<set>
#   3 token list (char or bpe) from the labelled training text
#   4 collect stats (ESPnet's --collect_stats runs + aggregate_stats_dirs, as asr.sh's stage 10):
#     shape files for SSL and ASR training, global CMVN of the pre-training set
#   5 SSL pre-training                      -> exp/ssl_<tag>/valid.<criterion>.ave.pth
#     (first, when the SSL config has a kmeans_ce loss (MT4SSL): k-means labels -> dump/kmeans/)
#   6 ASR fine-tuning (encoder from stage 5) -> exp/asr_<tag>/
#     (--train_mode bljust: stage 5 is skipped and stage 6 trains BL-JUST, supervised
#      and self-supervised at once, on the train set and the unlabelled pre-training set)
#     (--use_lm true: stage 6 also trains a language model -> exp/lm_<tag>/, ESPnet's lm_train)
#     (--use_ngram true: stage 6 also trains an n-gram over the ASR tokens -> exp/ngram_<tokens>/)
#   7 decoding of every test set (--use_lm / --use_ngram true: beam search with the LM / n-gram)
#   8 scoring (WER, CER) and exp/asr_<tag>/RESULTS.md
#   9 packing (espnet2.bin.pack): exp/ssl_<tag>/*.zip (SSL model) and exp/asr_<tag>/*.zip (ASR model)
#  10 upload of the packed models to the Hugging Face Hub (--skip_upload_hf false with --hf_repo / --hf_ssl_repo)
set -euo pipefail

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
die() {
    log "ERROR: $*" >&2
    exit 1
}
min() {
    local a="$1" b="$2"
    if [ "$a" -lt "$b" ]; then echo "$a"; else echo "$b"; fi
}
SECONDS=0

# General options
stage=1              # first stage to run
stop_stage=10000     # last stage to run
skip_data_prep=false # skip the data preparation stages 1-3 (as asr.sh)
skip_train=false     # skip the training stages 4-6 (as asr.sh)
skip_eval=false      # skip the decoding and scoring stages 7-8 (as asr.sh)
skip_upload_hf=true  # skip stage 10, the upload to the Hugging Face Hub (as asr.sh)
skip_stages=         # stages to skip by number, e.g. "5" (no asr.sh counterpart)
ngpu=1               # GPUs per training job (0: CPU)
num_nodes=1          # nodes for training (multi-node needs a cluster backend, e.g. slurm)
nj=32                # parallel jobs for feature extraction
inference_nj=32      # parallel jobs for decoding
gpu_inference=false  # decode on GPU
dumpdir=dump         # features
expdir=exp           # experiments
python=python3       # interpreter (path.sh activates the project venv)

# Data options
local_data_opts=     # options passed to local/data.sh
pretrain_set=        # unlabelled pre-training set (data/<set>: wav.scp [segments])
train_set=           # labelled fine-tuning set
valid_set=           # validation set (used by both SSL and ASR training)
test_sets=           # sets to decode and score, e.g. "dev test"
feats_type=fbank     # fbank: pre-compute fbank for all sets; raw: SSL reads waveforms (kaldi_fbank frontend)
feats_normalize=global_mvn  # global_mvn: global CMVN of the pre-training set; config: the configs' own normalize
fs=16000             # sampling rate: stage 2 resamples audio at another rate to it
min_frames=15        # shorter audio (10 ms frames) is bad audio: conv2d/conv2d6/conv2d8 subsampling needs 7/11/15
skip_bad_audio=false # drop (and list) unreadable, empty, too short or non-finite audio in stages 1-2 instead of failing
speed_perturb_factors=  # e.g. "0.9 1.0 1.1": the fine-tuning set becomes <train_set>_sp, its speed-perturbed copies (stage 1)
min_wav_duration=0   # seconds: shorter utterances of the pre-training and fine-tuning sets are left out (stage 2)
max_wav_duration=    # seconds: longer ones too (empty: no limit)

# Token options
token_type=char      # char or bpe
nbpe=5000            # BPE vocabulary size
bpemode=unigram      # sentencepiece model type
bpe_char_cover=1.0   # sentencepiece character coverage
token_listdir=data/token_list  # token lists: <token_listdir>/<char|bpe_<mode><nbpe>>/ (one per corpus variant, e.g. AMI mic)

# SSL options
ssl_config=conf/train_ssl_birq_conformer.yaml  # SSL config (objective + encoder)
ssl_tag=             # exp/ssl_<tag>; default: basename of ssl_config
ssl_exp=             # SSL experiment dir (overrides ssl_tag)
ssl_args=            # extra arguments for espnet2_birq.bin.ssl_train
num_splits_ssl=1     # >1: the pre-training set's lists are split into N parts, read one part at a time (ESPnet's --multiple_iterator, as asr.sh's --num_splits_asr)

# k-means targets (MT4SSL): run in stage 5 before training when the SSL config has a kmeans_ce loss
kmeans_source=fbank  # fbank: global-CMVN fbank stacked to the encoder frame rate; layer: a block of an earlier model
kmeans_model_file=   # layer: the earlier pre-trained model file, e.g. exp/ssl_x/valid.best_rq_acc.ave.pth
kmeans_model_config= # layer: its config (default: config.yaml next to the model file)
kmeans_layer=        # layer: the block whose output is clustered (1..num_blocks)
kmeans_sample_utts=5000     # utterances of the pre-training set sampled for the fit
kmeans_max_frames=1000000   # at most this many (encoder-rate) frames in the fit
kmeans_seed=0        # seed of the sample and of MiniBatchKMeans
kmeans_nj=           # parallel labelling jobs (default: --nj)
kmeans_dir=          # default: ${dumpdir}/kmeans/<source>[_layer<N>_<model dir>]_<clusters>

# ASR options
asr_config=conf/train_asr_ctc.yaml  # ASR fine-tuning config (head, optimiser, epochs)
asr_tag=             # exp/asr_<tag>; default: <asr_config>_<ssl_tag> (or _scratch)
asr_exp=             # ASR experiment dir (overrides asr_tag)
asr_args=            # extra arguments for espnet2.bin.asr_train
pretrained_model=auto # auto: <ssl_exp>/valid.<criterion>.ave.pth (the SSL config's best_model_criterion); none: from scratch; or a model file
freeze_encoder_epochs=0  # >0: first train N epochs with the encoder frozen, then max_epoch epochs unfrozen

# BL-JUST options (--train_mode bljust)
train_mode=pretrain_finetune  # pretrain_finetune: stages 5 + 6; bljust: one joint stage 6 (no stage 5)
bljust_config=conf/train_bljust_conformer.yaml  # BL-JUST config (encoder, CTC head, SSL loss, schedule)
bljust_args=         # extra arguments for espnet2_birq.bin.bljust_train

# Language model options (--use_lm true; ESPnet's lm_train, used by a beam-search --inference_config)
use_lm=false         # true: stage 6 also trains an LM (exp/lm_<tag>) and stage 7 decodes with it
lm_config=           # LM config for espnet2.bin.lm_train (required with --use_lm true)
lm_tag=              # exp/lm_<tag>; default: basename of lm_config
lm_exp=              # LM experiment dir (overrides lm_tag)
lm_args=             # extra arguments for espnet2.bin.lm_train
lm_train_text=       # LM training text: Kaldi text files (ids unique across them); default: data/<train_set>/text
lm_dev_text=         # LM validation text; default: data/<valid_set>/text
inference_lm=valid.loss.ave.pth  # the LM model file in lm_exp used for decoding

# N-gram options (--use_ngram true; ESPnet's kenlm scorer: asr_inference --ngram_file, weight
# ngram_weight of the --inference_config). The n-gram is over the ASR model's TOKENS.
use_ngram=false      # true: stage 6 also trains a token n-gram (exp/ngram_<tokens>), stage 7 decodes with it
ngram_num=3          # n-gram order
ngram_exp=           # n-gram dir; default: ${expdir}/ngram_<token list name> (char, bpe_unigram300, ...)
ngram_file=          # an existing n-gram over the ASR tokens (ARPA or kenlm binary): stage 7 uses it, nothing is trained
ngram_trainer=auto   # lmplz (kenlm's, as asr.sh), kaldingram (pip) or auto: lmplz when on PATH, else kaldingram

# Decoding options
inference_config=conf/decode_ctc_greedy.yaml  # decoding config
inference_asr_model=auto  # model file in asr_exp; auto: valid.acc.ave.pth, valid.cer_ctc.ave.pth or valid.loss.ave.pth
inference_tag=       # decode directory name; default: <config name, decode_ prefixed if needed>_asr_model_<model>
inference_args=      # extra arguments for espnet2_birq.bin.asr_decode
empty_hyps_ok=false  # stage 8: score a set whose hypotheses are all empty instead of failing

# Packing and upload options
hf_repo=             # stage 10 (--skip_upload_hf false): Hugging Face Hub repository for the packed ASR model, e.g. user/birq_asr
hf_ssl_repo=         # stage 10 (--skip_upload_hf false): Hugging Face Hub repository for the packed SSL model

help_message=$(cat << EOF
Usage: $0 [options]
SSL pre-training (BEST-RQ/BiRQ) and ASR fine-tuning, ESPnet egs2 style.
Options that mean the same as in ESPnet's egs2/TEMPLATE/asr1/asr.sh have asr.sh's names
(--pretrained_model, --inference_asr_model, --inference_lm, --feats_normalize, --skip_*, ...).

Stages:
  1 data prep (local/data.sh), validation, utt2dur
  2 fbank features (dump/fbank/<set>); audio at another rate than --fs is resampled to it
  3 token list (${token_listdir}/<char|bpe_<mode><nbpe>>/tokens.txt)
  4 collect stats (ESPnet's collect_stats): shape files (${expdir}/ssl_stats_*, ${expdir}/asr_stats_*),
    global CMVN of the pre-training set (${expdir}/ssl_stats_<feats_type>/train/feats_stats.npz)
  5 SSL pre-training (${expdir}/ssl_<tag>); with a kmeans_ce loss, first k-means labels
    (${dumpdir}/kmeans/<name>/{kmeans.pkl,<set>/labels.txt})
  6 ASR fine-tuning (${expdir}/asr_<tag>); --use_lm true: also the LM (${expdir}/lm_<tag>);
    --use_ngram true: also an n-gram over the ASR tokens (${expdir}/ngram_<tokens>/<N>gram.arpa)
  7 decoding of the test sets (--use_lm / --use_ngram true: with the LM / n-gram)
  8 scoring (WER/CER) and ${expdir}/asr_<tag>/RESULTS.md
  9 packing: ${expdir}/ssl_<tag>/ssl_<tag>_valid.<criterion>.ave.zip, ${expdir}/asr_<tag>/asr_<tag>_<model>.zip
 10 upload of the packed models to the Hugging Face Hub (--skip_upload_hf false, with --hf_repo
    and/or --hf_ssl_repo)

Options (default):
  General:
    --stage           # first stage (default: ${stage})
    --stop_stage      # last stage (default: ${stop_stage})
    --skip_data_prep  # skip the data preparation stages 1-3, as asr.sh (default: ${skip_data_prep})
    --skip_train      # skip the training stages 4-6 (collect stats, k-means, SSL, ASR, LM, n-gram),
                      # as asr.sh, whose collect-stats stages are training stages too (default: ${skip_train})
    --skip_eval       # skip the decoding and scoring stages 7-8, as asr.sh (default: ${skip_eval})
    --skip_upload_hf  # skip stage 10, the Hugging Face upload, as asr.sh (default: ${skip_upload_hf});
                      # asr.sh's --skip_upload (packing and Zenodo upload) has no counterpart:
                      # stage 9 packs unless --stop_stage 8
    --skip_stages     # stages to skip by number, e.g. "5" (default: "${skip_stages}"); for what the
                      # --skip_* flags cannot say, e.g. prepare a new set (1-4) and fine-tune (6-8)
                      # a model pre-trained elsewhere (--pretrained_model FILE) without stage 5
    --ngpu            # GPUs per training job, 0 for CPU (default: ${ngpu})
    --num_nodes       # nodes for training (default: ${num_nodes})
    --nj              # parallel feature extraction jobs (default: ${nj})
    --inference_nj    # parallel decoding jobs per test set (default: ${inference_nj})
    --gpu_inference   # decode on GPU (default: ${gpu_inference})
    --dumpdir         # feature directory (default: ${dumpdir})
    --expdir          # experiment directory (default: ${expdir})
    --python          # python interpreter (default: ${python})
  Data:
    --local_data_opts # options for local/data.sh (default: "${local_data_opts}")
    --pretrain_set    # unlabelled pre-training set (required)
    --train_set       # labelled fine-tuning set (required)
    --valid_set       # validation set (required)
    --test_sets       # sets to decode and score (required), e.g. "dev test"
    --feats_type      # fbank or raw (default: ${feats_type}); raw: SSL reads the pre-training
                      # waveforms with the in-model kaldi_fbank frontend (identical features)
    --feats_normalize # global_mvn: global CMVN of the pre-training set (stage 4) for SSL and ASR, as
                      # asr.sh's global_mvn; config: normalize and normalize_conf of --ssl_config,
                      # --asr_config and --bljust_config as written (as any other value in asr.sh;
                      # utterance_mvn or none: set normalize in the configs) (default: ${feats_normalize})
    --fs              # sampling rate in Hz, or kHz with a k: 16k = 16000 (default: ${fs}); stage 2
                      # resamples audio at another rate to it, counted and listed in
                      # ${dumpdir}/<fbank|raw>/<set>/resampled (raw: copies in .../resampled_audio);
                      # raw: the kaldi_fbank frontend gets --frontend_conf fs=<fs>
    --min_frames      # audio shorter than this many 10 ms frames is bad audio (default: ${min_frames});
                      # the encoder's subsampling fails on shorter input (conv2d: 7, conv2d6: 11, conv2d8: 15)
    --skip_bad_audio  # drop unreadable/empty recordings in stage 1 (data/<set>/bad_audio) and bad audio in
                      # stage 2 (dump/<fbank|raw>/<set>/bad_utts); later stages never see them (default: ${skip_bad_audio})
    --speed_perturb_factors # e.g. "0.9 1.0 1.1": stage 1 writes data/<train_set>_sp, the fine-tuning set's
                      # copies at each speed (ids sp0.9-..., as asr.sh and Kaldi; 1.0: the original ids),
                      # used for fine-tuning from stage 2 on; the pre-training set is not perturbed
                      # (default: "${speed_perturb_factors}")
    --min_wav_duration # seconds: stage 2 leaves out shorter utterances of the pre-training and fine-tuning
                      # sets (counted and listed in ${dumpdir}/filtered/<set>/removed_by_duration); never
                      # the validation and test sets. asr.sh uses 0.1 (default: ${min_wav_duration})
    --max_wav_duration # seconds: longer ones too; asr.sh uses 20 (default: "${max_wav_duration}": no limit)
  Tokens:
    --token_type      # char or bpe (default: ${token_type})
    --nbpe            # BPE vocabulary size (default: ${nbpe})
    --bpemode         # sentencepiece model type (default: ${bpemode})
    --bpe_char_cover  # sentencepiece character coverage (default: ${bpe_char_cover})
    --token_listdir   # where stage 3 writes the token lists (default: ${token_listdir}); runs on
                      # other training texts side by side (AMI's microphones) need one each
  SSL pre-training:
    --ssl_config      # SSL config (default: ${ssl_config}); BEST-RQ: conf/train_ssl_best_rq_*.yaml
    --ssl_tag         # experiment name suffix (default: basename of --ssl_config)
    --ssl_exp         # experiment dir (default: ${expdir}/ssl_<ssl_tag>)
    --ssl_args        # extra arguments for espnet2_birq.bin.ssl_train (default: "${ssl_args}")
    --num_splits_ssl  # >1: stage 5 splits the pre-training set's scp, shape (and k-means label)
                      # files into N parts (espnet2.bin.split_scps, ${expdir}/ssl_stats_<type>/splits<N>)
                      # and trains with --multiple_iterator true: one part in memory at a time,
                      # every part once per epoch, as asr.sh's --num_splits_asr (default: ${num_splits_ssl})
  k-means targets (stage 5, only for SSL configs with a kmeans_ce loss, e.g. MT4SSL):
    --kmeans_source   # fbank or layer (default: ${kmeans_source})
    --kmeans_model_file   # layer: earlier pre-trained model file (default: "${kmeans_model_file}")
    --kmeans_model_config # layer: its config (default: config.yaml next to it)
    --kmeans_layer    # layer: block to cluster (default: "${kmeans_layer}")
    --kmeans_sample_utts  # utterances sampled for the fit (default: ${kmeans_sample_utts})
    --kmeans_max_frames   # frames in the fit at most (default: ${kmeans_max_frames})
    --kmeans_seed     # seed of the sample and of the k-means (default: ${kmeans_seed})
    --kmeans_nj       # labelling jobs (default: --nj)
    --kmeans_dir      # output dir (default: ${dumpdir}/kmeans/<source>..._<clusters>)
  ASR fine-tuning:
    --asr_config      # ASR config (default: ${asr_config}); the encoder is copied from the SSL config
    --asr_tag         # experiment name suffix (default: <asr_config basename>_<ssl_tag>,
                      # _scratch with --pretrained_model none)
    --asr_exp         # experiment dir (default: ${expdir}/asr_<asr_tag>)
    --asr_args        # extra arguments for espnet2.bin.asr_train (default: "${asr_args}")
    --pretrained_model # auto (<ssl_exp>/valid.<criterion>.ave.pth, after the SSL config's first
                      # best_model_criterion), none (from scratch, same architecture) or a model
                      # file; its encoder.* initialises the encoder (asr.sh: --init_param of a
                      # file) (default: ${pretrained_model})
    --freeze_encoder_epochs # train N epochs with a frozen encoder first (default: ${freeze_encoder_epochs})
  BL-JUST (joint training):
    --train_mode      # pretrain_finetune (stages 5 + 6) or bljust: stage 6 trains BL-JUST on
                      # --train_set (labelled) and --pretrain_set (unlabelled) at once, stage 5 is
                      # skipped; --pretrained_model auto means from scratch, a model file initialises the
                      # encoder (default: ${train_mode})
    --bljust_config   # BL-JUST config (default: ${bljust_config})
    --bljust_args     # extra arguments for espnet2_birq.bin.bljust_train (default: "${bljust_args}")
  Language model (ESPnet's lm_train on text only; decoding with it needs a beam-search --inference_config):
    --use_lm           # stage 6 also trains an LM, stage 7 decodes with it (default: ${use_lm})
    --lm_config        # LM config for espnet2.bin.lm_train (required with --use_lm true)
    --lm_tag           # experiment name suffix (default: basename of --lm_config)
    --lm_exp           # experiment dir (default: ${expdir}/lm_<lm_tag>)
    --lm_args          # extra arguments for espnet2.bin.lm_train (default: "${lm_args}")
    --lm_train_text    # LM training text, Kaldi text files with ids unique across them
                       # (default: data/<train_set>/text; e.g. "data/train/text data/local/other_text/text")
    --lm_dev_text      # LM validation text (default: data/<valid_set>/text)
    --inference_lm     # LM model file in the LM exp dir used by stage 7 (default: ${inference_lm})
  N-gram (ESPnet's kenlm scorer over the ASR tokens; needs a beam-search --inference_config, weight ngram_weight):
    --use_ngram        # stage 6 also trains an n-gram on --lm_train_text tokenised with the token list
                       # (BPE pieces or characters), stage 7 decodes with it (default: ${use_ngram})
    --ngram_num        # its order (default: ${ngram_num})
    --ngram_exp        # its directory (default: ${expdir}/ngram_<token list name>)
    --ngram_file       # an existing n-gram over the same tokens, ARPA or kenlm binary, any path: stage 7
                       # decodes with it, stage 6 trains none (default: "${ngram_file}"); unlike
                       # asr.sh's --inference_ngram (a file name in --ngram_exp, the trained one)
    --ngram_trainer    # lmplz (kenlm's modified Kneser-Ney, on PATH), kaldingram (pip, Kneser-Ney)
                       # or auto: lmplz when on PATH, else kaldingram (default: ${ngram_trainer})
  Decoding:
    --inference_config # decoding config (default: ${inference_config})
    --inference_asr_model # model file in the ASR exp dir (default: ${inference_asr_model}: valid.acc.ave.pth,
                       # valid.cer_ctc.ave.pth or valid.loss.ave.pth, the first that exists)
    --inference_tag    # decode dir name (default: decode_<config>_asr_model_<model>)
    --inference_args   # extra arguments for espnet2_birq.bin.asr_decode (default: "${inference_args}")
    --empty_hyps_ok    # stage 8: score a set whose hypotheses are all empty (a model emitting only
                       # blanks) instead of failing (default: ${empty_hyps_ok})
  Packing and upload:
    --hf_repo          # stage 10 (with --skip_upload_hf false): Hub repository for the ASR model,
                       # e.g. user/birq_asr (default: "${hf_repo}")
    --hf_ssl_repo      # stage 10 (with --skip_upload_hf false): Hub repository for the SSL model
                       # (default: "${hf_ssl_repo}")

Every stage can be re-run: finished work is skipped (marker files .done) or redone
deterministically. Delete the marker (printed in the skip message) to force a re-run.
Markers record their inputs: stages 2-3 redo changed work, stages 5-6 refuse it.
A config (.yaml) counts by its parsed values: editing comments or layout redoes nothing.
One run at a time per dump/ and experiment directory (a lock; a second run refuses).
Commands run through \${train_cmd}, \${cuda_cmd} and \${decode_cmd} from cmd.sh.
EOF
)

log "$0 $*"
run_args=$(printf '%q ' "$0" "$@")

[ -f ./path.sh ] && . ./path.sh
[ -f ./cmd.sh ] && . ./cmd.sh
if [ -f utils/parse_options.sh ]; then
    . utils/parse_options.sh
else
    . "$(cd -P "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)/utils/parse_options.sh"
fi

if [ $# -ne 0 ]; then
    echo "${help_message}" >&2
    die "unexpected positional arguments: $*"
fi

# ---------------------------------------------------------------------------
# Checks and derived names
# ---------------------------------------------------------------------------
: "${train_cmd:=utils/run.pl}"
: "${cuda_cmd:=utils/run.pl}"
: "${decode_cmd:=utils/run.pl}"
[ -n "${pretrain_set}" ] || die "--pretrain_set is required"
[ -n "${train_set}" ] || die "--train_set is required"
[ -n "${valid_set}" ] || die "--valid_set is required"
[ -n "${test_sets}" ] || die "--test_sets is required"
case "${feats_type}" in fbank|raw) ;; *) die "--feats_type must be fbank or raw, got '${feats_type}'" ;; esac
case "${token_type}" in char|bpe) ;; *) die "--token_type must be char or bpe, got '${token_type}'" ;; esac
case "${train_mode}" in pretrain_finetune|bljust) ;; *) die "--train_mode must be pretrain_finetune or bljust, got '${train_mode}'" ;; esac
if [ "${use_lm}" = true ] && [ -z "${lm_config}" ]; then
    die "--use_lm true needs --lm_config (an espnet2.bin.lm_train config, e.g. the recipe's conf/train_lm_*.yaml)"
fi
case "${feats_normalize}" in
    global_mvn|config) ;;
    *) die "--feats_normalize must be global_mvn or config (the configs' own normalize: set utterance_mvn or none there), got '${feats_normalize}'" ;;
esac
if [ "${skip_upload_hf}" = false ] && [ -z "${hf_repo}" ] && [ -z "${hf_ssl_repo}" ]; then
    die "--skip_upload_hf false needs --hf_repo and/or --hf_ssl_repo (the Hub repositories to upload to)"
fi
case "${ngram_trainer}" in auto|lmplz|kaldingram) ;; *) die "--ngram_trainer must be auto, lmplz or kaldingram, got '${ngram_trainer}'" ;; esac
[ -z "${ngram_file}" ] || use_ngram=true  # an external n-gram is decoded with, and none is trained
if [ "${train_mode}" = bljust ] && [ "${feats_type}" != fbank ]; then
    # The unlabelled set goes through the ASR model's input path, which reads fbank.
    die "--train_mode bljust needs --feats_type fbank (the unlabelled set is read as fbank features)"
fi
for x in stage stop_stage ngpu num_nodes nj inference_nj nbpe freeze_encoder_epochs min_frames kmeans_sample_utts kmeans_max_frames kmeans_seed ngram_num num_splits_ssl; do
    [[ ${!x} =~ ^[0-9]+$ ]] || die "--${x} must be a non-negative integer, got '${!x}'"
done
[ "${ngram_num}" -ge 1 ] || die "--ngram_num must be >= 1"
[ "${num_splits_ssl}" -ge 1 ] || die "--num_splits_ssl must be >= 1"
for x in min_wav_duration max_wav_duration ${speed_perturb_factors}; do
    case "${x}" in
        min_wav_duration|max_wav_duration) v=${!x}; [ -n "${v}" ] || continue; what="--${x}" ;;
        *) v=${x}; what="a --speed_perturb_factors entry" ;;
    esac
    [[ ${v} =~ ^[0-9]*\.?[0-9]+$ ]] || die "${what} must be a non-negative number (seconds or a factor), got '${v}'"
done
for x in ${speed_perturb_factors}; do
    awk -v f="${x}" 'BEGIN { exit !(f > 0) }' || die "--speed_perturb_factors: a factor must be positive, got '${x}'"
done
[ "${nj}" -ge 1 ] || die "--nj must be >= 1"
if [ "${train_mode}" = bljust ] && [ "${freeze_encoder_epochs}" -gt 0 ]; then
    die "--freeze_encoder_epochs applies to fine-tuning; BL-JUST trains the encoder from its first update (--train_mode bljust)"
fi
[ "${inference_nj}" -ge 1 ] || die "--inference_nj must be >= 1"
# --fs in Hz, or in kHz with a k as asr.sh accepts it (16k = 16000, 44.1k = 44100)
if [[ ${fs} =~ ^([0-9]+)(\.([0-9]{1,3}))?[kK]$ ]]; then
    _frac=${BASH_REMATCH[3]}000
    fs=$((10#${BASH_REMATCH[1]} * 1000 + 10#${_frac:0:3}))
elif [[ ${fs} =~ ^[0-9]+$ ]]; then
    fs=$((10#${fs}))
else
    die "--fs must be a sampling rate in Hz (16000) or in kHz with a k (16k, 44.1k), got '${fs}'"
fi
[ "${fs}" -gt 0 ] || die "--fs must be positive, got ${fs}"

export PYTHONIOENCODING=UTF-8
export PYTHON=${python}  # used by the utils/*.sh wrappers

# Sets: unique, in order. With --speed_perturb_factors, fine-tuning uses <train_set>_sp
# (stage 1 makes it from the set local/data.sh wrote).
source_train_set=${train_set}
[ -n "${speed_perturb_factors}" ] && train_set=${train_set}_sp
source_sets=$(echo "${pretrain_set} ${source_train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
all_sets=$(echo "${pretrain_set} ${train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
labelled_sets=$(echo "${train_set} ${valid_set} ${test_sets}" | tr ' ' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
if [ "${feats_type}" = fbank ]; then
    fbank_sets=${all_sets}
else
    # raw: the pre-training set keeps its waveforms (unless it is also a labelled set)
    # and the validation set is read raw by SSL training but also needs fbank for ASR.
    fbank_sets=${labelled_sets}
fi
fbank_dir=${dumpdir}/fbank
raw_dir=${dumpdir}/raw  # --feats_type raw: checked wav.scp and speech_shape of the SSL sets

if [ "${token_type}" = bpe ]; then
    token_dir=${token_listdir}/bpe_${bpemode}${nbpe}
    bpemodel=${token_dir}/bpe.model
else
    token_dir=${token_listdir}/char
    bpemodel=none
fi
token_list=${token_dir}/tokens.txt

[ -n "${ssl_tag}" ] || ssl_tag=$(basename "${ssl_config}" .yaml)
[ -n "${ssl_exp}" ] || ssl_exp=${expdir}/ssl_${ssl_tag}
ssl_stats_dir=${expdir}/ssl_stats_${feats_type}
asr_stats_dir=${expdir}/asr_stats_fbank_${token_type}
[ "${token_type}" = bpe ] && asr_stats_dir+=${nbpe}
# Global CMVN of the pre-training set (stage 4), shared by SSL and ASR training
cmvn_stats=${ssl_stats_dir}/train/feats_stats.npz

# The pre-trained model file: ESPnet's average of the best checkpoints by the SSL
# config's first best_model_criterion (BEST-RQ and BiRQ: valid.best_rq_acc.ave.pth).
ssl_model_file=valid.loss.ave.pth
if [ -f "${ssl_config}" ]; then
    ssl_model_file=$(${python} -m espnet2_birq.bin.check_init name "${ssl_config}") \
        || die "cannot read best_model_criterion from ${ssl_config}"
    [ -n "${ssl_model_file}" ] || die "no best_model_criterion found in ${ssl_config}"
fi
# BL-JUST: from scratch unless a model file is given.
if [ "${train_mode}" = bljust ] && [ "${pretrained_model}" = auto ]; then pretrained_model=none; fi
case "${pretrained_model}" in
    auto) init_ckpt=${ssl_exp}/${ssl_model_file}; init_name=${ssl_tag} ;;
    none) init_ckpt=; init_name=scratch ;;
    *) init_ckpt=${pretrained_model}; init_name=init_$(basename "$(dirname "${pretrained_model}")") ;;
esac
if [ -z "${asr_tag}" ]; then
    if [ "${train_mode}" = bljust ]; then
        asr_tag=$(basename "${bljust_config}" .yaml)_${init_name}
    else
        asr_tag=$(basename "${asr_config}" .yaml)_${init_name}
    fi
    [ "${token_type}" = bpe ] && asr_tag+=_bpe${nbpe}
    [ "${freeze_encoder_epochs}" -gt 0 ] && asr_tag+=_freeze${freeze_encoder_epochs}
fi
[ -n "${asr_exp}" ] || asr_exp=${expdir}/asr_${asr_tag}
[ -n "${lm_tag}" ] || lm_tag=$(basename "${lm_config:-lm}" .yaml)
[ -n "${lm_exp}" ] || lm_exp=${expdir}/lm_${lm_tag}
# Text of the original (not speed-perturbed) fine-tuning set: perturbation copies audio, not text.
[ -n "${lm_train_text}" ] || lm_train_text=data/${source_train_set}/text
[ -n "${lm_dev_text}" ] || lm_dev_text=data/${valid_set}/text
# The n-gram depends on the tokens only (not on the ASR model): one per token list.
[ -n "${ngram_exp}" ] || ngram_exp=${expdir}/ngram_$(basename "${token_dir}")
ngram_arpa=${ngram_exp}/${ngram_num}gram.arpa
ngram_bin=${ngram_exp}/${ngram_num}gram.bin  # kenlm's binary, when build_binary is on PATH

if [ "${gpu_inference}" = true ]; then
    _decode_cmd="${cuda_cmd}"; _decode_ngpu=1
else
    _decode_cmd="${decode_cmd}"; _decode_ngpu=0
fi

run_stage() {  # run_stage N: is stage N selected?
    local n=$1 s
    [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ] || return 1
    # asr.sh's groups: data preparation, training (collect stats included), evaluation, Hub upload
    [ "${skip_data_prep}" = true ] && [ "${n}" -ge 1 ] && [ "${n}" -le 3 ] && return 1
    [ "${skip_train}" = true ] && [ "${n}" -ge 4 ] && [ "${n}" -le 6 ] && return 1
    [ "${skip_eval}" = true ] && [ "${n}" -ge 7 ] && [ "${n}" -le 8 ] && return 1
    [ "${skip_upload_hf}" = true ] && [ "${n}" -eq 10 ] && return 1
    for s in ${skip_stages}; do
        [ "${s}" = "${n}" ] && return 1
    done
    return 0
}
need() {  # need FILE STAGE: stop with a message when a prerequisite is missing
    [ -e "$1" ] || die "$1 missing: run --stage $2 first"
}
# Stage markers record what their result was computed from: the checksum of each
# input file and the options that matter.  A marker whose inputs changed is stale.
# A YAML config counts by its parsed content (ESPnet reads it with yaml.safe_load):
# comments, formatting and key order never make a finished stage stale; values do.
config_digest() {  # config_digest FILE: md5 of the parsed YAML, dumped canonically (nothing: unparsable)
    ${python} -c 'import hashlib, json, sys, yaml; data = yaml.safe_load(open(sys.argv[1], encoding="utf-8")); print(hashlib.md5(json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest())' \
        "$1" 2> /dev/null || true
}
fingerprint() {  # fingerprint INPUT...: one line per input (a file, a YAML config, or a name=value option)
    local x digest
    for x in "$@"; do
        if [[ ${x} == *=* && ! -e ${x} ]]; then
            echo "option ${x}"
        elif [ -f "${x}" ]; then
            digest=
            [[ ${x} == *.yaml || ${x} == *.yml ]] && digest=$(config_digest "${x}")
            if [[ ${digest} =~ ^[0-9a-f]{32}$ ]]; then
                echo "config ${x} ${digest}"
            else  # not YAML, or not parsable as YAML: byte for byte
                echo "file ${x} $(md5sum < "${x}" | cut -d ' ' -f 1)"
            fi
        else
            echo "file ${x} absent"
        fi
    done
}
marker_changes() {  # marker_changes MARKER INPUT...: the recorded inputs that differ now (empty: none)
    local recorded now
    grep -q '^# inputs$' "$1" || return 0  # a marker that records no inputs: nothing to compare
    recorded=$(sed -n '/^# inputs$/,$p' "$1" | tail -n +2)
    shift
    now=$(fingerprint "$@")
    # both sides through $(...) and echo: a marker without inputs (recorded and now empty) is unchanged
    diff <(echo "${recorded}") <(echo "${now}") | sed -n 's/^> /now: /p; s/^< /was: /p' || true
}
is_done() {  # is_done MARKER WHAT [INPUT...]: done and its inputs unchanged? (changed: redo)
    local marker=$1 what=$2 changes
    shift 2
    [ -f "${marker}" ] || return 1
    changes=$(marker_changes "${marker}" "$@")
    if [ -n "${changes}" ]; then
        log "${what}: inputs changed since ${marker} was written, redoing:"
        echo "${changes}" | head -n 10 | sed 's/^/    /'
        rm -f "${marker}"
        return 1
    fi
    log "${what}: already done, skipping (remove ${marker} to redo)"
    return 0
}
is_done_or_refuse() {  # is_done_or_refuse MARKER WHAT HOWTO [INPUT...]: like is_done; changed inputs are an error
    local marker=$1 what=$2 howto=$3 changes
    shift 3
    [ -f "${marker}" ] || return 1
    changes=$(marker_changes "${marker}" "$@")
    if [ -n "${changes}" ]; then
        echo "${changes}" | head -n 10 | sed 's/^/    /' >&2
        die "${what}: its inputs changed since ${marker} was written (above). ${howto}"
    fi
    log "${what}: already done, skipping (remove ${marker} to redo)"
    return 0
}
mark_done() {  # mark_done MARKER [INPUT...]: atomic marker recording its inputs
    local marker=$1
    shift
    mkdir -p "$(dirname "${marker}")"
    { date; echo "# inputs"; fingerprint "$@"; } > "${marker}.tmp.$$" && mv -f "${marker}.tmp.$$" "${marker}"
}
die_with_log() {  # die_with_log LOG MESSAGE: the log's last lines on the console, then die
    if [ -f "$1" ]; then
        echo "---- last 20 lines of $1 ----" >&2
        tail -n 20 "$1" >&2
    fi
    die "$2"
}
die_bad_audio() {  # die_bad_audio OUT MESSAGE: list every bad utterance of all jobs of a set, then die
    local out=$1 list
    list=$(cat "${out}"/bad_audio_errors.* 2> /dev/null | LC_ALL=C sort || true)
    if [ -n "${list}" ]; then
        cat "${out}"/bad_audio_errors.* | LC_ALL=C sort > "${out}/bad_audio_errors"
        echo "---- $(echo "${list}" | wc -l) utterance(s) of this set with bad audio (utterance, audio, reason; also in ${out}/bad_audio_errors) ----" >&2
        echo "${list}" | head -n 500 >&2
        die "$2: repair or remove the audio above, or re-run with --skip_bad_audio true to drop and list it"
    fi
    die "$2 (cause above)"
}
# One run of ssl_asr.sh at a time per directory it writes (a second run refuses).
# The lock is an flock on DIR/.ssl_asr.sh.lock held by this shell and the jobs it
# starts, and released when they end, however they end; the file names the pid.
declare -A lock_fds=()
acquire_lock() {  # acquire_lock DIR
    local dir=$1 fd holder
    mkdir -p "${dir}"
    exec {fd}>> "${dir}/.ssl_asr.sh.lock"
    if ! flock -n "${fd}"; then
        holder=$(cat "${dir}/.ssl_asr.sh.lock" 2> /dev/null || true)
        die "${dir} is in use by another run of ssl_asr.sh (${holder:-pid unknown}). Wait for it to finish or stop it (kill that pid); the lock is released when it and its jobs have ended."
    fi
    echo "pid $$ on $(hostname), started $(date '+%Y-%m-%dT%H:%M:%S'): ${run_args}" > "${dir}/.ssl_asr.sh.lock"
    lock_fds[${dir}]=${fd}
}
release_lock() {  # release_lock DIR
    local fd=${lock_fds[$1]:-}
    [ -n "${fd}" ] || return 0
    exec {fd}>&-
    unset "lock_fds[$1]"
}
num_lines() { wc -l < "$1" | tr -d ' '; }
newer_of() {  # newer_of FILE FILE: the resolved path of the more recently modified of the two
    local a b
    a=$(readlink -f "$1")
    b=$(readlink -f "$2")
    if [ "${b}" -nt "${a}" ]; then echo "${b}"; else echo "${a}"; fi
}
write_rerun() {  # write_rerun DIR STAGE: executable DIR/run.sh repeating this command from STAGE (as ESPnet's exp/*/run.sh)
    mkdir -p "$1"
    {
        echo "#!/usr/bin/env bash"
        echo "# Re-runs the command that made this directory, from stage $2 on (extra options are appended)."
        echo "# Finished stages are skipped: remove their .done marker to redo them."
        echo "cd $(printf '%q' "${PWD}") || exit 1"
        echo "${run_args}--stage $2 \"\$@\"; exit \$?"
    } > "$1/run.sh"
    chmod +x "$1/run.sh"
}

keep_utts() {  # keep_utts OUT DATA: OUT/{text,utt2spk} = DATA's, for the utterances OUT kept
    local out=$1 data=$2 kept f n_bad
    kept=${out}/feats.scp
    [ -f "${kept}" ] || kept=${out}/wav.scp
    for f in text utt2spk; do
        [ -f "${data}/${f}" ] || continue
        awk 'NR == FNR {keep[$1] = 1; next} $1 in keep' "${kept}" "${data}/${f}" > "${out}/${f}.tmp"
        mv -f "${out}/${f}.tmp" "${out}/${f}"
    done
    n_bad=0
    [ -f "${out}/bad_utts" ] && n_bad=$(num_lines "${out}/bad_utts")
    if [ "${n_bad}" -gt 0 ]; then
        log "WARNING: ${n_bad} of $(num_lines "${data}/utt2spk") utterances of ${data} skipped (bad audio), listed in ${out}/bad_utts; every later stage uses ${out}/ without them"
    fi
}
report_resampled() {  # report_resampled OUT DATA: how many of DATA's recordings stage 2 resampled to --fs
    local out=$1 data=$2 n
    [ -s "${out}/resampled" ] || return 0
    n=$(num_lines "${out}/resampled")
    log "WARNING: ${n} of $(num_lines "${data}/wav.scp") recordings of ${data} are not at ${fs} Hz and were resampled to it (--fs), listed with their rates in ${out}/resampled"
}

# The n-gram trainer is checked now, not after the hours of fine-tuning before it in stage 6.
if run_stage 6 && [ "${use_ngram}" = true ] && [ -z "${ngram_file}" ]; then
    if [ "${ngram_trainer}" = lmplz ]; then
        command -v lmplz > /dev/null || die "--ngram_trainer lmplz: kenlm's lmplz is not on PATH (build kenlm's lmplz and build_binary, see docs/recipes.md \"N-gram language models\"; or --ngram_trainer kaldingram)"
    elif [ "${ngram_num}" -gt 5 ] && ! { [ "${ngram_trainer}" = auto ] && command -v lmplz > /dev/null; }; then
        die "kaldingram trains n-grams up to order 5, not --ngram_num ${ngram_num} (kenlm's lmplz: --ngram_trainer lmplz)"
    fi
fi

# Jobs started through run.pl/slurm.pl stop when this script dies (utils/job_runner.py).
export RECIPE_PID=$$
command -v flock > /dev/null || die "flock (util-linux) is needed for the experiment-directory locks"
if run_stage 1 || run_stage 2 || run_stage 3 || run_stage 4; then
    acquire_lock "${dumpdir}"  # data/, dump/ and the token list are shared by every experiment
fi
run_stage 5 && acquire_lock "${ssl_exp}"
if run_stage 6 || run_stage 7 || run_stage 8; then acquire_lock "${asr_exp}"; fi

# ---------------------------------------------------------------------------
if run_stage 1; then
    log "Stage 1: data preparation: local/data.sh ${local_data_opts}"
    [ -x local/data.sh ] || [ -f local/data.sh ] || die "local/data.sh not found (run ssl_asr.sh from a recipe directory)"
    # shellcheck disable=SC2086
    bash local/data.sh ${local_data_opts}
    for dset in ${source_sets}; do
        [ -d "data/${dset}" ] || die "data/${dset} was not created by local/data.sh"
        if [ "${dset}" = "${pretrain_set}" ] && [ ! -f "data/${dset}/text" ]; then
            utils/validate_data_dir.sh --no-text "data/${dset}"
        else
            utils/validate_data_dir.sh "data/${dset}"
        fi
        if [ ! -s "data/${dset}/utt2dur" ] || [ "$(num_lines "data/${dset}/utt2dur")" != "$(num_lines "data/${dset}/utt2spk")" ]; then
            log "computing data/${dset}/utt2dur"
            # with --skip_bad_audio true, unreadable or empty recordings are dropped from
            # data/${dset} (listed in data/${dset}/bad_audio) each time stage 1 runs
            utils/get_utt2dur.sh --nj "${nj}" --skip_bad_audio "${skip_bad_audio}" "data/${dset}" \
                || die "utt2dur of data/${dset} failed (above)"
        fi
        awk -v d="data/${dset}" '{n++; s+=$2} END {printf "%s: %d utterances, %.2f hours\n", d, n, s/3600}' "data/${dset}/utt2dur"
    done
    if [ -n "${speed_perturb_factors}" ]; then
        # Kaldi's perturb_data_dir_speed.sh + combine_data.sh, as asr.sh does: wav.scp pipes
        # (espnet2_birq.bin.speed_perturb) resample each recording when stage 2 reads it.
        _inputs=("data/${source_train_set}/wav.scp" "data/${source_train_set}/segments" "data/${source_train_set}/utt2spk"
            "data/${source_train_set}/text" "data/${source_train_set}/utt2dur" "factors=${speed_perturb_factors}" "python=${python}")
        if ! is_done "data/${train_set}/.done" "speed perturbation data/${train_set}" "${_inputs[@]}"; then
            log "speed perturbation (${speed_perturb_factors}): data/${source_train_set} -> data/${train_set}"
            # shellcheck disable=SC2086
            ${python} -m espnet2_birq.utils.datadir speed_perturb --python "${python}" \
                "data/${source_train_set}" "data/${train_set}" ${speed_perturb_factors} \
                || die "speed perturbation of data/${source_train_set} failed (above)"
            mark_done "data/${train_set}/.done" "${_inputs[@]}"
        fi
        awk -v d="data/${train_set}" '{n++; s+=$2} END {printf "%s: %d utterances, %.2f hours\n", d, n, s/3600}' "data/${train_set}/utt2dur"
    fi
fi

# The data dir stage 2 reads for SET: data/SET, or for the pre-training and fine-tuning
# sets with --min_wav_duration/--max_wav_duration, its copy without the utterances out of
# those limits (their list: removed_by_duration; the count is printed).
filtered_dir=${dumpdir}/filtered
filter_by_duration() {  # filter_by_duration SET: set_dir=the data dir to read
    local dset=$1 out=${filtered_dir}/$1 n_removed _inputs
    set_dir=data/${dset}
    if { [ "${min_wav_duration}" = 0 ] && [ -z "${max_wav_duration}" ]; } \
        || { [ "${dset}" != "${pretrain_set}" ] && [ "${dset}" != "${train_set}" ]; } \
        || [ "${dset}" = "${valid_set}" ] || [[ " ${test_sets} " == *" ${dset} "* ]]; then
        return 0
    fi
    need "data/${dset}/utt2dur" 1
    _inputs=("data/${dset}/wav.scp" "data/${dset}/segments" "data/${dset}/utt2spk" "data/${dset}/text"
        "data/${dset}/utt2dur" "min_wav_duration=${min_wav_duration}" "max_wav_duration=${max_wav_duration}")
    if ! is_done "${out}/.done" "duration filter ${out}" "${_inputs[@]}"; then
        ${python} -m espnet2_birq.utils.datadir filter_duration --min "${min_wav_duration}" \
            ${max_wav_duration:+--max "${max_wav_duration}"} "data/${dset}" "${out}" \
            || die "duration filter of data/${dset} failed (above)"
        mark_done "${out}/.done" "${_inputs[@]}"
    fi
    n_removed=$(num_lines "${out}/removed_by_duration")
    if [ "${n_removed}" -gt 0 ]; then
        log "WARNING: ${n_removed} of $(num_lines "data/${dset}/utt2spk") utterances of data/${dset} left out (shorter than ${min_wav_duration} s${max_wav_duration:+ or longer than ${max_wav_duration} s}), listed in ${out}/removed_by_duration"
    fi
    set_dir=${out}
}

# ---------------------------------------------------------------------------
if run_stage 2; then
    log "Stage 2: features (feats_type=${feats_type}) -> ${fbank_dir}"
    # Audio at another sampling rate than --fs is resampled to it (libsoxr, the resampler of
    # sox's rate effect), counted and listed in <out>/resampled: when the fbank is computed,
    # and (raw) as a copy in ${raw_dir}/<set>/resampled_audio, which ESPnet's sound loader
    # reads (it opens files, not "sox ... |" pipes), as asr.sh's format_wav_scp.sh does.
    if [ "${feats_type}" = raw ] && [ -f "data/${pretrain_set}/segments" ]; then
        # ESPnet's "sound" reader takes wav.scp entries as utterances; with segments
        # they are whole recordings.
        die "--feats_type raw cannot read data/${pretrain_set}: it has a segments file (use --feats_type fbank)"
    fi
    for dset in ${fbank_sets}; do
        need "data/${dset}/wav.scp" 1
        filter_by_duration "${dset}"
        out=${fbank_dir}/${dset}
        _inputs=("${set_dir}/wav.scp" "${set_dir}/segments" "fs=${fs}" "skip_bad_audio=${skip_bad_audio}" "min_frames=${min_frames}")
        is_done "${out}/.done" "fbank ${dset}" "${_inputs[@]}" && continue
        n_utt=$(num_lines "${set_dir}/utt2spk")
        _nj=$(min "${nj}" "${n_utt}")
        mkdir -p "${out}/log"
        rm -f "${out}"/feats.*.ark "${out}"/feats.*.scp "${out}"/utt2num_frames.* "${out}"/bad_utts.* "${out}"/bad_audio_errors.* "${out}"/resampled.*
        utils/split_data.sh "${set_dir}" "${_nj}" > /dev/null
        log "fbank ${dset}: ${n_utt} utterances, ${_nj} jobs, log: ${out}/log/extract_fbank.*.log"
        # shellcheck disable=SC2086
        ${train_cmd} JOB=1:"${_nj}" "${out}/log/extract_fbank.JOB.log" \
            ${python} -m espnet2_birq.bin.extract_fbank \
                --data_dir "${set_dir}/split${_nj}/JOB" --out_dir "${out}" --name feats.JOB \
                --fs "${fs}" --skip_bad_audio "${skip_bad_audio}" --min_frames "${min_frames}" \
            || die_bad_audio "${out}" "feature extraction of ${dset} failed"
        ${python} -m espnet2_birq.bin.extract_fbank merge --out_dir "${out}" --nj "${_nj}" --data_dir "${set_dir}"
        keep_utts "${out}" "${set_dir}"
        report_resampled "${out}" "${set_dir}"
        mark_done "${out}/.done" "${_inputs[@]}"
    done
    if [ "${feats_type}" = raw ]; then
        # SSL reads these sets' waveforms: check them now (ESPnet's sound loader
        # ignores the sampling rate and crashes on multi-channel or tiny files), and
        # resample the recordings at another rate into ${raw_dir}/<set>/resampled_audio.
        for dset in $(echo "${pretrain_set} ${valid_set}" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
            need "data/${dset}/wav.scp" 1
            filter_by_duration "${dset}"
            out=${raw_dir}/${dset}
            _inputs=("${set_dir}/wav.scp" "fs=${fs}" "skip_bad_audio=${skip_bad_audio}" "min_frames=${min_frames}")
            is_done "${out}/.done" "raw audio check ${dset}" "${_inputs[@]}" && continue
            n_utt=$(num_lines "${set_dir}/utt2spk")
            _nj=$(min "${nj}" "${n_utt}")
            mkdir -p "${out}/log"
            rm -f "${out}"/wav.*.scp "${out}"/utt2num_samples.* "${out}"/bad_utts.* "${out}"/bad_audio_errors.* "${out}"/resampled.*
            rm -rf "${out}/resampled_audio"
            utils/split_data.sh "${set_dir}" "${_nj}" > /dev/null
            log "raw audio check ${dset}: ${n_utt} utterances, ${_nj} jobs, log: ${out}/log/check_audio.*.log"
            # shellcheck disable=SC2086
            ${train_cmd} JOB=1:"${_nj}" "${out}/log/check_audio.JOB.log" \
                ${python} -m espnet2_birq.bin.extract_fbank check \
                    --data_dir "${set_dir}/split${_nj}/JOB" --out_dir "${out}" --name wav.JOB \
                    --fs "${fs}" --skip_bad_audio "${skip_bad_audio}" --min_frames "${min_frames}" \
                || die_bad_audio "${out}" "audio check of ${dset} failed"
            ${python} -m espnet2_birq.bin.extract_fbank merge --kind raw --prefix wav \
                --out_dir "${out}" --nj "${_nj}" --data_dir "${set_dir}"
            keep_utts "${out}" "${set_dir}"
            report_resampled "${out}" "${set_dir}"
            mark_done "${out}/.done" "${_inputs[@]}"
        done
    fi
fi

# ---------------------------------------------------------------------------
if run_stage 3; then
    log "Stage 3: token list (${token_type}) from data/${train_set}/text -> ${token_list}"
    need "data/${train_set}/text" 1
    _inputs=("data/${train_set}/text" "token_type=${token_type}" "nbpe=${nbpe}" "bpemode=${bpemode}" "bpe_char_cover=${bpe_char_cover}")
    if ! is_done "${token_dir}/.done" "token list ${token_list}" "${_inputs[@]}"; then
        mkdir -p "${token_dir}"
        if [ "${token_type}" = bpe ]; then
            cut -f 2- -d " " "data/${train_set}/text" > "${token_dir}/train.txt"
            # shellcheck disable=SC2086
            # ESPnet's asr.sh runs an `spm_train` command from an ESPnet source checkout (the espnet
            # wheel has no such command or espnet2.bin module); this is the same call through
            # sentencepiece's Python API.
            ${python} -c 'import sys, sentencepiece as spm; spm.SentencePieceTrainer.Train(" ".join(sys.argv[1:]))' \
                --input="${token_dir}/train.txt" --vocab_size="${nbpe}" --model_type="${bpemode}" \
                --model_prefix="${token_dir}/bpe" --character_coverage="${bpe_char_cover}" \
                --input_sentence_size=100000000 > "${token_dir}/spm_train.log" 2>&1 \
                || die_with_log "${token_dir}/spm_train.log" "spm_train failed (e.g. --nbpe ${nbpe} larger than the text allows); see ${token_dir}/spm_train.log"
        fi
        ${python} -m espnet2.bin.tokenize_text \
            --token_type "${token_type}" --bpemodel "${bpemodel}" \
            --input "data/${train_set}/text" --output "${token_list}.tmp" --field 2- \
            --cleaner none --g2p none --write_vocabulary true \
            --add_symbol "<blank>:0" --add_symbol "<unk>:1" --add_symbol "<sos/eos>:-1" \
            2> "${token_dir}/tokenize_text.log" || die_with_log "${token_dir}/tokenize_text.log" "tokenize_text failed; see ${token_dir}/tokenize_text.log"
        mv -f "${token_list}.tmp" "${token_list}"
        mark_done "${token_dir}/.done" "${_inputs[@]}"
    fi
    log "token list: ${token_list} ($(num_lines "${token_list}") tokens)"
fi

# ---------------------------------------------------------------------------
# ESPnet's asr.sh stage 10: split the key files, one --collect_stats job per part through
# ${train_cmd}, then espnet2.bin.aggregate_stats_dirs sums the statistics and joins the
# shape files.
collect_stats() {  # collect_stats OUT_DIR TRAIN_KEYS VALID_KEYS AGGREGATE_OPTS MODULE ARGS...
    local out=$1 train_keys=$2 valid_keys=$3 agg_opts=$4 module=$5 _nj n _logdir=$1/logdir
    shift 5
    n=$(min "$(num_lines "${train_keys}")" "$(num_lines "${valid_keys}")")
    _nj=$(min "${nj}" "${n}")
    rm -rf "${_logdir}"
    mkdir -p "${_logdir}"
    for pair in "train:${train_keys}" "valid:${valid_keys}"; do
        awk -v n="${_nj}" -v f="${_logdir}/${pair%%:*}" -v total="$(num_lines "${pair#*:}")" \
            '{ j = int((NR - 1) * n / total) + 1; print > (f "." j ".scp") }' "${pair#*:}"
    done
    log "collect stats -> ${out}: ${_nj} jobs, log: ${_logdir}/stats.*.log"
    # shellcheck disable=SC2086
    ${train_cmd} JOB=1:"${_nj}" "${_logdir}/stats.JOB.log" \
        ${python} -m "${module}" --collect_stats true --ngpu 0 \
            --train_shape_file "${_logdir}/train.JOB.scp" \
            --valid_shape_file "${_logdir}/valid.JOB.scp" \
            --output_dir "${_logdir}/stats.JOB" "$@" \
        || die "collect stats (${module}) failed; see ${_logdir}/stats.*.log"
    # shellcheck disable=SC2046,SC2086
    ${python} -m espnet2.bin.aggregate_stats_dirs ${agg_opts} --output_dir "${out}" \
        $(for j in $(seq "${_nj}"); do echo "--input_dir ${_logdir}/stats.${j}"; done) \
        > "${_logdir}/aggregate.log" 2>&1 \
        || die_with_log "${_logdir}/aggregate.log" "aggregating ${_logdir}/stats.* failed; see ${_logdir}/aggregate.log"
}

text_shapes_with_vocab() {  # text_shapes_with_vocab STATS_DIR: {train,valid}/text_shape.<token_type>
    # "utt ntokens,vocab": asr.sh appends the vocabulary size for the batch-bins count
    local split vocab
    vocab=$(num_lines "${token_list}")
    for split in train valid; do
        awk -v n="${vocab}" '{ print $0 "," n }' "$1/${split}/text_shape" > "$1/${split}/text_shape.${token_type}"
    done
}

if run_stage 4; then
    log "Stage 4: collect stats (shape files, global CMVN) -> ${ssl_stats_dir}, ${asr_stats_dir}"
    # SSL: speech_shape (frames,80 of the fbank; raw: samples of the checked audio) and
    # feats_stats.npz, the global CMVN of what the model's input (fbank, or the kaldi_fbank
    # frontend's output) is on the pre-training set.
    if [ "${feats_type}" = fbank ]; then
        _ssl_data=("${fbank_dir}/${pretrain_set}/feats.scp" "${fbank_dir}/${valid_set}/feats.scp")
        _ssl_opts=(--input_size 80 --train_data_path_and_name_and_type "${_ssl_data[0]},speech,kaldi_ark"
            --valid_data_path_and_name_and_type "${_ssl_data[1]},speech,kaldi_ark")
        need "${_ssl_data[0]}" 2
        need "${_ssl_data[1]}" 2
    else
        _ssl_data=("${raw_dir}/${pretrain_set}/wav.scp" "${raw_dir}/${valid_set}/wav.scp")
        # the kaldi_fbank frontend computes the features at --fs (the configs say 16000)
        _ssl_opts=(--frontend_conf "fs=${fs}"
            --train_data_path_and_name_and_type "${_ssl_data[0]},speech,sound"
            --valid_data_path_and_name_and_type "${_ssl_data[1]},speech,sound")
        need "${_ssl_data[0]}" 2  # the checked audio, without the utterances stage 2 skipped
        need "${_ssl_data[1]}" 2
    fi
    _inputs=("${_ssl_data[@]}" "${ssl_config}" "feats_type=${feats_type}" "ssl_args=${ssl_args}")
    if ! is_done "${ssl_stats_dir}/.done" "SSL collect stats ${ssl_stats_dir}" "${_inputs[@]}"; then
        # (ESPnet's collect_stats builds the model; also with --train_mode bljust, where only
        # the SSL config's input side, --input_size 80, matters)
        [ -f "${ssl_config}" ] || die "--ssl_config ${ssl_config} not found (stage 4 collects the statistics with the SSL task's model)"
        write_rerun "${ssl_stats_dir}" 4
        # --normalize none: the statistics are of the features before normalisation (the
        # config's global_mvn has no stats file yet). --train_dtype float64: collect_stats
        # then sums in float64; in float32, var = E[x^2] - mean^2 loses digits (measured on six
        # utterances: 0.09 % of the variance; more on a large corpus).
        # shellcheck disable=SC2086
        collect_stats "${ssl_stats_dir}" "${_ssl_data[0]}" "${_ssl_data[1]}" "" espnet2_birq.bin.ssl_train \
            --config "${ssl_config}" ${ssl_args} "${_ssl_opts[@]}" --normalize none --train_dtype float64
        need "${cmvn_stats}" 4
        mark_done "${ssl_stats_dir}/.done" "${_inputs[@]}"
    fi

    # ASR: speech_shape (frames,80) and text_shape.<token_type> ("utt ntokens,vocab": asr.sh
    # appends the vocabulary size for the batch-bins count). Its CMVN is the pre-training
    # set's above (the fine-tuned encoder normalises as in pre-training): --skip_sum_stats.
    need "${token_list}" 3
    for dset in "${train_set}" "${valid_set}"; do
        need "${fbank_dir}/${dset}/feats.scp" 2
        need "${fbank_dir}/${dset}/text" 2  # data/${dset}/text without the utterances stage 2 skipped
    done
    _inputs=("${fbank_dir}/${train_set}/feats.scp" "${fbank_dir}/${valid_set}/feats.scp"
        "${fbank_dir}/${train_set}/text" "${fbank_dir}/${valid_set}/text" "${token_list}"
        "token_type=${token_type}" "${bpemodel}")
    if ! is_done "${asr_stats_dir}/.done" "ASR collect stats ${asr_stats_dir}" "${_inputs[@]}"; then
        write_rerun "${asr_stats_dir}" 4
        # The model is built only for its collect_feats, which returns the fbank input as it
        # is; the fine-tuning architecture comes from the SSL model in stage 6, so ESPnet's
        # default CTC model stands in here.
        collect_stats "${asr_stats_dir}" "${fbank_dir}/${train_set}/feats.scp" "${fbank_dir}/${valid_set}/feats.scp" \
            --skip_sum_stats espnet2.bin.asr_train \
            --input_size 80 --normalize none --model_conf ctc_weight=1.0 \
            --use_preprocessor true --token_type "${token_type}" --token_list "${token_list}" \
            --bpemodel "${bpemodel}" --cleaner none --g2p none \
            --train_data_path_and_name_and_type "${fbank_dir}/${train_set}/feats.scp,speech,kaldi_ark" \
            --train_data_path_and_name_and_type "${fbank_dir}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${fbank_dir}/${valid_set}/feats.scp,speech,kaldi_ark" \
            --valid_data_path_and_name_and_type "${fbank_dir}/${valid_set}/text,text,text"
        text_shapes_with_vocab "${asr_stats_dir}"
        mark_done "${asr_stats_dir}/.done" "${_inputs[@]}"
    fi
    log "shape files and CMVN written"
fi
release_lock "${dumpdir}"  # stages 5-8 only read data/ and dump/

# ---------------------------------------------------------------------------
# k-means labels for a kmeans_ce loss (MT4SSL's offline targets): fit on a sample of the
# pre-training features, label the pre-training and validation sets in parallel jobs,
# one label per encoder frame, and check them against the features.
kmeans_labels() {  # kmeans_labels NUM_CLUSTERS (empty: nothing to do)
    local clusters=$1 dset n_utt _nj _logdir _src_opts=() _name
    [ -n "${clusters}" ] || return 0
    # Inputs: the fbank dump, or (--feats_type raw) the audio, through the same fbank.
    local _input=feats _check_opts=() pair split
    if [ "${feats_type}" = raw ]; then
        _input=wav
        _check_opts=(--samples_fs "${fs}")
    fi
    _scp_of() {  # _scp_of SET: the scp the k-means reads for SET
        # raw: stage 2's checked wav.scp (recordings at another rate: their copies at --fs)
        if [ "${feats_type}" = raw ]; then echo "${raw_dir}/$1/wav.scp"; else echo "${fbank_dir}/$1/feats.scp"; fi
    }
    case "${kmeans_source}" in
        fbank)
            _name=fbank
            _src_opts=(--source fbank)
            [ "${feats_normalize}" = global_mvn ] && _src_opts+=(--cmvn_stats "${cmvn_stats}")
            ;;
        layer)
            [ -n "${kmeans_model_file}" ] || die "--kmeans_source layer needs --kmeans_model_file"
            [[ ${kmeans_layer} =~ ^[0-9]+$ ]] || die "--kmeans_source layer needs --kmeans_layer N, got '${kmeans_layer}'"
            [ -f "${kmeans_model_file}" ] || die "--kmeans_model_file ${kmeans_model_file} not found"
            [ -n "${kmeans_model_config}" ] || kmeans_model_config=$(dirname "${kmeans_model_file}")/config.yaml
            [ -f "${kmeans_model_config}" ] || die "${kmeans_model_config} not found (give --kmeans_model_config)"
            _name=layer${kmeans_layer}_$(basename "$(dirname "${kmeans_model_file}")")
            _src_opts=(--source layer --model_config "${kmeans_model_config}"
                --model_file "${kmeans_model_file}" --layer "${kmeans_layer}")
            ;;
        *) die "--kmeans_source must be fbank or layer, got '${kmeans_source}'" ;;
    esac
    [ -n "${kmeans_dir}" ] || kmeans_dir=${dumpdir}/kmeans/${_name}_${clusters}
    local _km_inputs=("$(_scp_of "${pretrain_set}")" "$(_scp_of "${valid_set}")" "clusters=${clusters}"
        "kmeans_source=${kmeans_source}" "kmeans_seed=${kmeans_seed}" "kmeans_sample_utts=${kmeans_sample_utts}"
        "kmeans_max_frames=${kmeans_max_frames}" "feats_normalize=${feats_normalize}")
    [ "${kmeans_source}" = layer ] && _km_inputs+=("${kmeans_model_file}" "kmeans_layer=${kmeans_layer}")
    if ! is_done "${kmeans_dir}/.done" "k-means labels ${kmeans_dir}" "${_km_inputs[@]}"; then
        need "$(_scp_of "${pretrain_set}")" 2
        need "$(_scp_of "${valid_set}")" 2
        mkdir -p "${kmeans_dir}/log"
        log "k-means: ${clusters} clusters of ${kmeans_source} features -> ${kmeans_dir}; log: ${kmeans_dir}/log/fit.log"
        # shellcheck disable=SC2086
        ${train_cmd} "${kmeans_dir}/log/fit.log" \
            ${python} -m espnet2_birq.bin.kmeans fit --ssl_config "${ssl_config}" \
                --feats_scp "$(_scp_of "${pretrain_set}")" --input "${_input}" --fs "${fs}" --out "${kmeans_dir}/kmeans.pkl" \
                --num_clusters "${clusters}" --sample_utts "${kmeans_sample_utts}" \
                --max_frames "${kmeans_max_frames}" --seed "${kmeans_seed}" "${_src_opts[@]}" \
            || die "k-means fit failed; see ${kmeans_dir}/log/fit.log"
        for dset in $(echo "${pretrain_set} ${valid_set}" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
            _logdir=${kmeans_dir}/${dset}/log
            rm -rf "${_logdir}"
            mkdir -p "${_logdir}"
            n_utt=$(num_lines "$(_scp_of "${dset}")")
            _nj=$(min "${kmeans_nj:-${nj}}" "${n_utt}")
            awk -v n="${_nj}" -v d="${_logdir}" -v total="${n_utt}" \
                '{ j = int((NR - 1) * n / total) + 1; print > (d "/feats." j ".scp") }' "$(_scp_of "${dset}")"
            log "k-means labels of ${dset}: ${n_utt} utterances, ${_nj} jobs, log: ${_logdir}/label.*.log"
            # shellcheck disable=SC2086
            ${train_cmd} JOB=1:"${_nj}" "${_logdir}/label.JOB.log" \
                ${python} -m espnet2_birq.bin.kmeans label --kmeans_model "${kmeans_dir}/kmeans.pkl" \
                    --feats_scp "${_logdir}/feats.JOB.scp" --input "${_input}" --fs "${fs}" --out "${_logdir}/labels.JOB.txt" \
                || die "k-means labelling of ${dset} failed; see ${_logdir}/label.*.log"
            for j in $(seq "${_nj}"); do cat "${_logdir}/labels.${j}.txt"; done \
                | LC_ALL=C sort -k1,1 > "${kmeans_dir}/${dset}/labels.txt.tmp"
            mv -f "${kmeans_dir}/${dset}/labels.txt.tmp" "${kmeans_dir}/${dset}/labels.txt"
        done
        mark_done "${kmeans_dir}/.done" "${_km_inputs[@]}"
    fi
    # Refuse labels that disagree with the features (other ids, other lengths), also
    # when they were made earlier or by hand.
    # The shape files of stage 4 count what the SSL data loader reads (frames, or samples).
    for pair in "train:${pretrain_set}" "valid:${valid_set}"; do
        split=${pair%%:*}; dset=${pair#*:}
        need "${kmeans_dir}/${dset}/labels.txt" 5
        need "${ssl_stats_dir}/${split}/speech_shape" 4
        ${python} -m espnet2_birq.bin.kmeans check --ssl_config "${ssl_config}" "${_check_opts[@]}" \
            --labels "${kmeans_dir}/${dset}/labels.txt" --feats_shape "${ssl_stats_dir}/${split}/speech_shape" \
            || die "k-means labels ${kmeans_dir}/${dset}/labels.txt do not match the features of ${dset} (see above); remove ${kmeans_dir}/.done to remake them"
    done
}

# ---------------------------------------------------------------------------
if run_stage 5 && [ "${train_mode}" = bljust ]; then
    log "Stage 5: skipped (--train_mode bljust: stage 6 trains on the unlabelled ${pretrain_set} and the labelled ${train_set} at once)"
elif run_stage 5; then
    log "Stage 5: SSL pre-training: ${ssl_exp} (config: ${ssl_config})"
    _inputs=("${ssl_config}" "${ssl_stats_dir}/train/speech_shape" "${ssl_stats_dir}/valid/speech_shape"
        "feats_type=${feats_type}" "feats_normalize=${feats_normalize}" "ssl_args=${ssl_args}")
    [ "${feats_normalize}" = global_mvn ] && _inputs+=("${cmvn_stats}")
    if ! is_done_or_refuse "${ssl_exp}/.done" "SSL pre-training ${ssl_exp}" \
        "To pre-train on the new inputs, move ${ssl_exp} away or pass another --ssl_tag; to keep this model, restore the inputs." \
        "${_inputs[@]}"; then
        [ -f "${ssl_config}" ] || die "--ssl_config ${ssl_config} not found"
        need "${ssl_stats_dir}/train/speech_shape" 4
        need "${ssl_stats_dir}/valid/speech_shape" 4
        _kmeans_clusters=$(${python} -m espnet2_birq.bin.kmeans wants "${ssl_config}") \
            || die "cannot read the losses of ${ssl_config}"
        _opts=()
        if [ "${feats_type}" = fbank ]; then
            need "${fbank_dir}/${pretrain_set}/feats.scp" 2
            need "${fbank_dir}/${valid_set}/feats.scp" 2
            _opts+=(--input_size 80
                --train_data_path_and_name_and_type "${fbank_dir}/${pretrain_set}/feats.scp,speech,kaldi_ark"
                --valid_data_path_and_name_and_type "${fbank_dir}/${valid_set}/feats.scp,speech,kaldi_ark")
        else
            _opts+=(--frontend kaldi_fbank --frontend_conf "fs=${fs}"
                --train_data_path_and_name_and_type "${raw_dir}/${pretrain_set}/wav.scp,speech,sound"
                --valid_data_path_and_name_and_type "${raw_dir}/${valid_set}/wav.scp,speech,sound")
        fi
        if [ "${feats_normalize}" = global_mvn ]; then
            need "${cmvn_stats}" 4
            _opts+=(--normalize global_mvn --normalize_conf "stats_file=${cmvn_stats}")
        fi
        kmeans_labels "${_kmeans_clusters}"
        if [ -n "${_kmeans_clusters}" ]; then
            _opts+=(--train_data_path_and_name_and_type "${kmeans_dir}/${pretrain_set}/labels.txt,frame_labels,text_int"
                --valid_data_path_and_name_and_type "${kmeans_dir}/${valid_set}/labels.txt,frame_labels,text_int")
        fi
        _train_shape=${ssl_stats_dir}/train/speech_shape
        if [ "${num_splits_ssl}" -gt 1 ]; then
            # asr.sh's --num_splits_asr for pre-training: ESPnet's split_scps deals the lines of
            # the training lists (same keys, same order) into N parts, and --multiple_iterator
            # reads one part per iterator (a large set's lists are never all in memory)
            _split_dir=${ssl_stats_dir}/splits${num_splits_ssl}
            _split_scps=()
            for i in "${!_opts[@]}"; do
                [ "${_opts[i]}" = --train_data_path_and_name_and_type ] || continue
                _v=${_opts[i + 1]}
                _split_scps+=("${_v%%,*}")
                _opts[i + 1]=${_split_dir}/$(basename "${_v%%,*}"),${_v#*,}
            done
            _split_inputs=("${_split_scps[@]}" "${_train_shape}" "num_splits_ssl=${num_splits_ssl}")
            if ! is_done "${_split_dir}/.done" "split of the pre-training lists ${_split_dir}" "${_split_inputs[@]}"; then
                rm -rf "${_split_dir}"
                mkdir -p "${_split_dir}/sorted"
                for f in "${_train_shape}" "${_split_scps[@]}"; do
                    LC_ALL=C sort -k1,1 "${f}" > "${_split_dir}/sorted/$(basename "${f}")"
                    cmp -s <(cut -d ' ' -f 1 "${_split_dir}/sorted/$(basename "${f}")") \
                        <(cut -d ' ' -f 1 "${_split_dir}/sorted/$(basename "${_train_shape}")") \
                        || die "${f} and ${_train_shape} list other utterances: they cannot be split alike (rerun stage 4)"
                done
                _sorted=()
                for f in "${_split_scps[@]}" "${_train_shape}"; do _sorted+=("${_split_dir}/sorted/$(basename "${f}")"); done
                ${python} -m espnet2.bin.split_scps --num_splits "${num_splits_ssl}" --output_dir "${_split_dir}" \
                    --scps "${_sorted[@]}" > "${_split_dir}/split_scps.log" 2>&1 \
                    || die_with_log "${_split_dir}/split_scps.log" "splitting the pre-training lists failed (e.g. fewer utterances than --num_splits_ssl ${num_splits_ssl})"
                rm -rf "${_split_dir}/sorted"
                mark_done "${_split_dir}/.done" "${_split_inputs[@]}"
            fi
            _train_shape=${_split_dir}/$(basename "${_train_shape}")
            _opts+=(--multiple_iterator true)
            log "pre-training lists in ${num_splits_ssl} parts (${_split_dir}), read one part at a time"
        fi
        write_rerun "${ssl_exp}" 5
        log "SSL training started; log: ${ssl_exp}/train.log (tail -f it to follow progress)"
        # shellcheck disable=SC2086
        ${python} -m espnet2.bin.launch \
            --cmd "${cuda_cmd} --name ${ssl_exp##*/}" \
            --log "${ssl_exp}/train.log" \
            --ngpu "${ngpu}" \
            --num_nodes "${num_nodes}" \
            --init_file_prefix "${ssl_exp}/.dist_init_" \
            --multiprocessing_distributed true -- \
            ${python} -m espnet2_birq.bin.ssl_train \
                --config "${ssl_config}" \
                --output_dir "${ssl_exp}" \
                --resume true \
                --train_shape_file "${_train_shape}" \
                --valid_shape_file "${ssl_stats_dir}/valid/speech_shape" \
                "${_opts[@]}" ${ssl_args} \
            || die "SSL training failed (cause above; log: ${ssl_exp}/train.log)"
        need "${ssl_exp}/${ssl_model_file}" 5
        ${python} -m espnet2_birq.train.trainer check "${ssl_exp}/${ssl_model_file}" \
            || die "${ssl_exp}/${ssl_model_file} holds NaN/inf values (above): pre-training diverged; see ${ssl_exp}/train.log"
        mark_done "${ssl_exp}/.done" "${_inputs[@]}"
        log "SSL pre-training finished: ${ssl_exp}/${ssl_model_file}"
    fi
fi

# ---------------------------------------------------------------------------
asr_launch() {  # asr_launch WHAT OUTPUT_DIR MODULE CONFIG [extra args]: one ASR-task training run
    # (labelled train/valid sets, tokens, CMVN) of MODULE through launch.py
    local what=$1 out=$2 module=$3 config=$4
    shift 4
    mkdir -p "${out}"
    log "${what} training started; log: ${out}/train.log (tail -f it to follow progress)"
    ${python} -m espnet2.bin.launch \
        --cmd "${cuda_cmd} --name ${asr_exp##*/}" \
        --log "${out}/train.log" \
        --ngpu "${ngpu}" \
        --num_nodes "${num_nodes}" \
        --init_file_prefix "${out}/.dist_init_" \
        --multiprocessing_distributed true -- \
        ${python} -m "${module}" \
            --config "${config}" \
            --output_dir "${out}" \
            --resume true \
            --input_size 80 \
            --use_preprocessor true \
            --token_type "${token_type}" \
            --token_list "${token_list}" \
            --bpemodel "${bpemodel}" \
            --train_data_path_and_name_and_type "${fbank_dir}/${train_set}/feats.scp,speech,kaldi_ark" \
            --train_data_path_and_name_and_type "${fbank_dir}/${train_set}/text,text,text" \
            --valid_data_path_and_name_and_type "${fbank_dir}/${valid_set}/feats.scp,speech,kaldi_ark" \
            --valid_data_path_and_name_and_type "${fbank_dir}/${valid_set}/text,text,text" \
            --train_shape_file "${asr_stats_dir}/train/speech_shape" \
            --train_shape_file "${asr_stats_dir}/train/text_shape.${token_type}" \
            --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
            --valid_shape_file "${asr_stats_dir}/valid/text_shape.${token_type}" \
            "${_cmvn_opts[@]}" "$@" \
        || die "${what} training failed (cause above; log: ${out}/train.log)"
}

asr_train() {  # asr_train OUTPUT_DIR [extra args]: fine-tuning (guarded asr_train) of stage 6
    local out=$1
    shift
    # The phase's own options come after --asr_args: a user's --max_epoch sets the unfrozen
    # phase and must not stretch the frozen one (--freeze_encoder_epochs) to its length.
    # shellcheck disable=SC2086
    asr_launch ASR "${out}" espnet2_birq.bin.asr_train "${asr_exp}/train_asr.yaml" ${asr_args} "$@"
}

# --------------------------------------------------------------- BL-JUST stage 6
if run_stage 6 && [ "${train_mode}" = bljust ]; then
    log "Stage 6: BL-JUST: ${asr_exp} (config: ${bljust_config}, labelled: ${train_set}, unlabelled: ${pretrain_set}, pretrained: ${pretrained_model})"
    if ! is_done "${asr_exp}/.done" "BL-JUST training ${asr_exp}"; then
        [ -f "${bljust_config}" ] || die "--bljust_config ${bljust_config} not found"
        need "${token_list}" 3
        need "${asr_stats_dir}/train/text_shape.${token_type}" 4
        need "${ssl_stats_dir}/train/speech_shape" 4
        for dset in "${train_set}" "${valid_set}" "${pretrain_set}"; do
            need "${fbank_dir}/${dset}/feats.scp" 2
        done
        _cmvn_opts=()
        if [ "${feats_normalize}" = global_mvn ]; then
            need "${cmvn_stats}" 4
            _cmvn_opts=(--normalize global_mvn --normalize_conf "stats_file=${cmvn_stats}")
        fi
        _init=()
        if [ -n "${init_ckpt}" ]; then
            need "${init_ckpt}" 5
            ${python} -m espnet2_birq.bin.check_init verify --task bljust --ckpt "${init_ckpt}" \
                --asr_config "${bljust_config}" --token_list "${token_list}" \
                --input_size 80 --token_type "${token_type}" --bpemodel "${bpemodel}" \
                "${_cmvn_opts[@]}" || die "the pre-trained encoder ${init_ckpt} does not load (see above)"
            _init=(--init_param "${init_ckpt}:encoder:encoder")
        fi
        write_rerun "${asr_exp}" 6
        # shellcheck disable=SC2086
        asr_launch BL-JUST "${asr_exp}" espnet2_birq.bin.bljust_train "${bljust_config}" \
            --unlabelled_data_path_and_name_and_type "${fbank_dir}/${pretrain_set}/feats.scp,speech,kaldi_ark" \
            --unlabelled_shape_file "${ssl_stats_dir}/train/speech_shape" \
            "${_init[@]}" ${bljust_args}
        mark_done "${asr_exp}/.done"
        log "BL-JUST training finished: ${asr_exp}"
    fi
elif run_stage 6; then
    log "Stage 6: ASR fine-tuning: ${asr_exp} (config: ${asr_config}, pretrained: ${pretrained_model})"
    _inputs=("${asr_config}" "${token_list}" "${asr_stats_dir}/train/speech_shape"
        "${asr_stats_dir}/train/text_shape.${token_type}" "${asr_stats_dir}/valid/speech_shape"
        "${asr_stats_dir}/valid/text_shape.${token_type}" "${fbank_dir}/${train_set}/text" "${fbank_dir}/${valid_set}/text"
        "init=${init_ckpt}" "feats_normalize=${feats_normalize}" "asr_args=${asr_args}" "freeze_encoder_epochs=${freeze_encoder_epochs}")
    [ -n "${init_ckpt}" ] && _inputs+=("${init_ckpt}")
    [ "${feats_normalize}" = global_mvn ] && _inputs+=("${cmvn_stats}")
    if ! is_done_or_refuse "${asr_exp}/.done" "ASR fine-tuning ${asr_exp}" \
        "To fine-tune on the new inputs, move ${asr_exp} away or pass another --asr_tag; to keep this model, restore the inputs." \
        "${_inputs[@]}"; then
        [ -f "${asr_config}" ] || die "--asr_config ${asr_config} not found"
        need "${token_list}" 3
        need "${asr_stats_dir}/train/text_shape.${token_type}" 4
        need "${fbank_dir}/${train_set}/feats.scp" 2
        need "${fbank_dir}/${valid_set}/feats.scp" 2
        # The architecture (and normalisation) of the SSL model, also when training from scratch.
        if [ -f "${ssl_exp}/config.yaml" ]; then
            _arch_config=${ssl_exp}/config.yaml
        else
            [ -z "${init_ckpt}" ] || need "${ssl_exp}/config.yaml" 5
            _arch_config=${ssl_config}
        fi
        [ -z "${init_ckpt}" ] || need "${init_ckpt}" 5
        _cmvn_opts=()
        if [ "${feats_normalize}" = global_mvn ]; then
            need "${cmvn_stats}" 4
            _cmvn_opts=(--normalize global_mvn --normalize_conf "stats_file=${cmvn_stats}")
        fi
        write_rerun "${asr_exp}" 6
        # --fs: the fine-tuning features' rate; refused when the pre-trained model's frontend read another
        ${python} -m espnet2_birq.bin.make_finetune_config --fs "${fs}" \
            --ssl_config "${_arch_config}" --asr_config "${asr_config}" --out "${asr_exp}/train_asr.yaml"
        _init=()
        if [ -n "${init_ckpt}" ]; then
            # ESPnet's init_param loads nothing, silently, from a file without
            # encoder.* tensors (e.g. a trainer checkpoint.pth): refuse that here.
            ${python} -m espnet2_birq.bin.check_init verify --ckpt "${init_ckpt}" \
                --asr_config "${asr_exp}/train_asr.yaml" --token_list "${token_list}" \
                --input_size 80 --token_type "${token_type}" --bpemodel "${bpemodel}" \
                "${_cmvn_opts[@]}" || die "the pre-trained encoder ${init_ckpt} does not load (see above)"
            _init=(--init_param "${init_ckpt}:encoder:encoder")
        fi
        if [ "${freeze_encoder_epochs}" -gt 0 ]; then
            # Phase 1: frozen encoder for N epochs (its own dir, resumable); phase 2 starts from its last model.
            if ! is_done "${asr_exp}/frozen/.done" "frozen-encoder phase ${asr_exp}/frozen"; then
                log "phase 1: ${freeze_encoder_epochs} epochs with the encoder frozen"
                asr_train "${asr_exp}/frozen" "${_init[@]}" --freeze_param encoder --max_epoch "${freeze_encoder_epochs}"
                need "${asr_exp}/frozen/latest.pth" 6
                mark_done "${asr_exp}/frozen/.done"
            fi
            log "phase 2: encoder unfrozen"
            asr_train "${asr_exp}" --init_param "${asr_exp}/frozen/latest.pth"
        else
            asr_train "${asr_exp}" "${_init[@]}"
        fi
        _models=$(find "${asr_exp}" -maxdepth 1 -name 'valid.*.ave.pth' | sort)
        [ -n "${_models}" ] || die "${asr_exp}: no averaged model (valid.*.ave.pth) was written; see ${asr_exp}/train.log"
        # shellcheck disable=SC2086
        ${python} -m espnet2_birq.train.trainer check ${_models} \
            || die "the fine-tuned model holds NaN/inf values (above): training diverged; see ${asr_exp}/train.log"
        mark_done "${asr_exp}/.done" "${_inputs[@]}"
        log "ASR fine-tuning finished: ${asr_exp}"
    fi
fi

# ------------------------------------------------------ language model (stage 6)
lm_model=${lm_exp}/${inference_lm}
lm_text() {  # lm_text OUT FILE...: the files' lines that have text, as one Kaldi text file
    local out=$1 f n_empty dup
    shift
    for f in "$@"; do
        [ -f "${f}" ] || die "LM text ${f} not found (--lm_train_text / --lm_dev_text)"
    done
    awk 'NF > 1' "$@" > "${out}.tmp"
    n_empty=$(awk 'NF <= 1' "$@" | wc -l)
    [ "${n_empty}" -eq 0 ] || log "WARNING: ${n_empty} line(s) without text in $* left out of ${out}"
    # lm_train reads one file: an id twice would silently keep only one of the sentences
    dup=$(cut -d ' ' -f 1 "${out}.tmp" | LC_ALL=C sort | uniq -d | head -n 5 | tr '\n' ' ')
    [ -z "${dup}" ] || die "LM text: the ids ${dup}occur more than once in $* (ids must be unique across the files)"
    [ -s "${out}.tmp" ] || die "LM text: no line with text in $*"
    mv -f "${out}.tmp" "${out}"
}
train_lm() {  # train_lm: stage 6's LM training (the caller holds the LM directory's lock)
    [ -f "${lm_config}" ] || die "--lm_config ${lm_config} not found"
    need "${token_list}" 3
    mkdir -p "${lm_exp}/data"
    # shellcheck disable=SC2086
    lm_text "${lm_exp}/data/train.txt" ${lm_train_text}
    # shellcheck disable=SC2086
    lm_text "${lm_exp}/data/dev.txt" ${lm_dev_text}
    log "LM text: $(num_lines "${lm_exp}/data/train.txt") training and $(num_lines "${lm_exp}/data/dev.txt") validation sentences"
    _lm_opts=(--use_preprocessor true --token_type "${token_type}" --token_list "${token_list}"
        --bpemodel "${bpemodel}" --cleaner none --g2p none --non_linguistic_symbols none
        --train_data_path_and_name_and_type "${lm_exp}/data/train.txt,text,text"
        --valid_data_path_and_name_and_type "${lm_exp}/data/dev.txt,text,text")
    write_rerun "${lm_exp}" 6
    # text_shape of each sentence (asr.sh's LM stage: collect_stats, then the vocabulary
    # size appended for the batch-bins count); no feature statistics to sum
    collect_stats "${lm_exp}/stats" "${lm_exp}/data/train.txt" "${lm_exp}/data/dev.txt" --skip_sum_stats \
        espnet2.bin.lm_train --config "${lm_config}" "${_lm_opts[@]}"
    text_shapes_with_vocab "${lm_exp}/stats"
    log "LM training started; log: ${lm_exp}/train.log (tail -f it to follow progress)"
    # shellcheck disable=SC2086
    ${python} -m espnet2.bin.launch \
        --cmd "${cuda_cmd} --name ${lm_exp##*/}" \
        --log "${lm_exp}/train.log" \
        --ngpu "${ngpu}" \
        --num_nodes "${num_nodes}" \
        --init_file_prefix "${lm_exp}/.dist_init_" \
        --multiprocessing_distributed true -- \
        ${python} -m espnet2.bin.lm_train \
            --config "${lm_config}" \
            --output_dir "${lm_exp}" \
            --resume true \
            --fold_length 150 \
            --train_shape_file "${lm_exp}/stats/train/text_shape.${token_type}" \
            --valid_shape_file "${lm_exp}/stats/valid/text_shape.${token_type}" \
            "${_lm_opts[@]}" ${lm_args} \
        || die "LM training failed (cause above; log: ${lm_exp}/train.log)"
    need "${lm_model}" 6
    ${python} -m espnet2_birq.train.trainer check "${lm_model}" \
        || die "${lm_model} holds NaN/inf values (above): LM training diverged; see ${lm_exp}/train.log"
    mark_done "${lm_exp}/.done" "${_lm_inputs[@]}"
    log "LM training finished: ${lm_model}"
}
lm_done() {  # lm_done: is the LM of these inputs finished? (changed inputs: refuse)
    is_done_or_refuse "${lm_exp}/.done" "LM training ${lm_exp}" \
        "To train on the new inputs, move ${lm_exp} away or pass another --lm_tag; to keep this LM, restore the inputs." \
        "${_lm_inputs[@]}"
}
if run_stage 6 && [ "${use_lm}" = true ]; then
    log "Stage 6: language model: ${lm_exp} (config: ${lm_config}, text: ${lm_train_text})"
    # shellcheck disable=SC2206
    _lm_inputs=("${lm_config}" ${lm_train_text} ${lm_dev_text} "${token_list}" "token_type=${token_type}"
        "${bpemodel}" "lm_args=${lm_args}")
    # A finished LM is only read, without the lock: runs side by side (e.g. one per
    # fine-tuning arm) share it. Training takes the lock (a second trainer refuses) and
    # looks again once it holds it: the LM may have been finished in between.
    if ! lm_done; then
        acquire_lock "${lm_exp}"
        lm_done || train_lm
        release_lock "${lm_exp}"
    fi
fi

# ------------------------------------------------------ n-gram (stage 6)
# As asr.sh's n-gram stage (kenlm's lmplz, then build_binary), but over the TOKENS of the
# ASR model: ESPnet's n-gram scorer queries kenlm with the token strings (BPE pieces or
# characters) the model emits, so --lm_train_text is first tokenised with the token list
# (espnet2.bin.tokenize_text, the tokeniser of stage 3). Trainer: kenlm's lmplz (modified
# Kneser-Ney, on disk, any size; kenlm's pip package has no lmplz) when on PATH, else
# kaldingram (pip; Kneser-Ney as SRILM's -ukndiscount, in memory: small and medium texts).
resolve_ngram_trainer() {
    case "${ngram_trainer}" in
        auto) if command -v lmplz > /dev/null; then echo lmplz; else echo kaldingram; fi ;;
        *) echo "${ngram_trainer}" ;;
    esac
}
train_ngram() {  # train_ngram TRAINER: stage 6's n-gram (the caller holds the n-gram directory's lock)
    local trainer=$1 tokens=${ngram_exp}/data/train.tokens
    need "${token_list}" 3
    mkdir -p "${ngram_exp}/data"
    # shellcheck disable=SC2086
    lm_text "${ngram_exp}/data/train.txt" ${lm_train_text}
    log "n-gram text: $(num_lines "${ngram_exp}/data/train.txt") sentences of ${lm_train_text}, as ${token_type} tokens -> ${tokens}"
    ${python} -m espnet2.bin.tokenize_text --token_type "${token_type}" --bpemodel "${bpemodel}" \
        --input "${ngram_exp}/data/train.txt" --output "${tokens}.tmp" --field 2- \
        --cleaner none --g2p none --non_linguistic_symbols none 2> "${ngram_exp}/tokenize_text.log" \
        || die_with_log "${ngram_exp}/tokenize_text.log" "tokenising the n-gram text failed; see ${ngram_exp}/tokenize_text.log"
    mv -f "${tokens}.tmp" "${tokens}"
    rm -f "${ngram_arpa}" "${ngram_bin}"
    log "n-gram training (${trainer}, order ${ngram_num}) -> ${ngram_arpa}; log: ${ngram_exp}/train.log"
    if [ "${trainer}" = lmplz ]; then
        # asr.sh's options: 20% of the memory for sorting, discounts for tiny texts
        mkdir -p "${ngram_exp}/tmp"
        ${train_cmd} "${ngram_exp}/train.log" \
            lmplz -o "${ngram_num}" -S 20% --discount_fallback -T "${ngram_exp}/tmp" \
                --text "${tokens}" --arpa "${ngram_arpa}.tmp" \
            || die "lmplz failed; see ${ngram_exp}/train.log"
        rm -rf "${ngram_exp}/tmp"
    else
        ${train_cmd} "${ngram_exp}/train.log" \
            ${python} -m kaldingram.cli train --ngram-order "${ngram_num}" \
                --text "${tokens}" --lm "${ngram_arpa}.tmp" \
            || die "kaldingram failed; see ${ngram_exp}/train.log"
    fi
    [ -s "${ngram_arpa}.tmp" ] || die "the n-gram trainer wrote no ${ngram_arpa}; see ${ngram_exp}/train.log"
    mv -f "${ngram_arpa}.tmp" "${ngram_arpa}"
    if command -v build_binary > /dev/null; then
        # kenlm's binary loads fast and is shared (mmap) by the decoding jobs
        build_binary -s "${ngram_arpa}" "${ngram_bin}.tmp" > "${ngram_exp}/build_binary.log" 2>&1 \
            || die_with_log "${ngram_exp}/build_binary.log" "build_binary failed; see ${ngram_exp}/build_binary.log"
        mv -f "${ngram_bin}.tmp" "${ngram_bin}"
    fi
    log "n-gram: $(sed -n 's/^ngram \([0-9]*\)=\([0-9]*\)$/\1-grams: \2/p' "${ngram_arpa}" | tr '\n' ' ')"
    mark_done "${ngram_exp}/.done" "${_ngram_inputs[@]}"
}
ngram_model() {  # ngram_model: the n-gram stage 7 decodes with
    if [ -n "${ngram_file}" ]; then echo "${ngram_file}"
    elif [ -f "${ngram_bin}" ]; then echo "${ngram_bin}"
    else echo "${ngram_arpa}"; fi
}
if run_stage 6 && [ "${use_ngram}" = true ] && [ -n "${ngram_file}" ]; then
    log "Stage 6: n-gram: none trained, stage 7 decodes with --ngram_file ${ngram_file}"
elif run_stage 6 && [ "${use_ngram}" = true ]; then
    _ngram_trainer=$(resolve_ngram_trainer)  # (checked before stage 1)
    log "Stage 6: n-gram: ${ngram_exp} (order ${ngram_num}, ${_ngram_trainer}, text: ${lm_train_text})"
    # shellcheck disable=SC2206
    _ngram_inputs=(${lm_train_text} "${token_list}" "token_type=${token_type}" "${bpemodel}"
        "ngram_num=${ngram_num}" "ngram_trainer=${_ngram_trainer}")
    # as the LM: a finished n-gram is read without the lock (runs side by side share it)
    if ! is_done "${ngram_exp}/.done" "n-gram ${ngram_exp}" "${_ngram_inputs[@]}"; then
        acquire_lock "${ngram_exp}"
        is_done "${ngram_exp}/.done" "n-gram ${ngram_exp}" "${_ngram_inputs[@]}" || train_ngram "${_ngram_trainer}"
        release_lock "${ngram_exp}"
    fi
fi

# ---------------------------------------------------------------------------
if [ "${inference_asr_model}" = auto ]; then
    inference_asr_model=valid.loss.ave.pth
    for m in valid.acc.ave.pth valid.cer_ctc.ave.pth valid.loss.ave.pth; do
        if [ -e "${asr_exp}/${m}" ]; then inference_asr_model=${m}; break; fi
    done
fi
if [ -z "${inference_tag}" ]; then
    inference_tag=$(basename "${inference_config}" .yaml)
    case "${inference_tag}" in decode*) ;; *) inference_tag=decode_${inference_tag} ;; esac
    inference_tag+="_asr_model_$(echo "${inference_asr_model}" | sed -e "s/\//_/g" -e "s/\.[^.]*$//g")"
    # as asr.sh: decodings with and without an LM (or with another LM) sit side by side
    [ "${use_lm}" = true ] && inference_tag+="_lm_$(basename "${lm_exp}")_$(echo "${inference_lm}" | sed -e "s/\//_/g" -e "s/\.[^.]*$//g")"
    if [ "${use_ngram}" = true ] && [ -n "${ngram_file}" ]; then
        inference_tag+="_ngram_$(basename "${ngram_file}" | sed -e "s/\.gz$//" -e "s/\.[^.]*$//")"
    elif [ "${use_ngram}" = true ]; then
        inference_tag+="_ngram_$(basename "${ngram_exp}")_${ngram_num}gram"
    fi
fi

if run_stage 7; then
    log "Stage 7: decoding ${test_sets} with ${asr_exp}/${inference_asr_model} -> ${asr_exp}/${inference_tag}"
    need "${asr_exp}/config.yaml" 6
    need "${asr_exp}/${inference_asr_model}" 6
    [ -f "${inference_config}" ] || die "--inference_config ${inference_config} not found"
    _lm_opts=()
    _newest_model=$(readlink -f "${asr_exp}/${inference_asr_model}")
    if [ "${use_lm}" = true ]; then
        need "${lm_exp}/config.yaml" 6
        need "${lm_model}" 6
        _lm_opts=(--lm_train_config "${lm_exp}/config.yaml" --lm_file "${lm_model}")
        _newest_model=$(newer_of "${_newest_model}" "${lm_model}")
    fi
    if [ "${use_ngram}" = true ]; then
        _ngram=$(ngram_model)
        if [ -n "${ngram_file}" ]; then
            [ -f "${_ngram}" ] || die "--ngram_file ${_ngram} not found"
        else
            need "${_ngram}" 6
        fi
        # its weight: ngram_weight of the --inference_config (or --inference_args)
        _lm_opts+=(--ngram_file "${_ngram}")
        _newest_model=$(newer_of "${_newest_model}" "${_ngram}")
    fi
    for dset in ${test_sets}; do
        _dir=${asr_exp}/${inference_tag}/${dset}
        # a decoding older than the model or the LM (e.g. after more training) is redone
        if [ -f "${_dir}/.done" ] && [ "${_dir}/.done" -nt "${_newest_model}" ]; then
            log "decoding ${dset}: already done, skipping (remove ${_dir}/.done to redo)"
            continue
        fi
        need "${fbank_dir}/${dset}/feats.scp" 2
        _logdir=${_dir}/logdir
        rm -rf "${_logdir}"
        mkdir -p "${_logdir}"
        n_utt=$(num_lines "${fbank_dir}/${dset}/feats.scp")
        _nj=$(min "${inference_nj}" "${n_utt}")
        awk -v n="${_nj}" -v d="${_logdir}" -v total="${n_utt}" \
            '{ j = int((NR - 1) * n / total) + 1; print > (d "/keys." j ".scp") }' "${fbank_dir}/${dset}/feats.scp"
        log "decoding ${dset}: ${n_utt} utterances, ${_nj} jobs, log: ${_logdir}/asr_inference.*.log"
        # shellcheck disable=SC2086
        ${_decode_cmd} --gpu "${_decode_ngpu}" JOB=1:"${_nj}" "${_logdir}/asr_inference.JOB.log" \
            ${python} -m espnet2_birq.bin.asr_decode \
                --ngpu "${_decode_ngpu}" \
                --data_path_and_name_and_type "${fbank_dir}/${dset}/feats.scp,speech,kaldi_ark" \
                --key_file "${_logdir}/keys.JOB.scp" \
                --asr_train_config "${asr_exp}/config.yaml" \
                --asr_model_file "${asr_exp}/${inference_asr_model}" \
                --output_dir "${_logdir}/output.JOB" \
                --config "${inference_config}" \
                "${_lm_opts[@]}" \
                ${inference_args} \
            || die "decoding ${dset} failed; see ${_logdir}/asr_inference.*.log"
        for j in $(seq "${_nj}"); do
            need "${_logdir}/output.${j}/1best_recog/text" 7
            cat "${_logdir}/output.${j}/1best_recog/text"
        done | LC_ALL=C sort -k1,1 > "${_dir}/text.tmp"
        mv -f "${_dir}/text.tmp" "${_dir}/text"
        mark_done "${_dir}/.done"
    done
fi

# ---------------------------------------------------------------------------
if run_stage 8; then
    log "Stage 8: scoring -> ${asr_exp}/${inference_tag}/<set>/score_{wer,cer}"
    for dset in ${test_sets}; do
        _dir=${asr_exp}/${inference_tag}/${dset}
        need "${_dir}/text" 7
        need "${fbank_dir}/${dset}/text" 2  # without the utterances stage 2 skipped (listed in bad_utts)
        if [ "$(awk 'NF > 1' "${_dir}/text" | wc -l)" -eq 0 ]; then
            # A model that emits only blanks scores a quiet 100% WER; say so loudly.
            if [ "${empty_hyps_ok}" = true ]; then
                log "WARNING: every hypothesis of ${dset} is empty (the model emits only blanks); scored anyway (--empty_hyps_ok true)"
            else
                die "every hypothesis of ${dset} in ${_dir}/text is empty: the model emits only blanks (under-trained: give fine-tuning more updates; or broken: see ${asr_exp}/train.log). --empty_hyps_ok true scores it anyway"
            fi
        fi
        for unit in word char; do
            [ "${unit}" = word ] && metric=wer || metric=cer
            ${python} -m espnet2_birq.bin.score --ref "${fbank_dir}/${dset}/text" --hyp "${_dir}/text" \
                --unit "${unit}" --out_dir "${_dir}/score_${metric}" --utt2spk "${fbank_dir}/${dset}/utt2spk" \
                --missing_hyp empty
        done
    done
    # ESPnet's Environments block (date, versions, this project's git hash) and the score tables
    if [ "${train_mode}" = bljust ]; then
        _notes=(--note "BL-JUST (joint) training: config ${bljust_config}, labelled ${train_set}, unlabelled ${pretrain_set}, --pretrained_model ${pretrained_model}"
                --note "decoding: ${inference_config}, model ${inference_asr_model}")
    else
        _notes=(--note "pre-training: ${ssl_exp} (config: ${ssl_config}), --pretrained_model ${pretrained_model}"
                --note "fine-tuning config: ${asr_config}; decoding: ${inference_config}, model ${inference_asr_model}")
    fi
    if [ "${use_lm}" = true ]; then
        _notes+=(--note "language model: ${lm_model} (config: ${lm_config}; text: ${lm_train_text})")
    fi
    if [ "${use_ngram}" = true ] && [ -n "${ngram_file}" ]; then
        _notes+=(--note "n-gram: ${ngram_file} (--ngram_file)")
    elif [ "${use_ngram}" = true ]; then
        _notes+=(--note "n-gram: $(ngram_model) (${ngram_num}-gram over the ${token_type} tokens of ${lm_train_text})")
    fi
    echo "<!-- Generated by $0 -->" > "${asr_exp}/RESULTS.md.tmp"
    ${python} -m espnet2_birq.bin.score results_table --exp_dir "${asr_exp}" \
        --project_dir "$(cd -P "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../../.." && pwd)" \
        --pretrained_model "${init_ckpt:-none (trained from scratch)}" \
        "${_notes[@]}" \
        >> "${asr_exp}/RESULTS.md.tmp" || die "writing ${asr_exp}/RESULTS.md failed"
    mv -f "${asr_exp}/RESULTS.md.tmp" "${asr_exp}/RESULTS.md"
    cat "${asr_exp}/RESULTS.md"
fi

# ---------------------------------------------------------------------------
ssl_packed=${ssl_exp}/${ssl_exp##*/}_${ssl_model_file%.pth}.zip
asr_packed=${asr_exp}/${asr_exp##*/}_${inference_asr_model%.*}.zip
# with the LM inside, an archive of its own (one packed without it is not "done")
[ "${use_lm}" = true ] && asr_packed=${asr_packed%.zip}_lm_${lm_exp##*/}.zip
pack_model() {  # pack_model ARCHIVE MODEL_FILE PACK_ARGS...: (re)pack when the archive is older than MODEL_FILE
    local out=$1 model=$2
    shift 2
    if [ -f "${out}" ] && [ "${out}" -nt "$(readlink -f "${model}")" ]; then
        log "packing ${out}: already done, skipping (remove it to redo)"
        return 0
    fi
    ${python} -m espnet2.bin.pack "$@" --outpath "${out}.tmp.zip" > "${out%.zip}.pack.log" 2>&1 \
        || die "packing ${out} failed; see ${out%.zip}.pack.log"
    mv -f "${out}.tmp.zip" "${out}"
    log "packed: ${out}"
}

if run_stage 9; then
    log "Stage 9: packing -> ${asr_packed}, ${ssl_packed}"
    _pack_opts=()
    [ "${feats_normalize}" = global_mvn ] && _pack_opts+=(--option "${cmvn_stats}")
    [ "${token_type}" = bpe ] && _pack_opts+=(--option "${bpemodel}")
    # The SSL model: its encoder initialises fine-tuning elsewhere (--pretrained_model <unpacked>/...pth).
    if [ "${pretrained_model}" = auto ]; then
        need "${ssl_exp}/${ssl_model_file}" 5
        _rerun=()
        [ -f "${ssl_exp}/run.sh" ] && _rerun=(--option "${ssl_exp}/run.sh")
        pack_model "${ssl_packed}" "${ssl_exp}/${ssl_model_file}" ssl \
            --ssl_train_config "${ssl_exp}/config.yaml" --ssl_model_file "${ssl_exp}/${ssl_model_file}" \
            "${_pack_opts[@]}" "${_rerun[@]}"
    else
        log "no SSL model of this run to pack (--pretrained_model ${pretrained_model})"
    fi
    need "${asr_exp}/${inference_asr_model}" 6
    _extra=()
    for f in "${asr_exp}/RESULTS.md" "${asr_exp}/run.sh"; do
        [ -f "${f}" ] && _extra+=(--option "${f}")
    done
    _newest_model=${asr_exp}/${inference_asr_model}
    if [ "${use_lm}" = true ]; then
        # the LM the decoding used goes into the archive too (ESPnet's pack asr --lm_*)
        need "${lm_model}" 6
        _extra+=(--lm_train_config "${lm_exp}/config.yaml" --lm_file "${lm_model}")
        _newest_model=$(newer_of "${_newest_model}" "${lm_model}")
    fi
    pack_model "${asr_packed}" "${_newest_model}" asr \
        --asr_train_config "${asr_exp}/config.yaml" --asr_model_file "${asr_exp}/${inference_asr_model}" \
        "${_pack_opts[@]}" "${_extra[@]}"
fi

if [ "${skip_upload_hf}" = true ] && [ -n "${hf_repo}${hf_ssl_repo}" ] && [ "${stage}" -le 10 ] && [ "${stop_stage}" -ge 10 ]; then
    log "WARNING: Stage 10 skipped: nothing uploaded to ${hf_repo} ${hf_ssl_repo} (--skip_upload_hf true, the default as in asr.sh; pass --skip_upload_hf false to upload)"
fi
if run_stage 10; then
    if [ -n "${hf_repo}" ]; then
        log "Stage 10: uploading ${asr_packed} to the Hugging Face Hub: ${hf_repo}"
        need "${asr_packed}" 9
        ${python} -m espnet2_birq.bin.hf_upload --archive "${asr_packed}" --repo_id "${hf_repo}" \
            --task asr --results "${asr_exp}/RESULTS.md" || die "upload to ${hf_repo} failed"
    fi
    if [ -n "${hf_ssl_repo}" ]; then
        log "Stage 10: uploading ${ssl_packed} to the Hugging Face Hub: ${hf_ssl_repo}"
        need "${ssl_packed}" 9
        ${python} -m espnet2_birq.bin.hf_upload --archive "${ssl_packed}" --repo_id "${hf_ssl_repo}" \
            --task ssl || die "upload to ${hf_ssl_repo} failed"
    fi
fi

log "Successfully finished. [elapsed=${SECONDS}s]"
