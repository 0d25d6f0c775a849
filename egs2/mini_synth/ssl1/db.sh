# shellcheck shell=bash
# Corpus locations for the mini_synth demo recipe.
# MINI_SYNTH: where local/data.sh writes the synthesized wav files (nothing is
# downloaded: the audio is generated offline with espeak-ng). Override by exporting MINI_SYNTH.
MINI_SYNTH="${MINI_SYNTH:-${PWD}/downloads/mini_synth}"
