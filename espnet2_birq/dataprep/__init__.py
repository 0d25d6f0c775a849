"""Corpus download and Kaldi-style data preparation helpers for BiRQ recipes.

Submodules
----------
download     resumable HTTP download with checksum/size verification and
             marker files; safe tar/zip extraction.
kaldi        writing and validating sorted Kaldi data directories.
text         text normalisers shared by the corpus preparers.
librispeech  LibriSpeech (openslr SLR12) preparation.
ami          AMI meeting corpus preparation from the NXT manual annotations.
yodas        YODAS (Hugging Face ``espnet/yodas``, v1 layout) preparation.

Everything here is pure Python (stdlib + numpy/soundfile) so that the
preparation can be tested offline on miniature copies of each corpus.
"""

__all__ = ["download", "kaldi", "text", "librispeech", "ami", "yodas"]
