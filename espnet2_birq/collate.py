"""Collation for input-level SSL objectives: pad, and optionally crop long inputs."""

import random
from typing import Collection, Dict, List, Optional, Tuple

import numpy as np
import torch

from espnet2.train.collate_fn import common_collate_fn


class CropCollateFn:
    """Randomly crop sequences to ``max_length`` and pad the batch.

    Only the input is cropped. Targets of BEST-RQ/BiRQ are computed inside the model
    from this very input, so they cannot drift out of alignment with the encoder
    frames (unlike collates that trim labels and audio separately).

    Args:
        max_length: Longest kept sequence (samples of raw audio or feature frames);
            None keeps whole sequences.
        crop_keys: Names of the data entries to crop.
        float_pad_value: Padding for float arrays.
        int_pad_value: Padding for integer arrays.
    """

    def __init__(
        self,
        max_length: Optional[int] = None,
        crop_keys: Collection[str] = ("speech",),
        float_pad_value: float = 0.0,
        int_pad_value: int = -32768,
    ):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
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

    def __call__(
        self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
    ) -> Tuple[List[str], Dict[str, torch.Tensor]]:
        cropped = [
            (
                uid,
                {
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
