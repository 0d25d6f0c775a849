# Corpus locations for the LibriSpeech BiRQ recipe.
# LIBRISPEECH: directory that holds (or will receive) LibriSpeech/<subset>/...
# and the downloaded *.tar.gz. Override by exporting LIBRISPEECH.
LIBRISPEECH="${LIBRISPEECH:-downloads/librispeech}"
