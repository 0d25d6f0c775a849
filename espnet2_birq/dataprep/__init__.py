"""Corpus download and Kaldi data preparation for the BiRQ recipes: LibriSpeech and AMI
through lhotse's recipes (``librispeech``, ``ami``), YODAS (``yodas``), and the text
normalisers they share (``text``)."""
