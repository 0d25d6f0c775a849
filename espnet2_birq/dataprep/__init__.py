"""Corpus download and Kaldi data preparation: LibriSpeech and AMI through lhotse, YODAS, shared text normalisers."""
