"""Encoder frame rate from an SSL config, without building (or importing) a model.

The collate (label cropping) and the k-means tool (one label per encoder frame) need
the encoder's time subsampling before any model exists; this module imports nothing
heavy so the recipe's label checks start fast.
"""

import argparse

# Encoder input layers (ESPnet's names) and their time subsampling factor, for the
# collate's label cropping (it runs before any model is built).
INPUT_LAYER_FACTORS = {
    None: 1, "linear": 1, "embed": 1, "conv2d1": 1, "conv1d1": 1,
    "conv2d": 4, "conv2d2": 2, "conv2d6": 6, "conv2d8": 8, "conv1d2": 2, "conv1d3": 3,
}  # fmt: skip


def label_stride(args: "argparse.Namespace") -> int:
    """Input units (feature frames, or samples for raw audio) per encoder frame."""
    input_layer = (getattr(args, "encoder_conf", None) or {}).get("input_layer", "conv2d")
    if input_layer not in INPUT_LAYER_FACTORS:
        raise ValueError(
            f"frame_labels: unknown encoder input_layer {input_layer!r}; known: "
            f"{sorted(k for k in INPUT_LAYER_FACTORS if k)}"
        )
    stride = INPUT_LAYER_FACTORS[input_layer]
    if getattr(args, "input_size", None) is None:  # raw waveforms: samples per frame
        conf = getattr(args, "frontend_conf", None) or {}
        stride *= int(conf.get("fs", 16000) * conf.get("frame_shift_ms", 10.0) / 1000)
    return stride
