#!/usr/bin/env bash
# Does pre-training help? The mini_synth demo recipe three ways with identical
# fine-tuning budgets: no pre-training, BEST-RQ pre-training, BiRQ pre-training.
# The three runs share stages 1-4 (corpus, features, tokens, shapes); the two
# pre-training runs use the same epochs, model and data, and the three fine-tuning
# runs use the same config. Prints the test WER/CER of each side by side.
#
#   bench/pretraining_gain.sh                  # demo default size (CPU, ~30-40 min on 2 cores)
#   bench/pretraining_gain.sh --demo_size tiny # smoke run (WERs not meaningful)
#
# Re-running is safe: finished stages are skipped by the recipe.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe=${repo}/egs2/mini_synth/ssl1
demo_size=default
test_set=test
while [ $# -gt 0 ]; do
    case "$1" in
        --demo_size) demo_size=$2; shift 2 ;;
        --test_set) test_set=$2; shift 2 ;;
        *) echo "$0: unknown option $1" >&2; exit 1 ;;
    esac
done

cd "${recipe}"
SECONDS=0
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (pretraining_gain) $*"; }

log "1/3 BiRQ pre-training + fine-tuning (stages 1-8)"
./run.sh --demo_size "${demo_size}" --ssl_config conf/train_ssl_birq_tiny.yaml
log "2/3 BEST-RQ pre-training + fine-tuning (stages 5-8)"
./run.sh --demo_size "${demo_size}" --stage 5 --ssl_config conf/train_ssl_best_rq_tiny.yaml
log "3/3 no pre-training, same fine-tuning (stages 6-8)"
./run.sh --demo_size "${demo_size}" --stage 6 --pretrained_model none \
    --ssl_config conf/train_ssl_birq_tiny.yaml

echo
echo "mini_synth (${demo_size}): identical fine-tuning config and budget; WER/CER (%) on dev and ${test_set}"
printf '%-22s %8s %8s %8s %8s  %s\n' "pre-training" "dev WER" "dev CER" "WER" "CER" "experiment"
for exp in exp/asr_*; do
    [ -d "${exp}" ] || continue
    case "${exp}" in
        *scratch*) name="none (from scratch)" ;;
        *best_rq*) name="BEST-RQ" ;;
        *birq*) name="BiRQ" ;;
        *) continue ;;
    esac
    scores=()
    for dset in dev "${test_set}"; do
        for metric in wer cer; do
            f=$(ls "${exp}"/*/"${dset}"/score_${metric}/summary.json 2>/dev/null | head -n 1)
            [ -n "${f}" ] || { echo "missing ${dset} ${metric} scores in ${exp}" >&2; exit 1; }
            scores+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Err"])' "${f}")")
        done
    done
    printf '%-22s %8s %8s %8s %8s  %s\n' "${name}" "${scores[@]}" "${exp}"
done
echo "elapsed: ${SECONDS} s"
