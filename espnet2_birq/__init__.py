"""espnet2-birq: BEST-RQ and BiRQ self-supervised pre-training for ESPnet2."""

__version__ = "0.1.0"
