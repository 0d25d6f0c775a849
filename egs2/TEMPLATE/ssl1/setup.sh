#!/usr/bin/env bash
# Create a recipe directory for your own corpus (ESPnet's egs2/TEMPLATE/asr1/setup.sh, for ssl1).
#
#   egs2/TEMPLATE/ssl1/setup.sh egs2/mycorpus/ssl1
#
# Writes <dir>/ with
#   ssl_asr.sh path.sh cmd.sh utils  symlinks into this repository (relative, like ESPnet's)
#   conf/                         copies of the repository's conf/*.yaml, to tune
#   run.sh                        the set names and configs, then every option goes to ssl_asr.sh
#   db.sh                         where the corpus is (CORPUS, default <dir>/downloads)
#   local/data.sh                 data preparation: copies the ready Kaldi data dirs
#                                 ${CORPUS}/<set>; replace its body to prepare from raw files
# What the data dirs must contain: README.md "Bring your own corpus".
set -euo pipefail

usage="Usage: $0 [--force] <recipe-dir>   e.g. $0 egs2/mycorpus/ssl1"
force=false
if [ "${1:-}" = --force ]; then
    force=true
    shift
fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
    echo "${usage}" >&2
    exit 1
fi
dir=$1
template=$(cd -P "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
repo_root=$(cd -P "${template}/../../.." && pwd)

if [ -e "${dir}" ] && [ -n "$(ls -A "${dir}" 2>/dev/null)" ] && [ "${force}" != true ]; then
    echo "$0: ${dir} exists and is not empty (pass --force to add the missing files; nothing is overwritten)" >&2
    exit 1
fi
mkdir -p "${dir}/conf" "${dir}/local"
dir=$(cd -P "${dir}" && pwd)

link() {  # link TARGET NAME: relative symlink <dir>/NAME -> TARGET
    [ -e "${dir}/$2" ] || [ -L "${dir}/$2" ] && return 0
    ln -s "$(realpath --relative-to="${dir}" "$1")" "${dir}/$2"
}
link "${template}/ssl_asr.sh" ssl_asr.sh
link "${template}/path.sh" path.sh
link "${template}/cmd.sh" cmd.sh
link "${repo_root}/utils" utils

for f in "${repo_root}"/conf/*.yaml; do
    [ -e "${dir}/conf/${f##*/}" ] || cp "${f}" "${dir}/conf/"
done

write() {  # write NAME < content: create <dir>/NAME unless it exists, executable
    if [ -e "${dir}/$1" ]; then
        cat > /dev/null
    else
        cat > "${dir}/$1"
        chmod +x "${dir}/$1"
    fi
}

write db.sh << 'EOF'
# shellcheck shell=bash
# Where the corpus is. local/data.sh reads ${CORPUS}/<set>/ (ready Kaldi data dirs).
CORPUS=${CORPUS:-${PWD}/downloads}
export CORPUS
EOF
chmod -x "${dir}/db.sh"

write run.sh << 'EOF'
#!/usr/bin/env bash
# Recipe made by egs2/TEMPLATE/ssl1/setup.sh: BiRQ pre-training on ${pretrain_set},
# CTC fine-tuning on ${train_set}, decoding and WER/CER of ${test_sets}.
# Every stage lives in ./ssl_asr.sh (./ssl_asr.sh --help); later options override these.
#   ./run.sh --ssl_config conf/train_ssl_best_rq_conformer.yaml   # BEST-RQ instead of BiRQ
#   ./run.sh --ngpu 0 --ssl_config conf/train_ssl_birq_debug.yaml  # CPU smoke test
set -euo pipefail

pretrain_set=pretrain   # unlabelled (text not needed)
train_set=train         # labelled fine-tuning set
valid_set=dev           # validation of pre-training and fine-tuning
test_sets="test"        # decoded and scored

ssl_config=conf/train_ssl_birq_conformer.yaml
asr_config=conf/train_asr_ctc.yaml
inference_config=conf/decode_ctc_greedy.yaml

./ssl_asr.sh \
    --pretrain_set "${pretrain_set}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --ssl_config "${ssl_config}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    "$@"
EOF

write local/data.sh << 'EOF'
#!/usr/bin/env bash
# Data preparation: writes one Kaldi data dir data/<set> per set for ssl_asr.sh.
#
# As generated, it copies data dirs you prepared elsewhere: ${CORPUS}/<set>/ (db.sh) with
#   wav.scp   <recording-id> <wav path or command|>; audio 16 kHz mono (or run ssl_asr.sh --fs)
#   segments  optional: <utt-id> <recording-id> <start s> <end s>
#   utt2spk   <utt-id> <speaker-id>; utterance ids start with their speaker id
#   text      <utt-id> <transcript>; not needed for the pre-training set
# all sorted with LC_ALL=C sort (README.md "Bring your own corpus"). To prepare from raw
# audio and transcripts instead, replace the copy loop by code writing those files.
set -euo pipefail

sets=                            # default: every ${src_dir}/<set> with a wav.scp
src_dir=                         # default: ${CORPUS} from db.sh

[ -f ./path.sh ] && . ./path.sh
[ -f ./db.sh ] && . ./db.sh
. utils/parse_options.sh
[ -n "${src_dir}" ] || src_dir=${CORPUS}
if [ -z "${sets}" ]; then
    sets=$(for f in "${src_dir}"/*/wav.scp; do [ -f "${f}" ] && basename "$(dirname "${f}")"; done || true)
    [ -n "${sets}" ] || { echo "$0: no <set>/wav.scp under ${src_dir} (set CORPUS in db.sh or pass --src_dir)" >&2; exit 1; }
fi

for x in ${sets}; do
    src=${src_dir}/${x}
    [ -f "${src}/wav.scp" ] || { echo "$0: ${src}/wav.scp not found (set CORPUS in db.sh or pass --src_dir)" >&2; exit 1; }
    [ -f "${src}/utt2spk" ] || { echo "$0: ${src}/utt2spk not found" >&2; exit 1; }
    mkdir -p "data/${x}"
    for f in wav.scp segments utt2spk spk2utt text utt2dur reco2file_and_channel; do
        if [ -f "${src}/${f}" ]; then cp "${src}/${f}" "data/${x}/${f}"; else rm -f "data/${x}/${f}"; fi
    done
    [ -f "data/${x}/spk2utt" ] || utils/utt2spk_to_spk2utt.pl "data/${x}/utt2spk" > "data/${x}/spk2utt"
    echo "data/${x}: $(wc -l < "data/${x}/utt2spk") utterances"
done
EOF

echo "created ${dir}: next, put Kaldi data dirs under \${CORPUS} (${dir}/db.sh) or edit ${dir}/local/data.sh, then cd ${dir} && ./run.sh"
