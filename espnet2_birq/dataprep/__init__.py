"""Corpus download and Kaldi-style data preparation helpers for BiRQ recipes.

Submodules
----------
download     resumable HTTP download with checksum/size verification and
             marker files; safe tar/zip extraction.
text         text normalisers shared by the corpus preparers.
librispeech  LibriSpeech (openslr SLR12) preparation.
ami          AMI meeting corpus preparation from the NXT manual annotations.
yodas        YODAS (Hugging Face ``espnet/yodas``, v1 layout) preparation.

Data directories are written with ``espnet2_birq.utils.datadir.write_data_dir``.
Everything here is pure Python (stdlib + numpy/soundfile) so that the
preparation can be tested offline on miniature copies of each corpus.
"""

__all__ = ["download", "text", "librispeech", "ami", "yodas"]
