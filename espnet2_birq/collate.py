"""Collation for input-level SSL objectives: pad, and optionally crop long inputs."""

import random
from typing import Collection, Dict, List, Optional, Tuple

import numpy as np
import torch

from espnet2.train.collate_fn import common_collate_fn

class CropCollateFn:
    """Randomly crop sequences to ``max_length`` and pad the batch.

    Targets of BEST-RQ/BiRQ are computed inside the model from this very input, so
    they cannot drift out of alignment with the encoder frames. External per-frame
    label streams (``label_keys``, e.g. MT4SSL's k-means ``frame_labels``, one label per
    encoder frame) are cropped with the same window: when an utterance has one, the
    crop starts at a multiple of ``label_stride`` input units (samples or frames per
    encoder frame), and its labels are cut at ``start // label_stride``, so label ``i``
    stays the label of encoder frame ``i``.

    Args:
        max_length: Longest kept sequence (samples of raw audio or feature frames);
            None keeps whole sequences.
        crop_keys: Names of the data entries to crop.
        float_pad_value: Padding for float arrays.
        int_pad_value: Padding for integer arrays.
        label_keys: Names of per-encoder-frame label streams cropped along.
        label_stride: Input units (of the ``crop_keys`` arrays) per label.
    """

    def __init__(
        self,
        max_length: Optional[int] = None,
        crop_keys: Collection[str] = ("speech",),
        float_pad_value: float = 0.0,
        int_pad_value: int = -32768,
        label_keys: Collection[str] = (),
        label_stride: int = 1,
    ):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        if label_stride < 1:
            raise ValueError(f"label_stride must be positive, got {label_stride}")
        self.label_keys = tuple(label_keys)
        self.label_stride = label_stride
        self.max_length = max_length
        self.crop_keys = tuple(crop_keys)
        self.float_pad_value = float_pad_value
        self.int_pad_value = int_pad_value

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(max_length={self.max_length})"

    def crop(self, array: np.ndarray) -> np.ndarray:
        """A random window of ``max_length`` along the first axis."""
        if self.max_length is None or array.shape[0] <= self.max_length:
            return array
        start = random.randint(0, array.shape[0] - self.max_length)
        return array[start : start + self.max_length]

    def crop_with_labels(self, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Crop ``crop_keys`` and ``label_keys`` of one utterance with one window."""
        inputs = [arrays[key] for key in self.crop_keys if key in arrays]
        length = inputs[0].shape[0] if inputs else 0
        if self.max_length is None or length <= self.max_length:
            return dict(arrays)
        start = self.label_stride * random.randint(
            0, (length - self.max_length) // self.label_stride
        )
        first_label = start // self.label_stride
        num_labels = self.max_length // self.label_stride
        cropped = {}
        for key, value in arrays.items():
            if key in self.crop_keys:
                cropped[key] = value[start : start + self.max_length]
            elif key in self.label_keys:
                cropped[key] = value[first_label : first_label + num_labels]
            else:
                cropped[key] = value
        return cropped

    def __call__(
        self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
    ) -> Tuple[List[str], Dict[str, torch.Tensor]]:
        cropped = [
            (
                uid,
                self.crop_with_labels(arrays)
                if any(key in arrays for key in self.label_keys)
                else {
                    key: self.crop(value) if key in self.crop_keys else value
                    for key, value in arrays.items()
                },
            )
            for uid, arrays in data
        ]
        return common_collate_fn(
            cropped,
            float_pad_value=self.float_pad_value,
            int_pad_value=self.int_pad_value,
        )
