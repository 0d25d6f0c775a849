"""Span masking of input features, aligned with the encoder's subsampled frames.

BEST-RQ masks the (normalised) features *before* the convolutional subsampling and
predicts targets only for encoder output frames that are masked. To make "masked"
unambiguous, spans are drawn at the resolution of the encoder output: output frame
``i`` owns input frames ``[i * factor, (i + 1) * factor)``, and a span covers whole
groups. An output frame is masked exactly when every input frame of its group is.

This module also knows the exact output length of ESPnet's subsampling layers, so the
per-frame masks have the same length as the encoder output for every input length
(a classic off-by-one source in public implementations).
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from typeguard import typechecked

from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv1dSubsampling1,
    Conv1dSubsampling2,
    Conv1dSubsampling3,
    Conv2dSubsampling,
    Conv2dSubsampling1,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
)

# ESPnet's subsampling layers shorten the time axis exactly like these slices of the
# padding mask (see the ``x_mask[:, :, :-2:2]`` expressions in their forward): each
# entry is (frames trimmed at the end, stride).
_SUBSAMPLING_SLICES = {
    Conv2dSubsampling: ((2, 2), (2, 2)),
    Conv2dSubsampling1: ((4, 1),),
    Conv2dSubsampling2: ((2, 2), (2, 1)),
    Conv2dSubsampling6: ((2, 2), (4, 3)),
    Conv2dSubsampling8: ((2, 2), (2, 2), (2, 2)),
    Conv1dSubsampling1: ((2, 1), (2, 1)),
    Conv1dSubsampling2: ((2, 1), (2, 2)),
    Conv1dSubsampling3: ((2, 1), (4, 3)),
}


class FrameSubsampling:
    """Length arithmetic of an encoder's input layer.

    Args:
        slices: Sequence of (trim, stride) pairs; empty for no subsampling.
    """

    def __init__(self, slices: Tuple[Tuple[int, int], ...] = ()):
        self.slices = tuple(slices)
        self.factor = math.prod(stride for _, stride in self.slices)

    @classmethod
    def from_encoder(cls, encoder: torch.nn.Module) -> "FrameSubsampling":
        """Describe ``encoder.embed`` (any ESPnet encoder with an ``embed`` layer)."""
        embed = getattr(encoder, "embed", None)
        for layer_class, slices in _SUBSAMPLING_SLICES.items():
            if type(embed) is layer_class:
                return cls(slices)
        # Linear / embedding input layers and encoders without ``embed`` keep the
        # frame rate.
        return cls(())

    def output_lengths(
        self, lengths: torch.Tensor, max_length: int = None
    ) -> torch.Tensor:
        """Encoder output frames for ``lengths`` input frames padded to ``max_length``.

        ESPnet's subsampling layers slice the *padded* mask, so in a padded batch a
        shorter utterance can keep one or two extra frames whose receptive field
        reaches into the padding; mirroring the slicing gives exactly the lengths the
        encoder reports. ``max_length`` defaults to ``lengths.max()``.
        """
        if max_length is None:
            max_length = int(lengths.max()) if lengths.numel() else 0
        mask = torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]
        for trim, stride in self.slices:
            mask = mask[:, : max(mask.shape[1] - trim, 0) : stride]
        return mask.sum(dim=1)

    def max_output_frames(self, max_length: int) -> int:
        """Output frames of a padded batch with ``max_length`` input frames."""
        return int(self.output_lengths(torch.tensor([max_length]), max_length)[0])

    def target_lengths(self, lengths: torch.Tensor, max_length: int = None) -> torch.Tensor:
        """Output frames whose whole ``factor``-frame input group is real input.

        These frames have an input-level target (a stacked group of ``factor`` frames);
        frames past them only see padding and are left out of every loss.
        """
        return torch.minimum(
            self.output_lengths(lengths, max_length),
            torch.div(lengths, max(self.factor, 1), rounding_mode="floor"),
        )

    def min_input_frames(self) -> int:
        """Smallest input length giving at least one output frame."""
        length = 1
        while self.max_output_frames(length) < 1:
            length += 1
        return length


class SpanMasking(torch.nn.Module):
    """BEST-RQ masking: random spans of input frames replaced by Gaussian noise.

    Every input frame starts a span with probability ``mask_prob``; a span lasts
    ``span_ms``. Spans are drawn on the subsampled time axis so they cover whole
    groups of ``factor`` input frames (start probability per output frame
    ``1 - (1 - mask_prob) ** factor``, span length ``round(span_ms / (frame_shift_ms *
    factor))`` output frames). Masked frames are replaced with fresh noise of standard
    deviation ``noise_std`` (features are normalised, so this is "no information").

    Args:
        mask_prob: Probability that a 10 ms input frame starts a span (0.01 in BEST-RQ).
        span_ms: Span length in milliseconds (400 in BEST-RQ).
        frame_shift_ms: Hop of the input features in milliseconds.
        noise_std: Standard deviation of the replacement noise (0.1 in BEST-RQ).
        min_spans: Spans forced into every utterance that has none after sampling, so
            that no batch is left without a masked frame (no NaN loss on short inputs).
    """

    @typechecked
    def __init__(
        self,
        mask_prob: float = 0.01,
        span_ms: float = 400.0,
        frame_shift_ms: float = 10.0,
        noise_std: float = 0.1,
        min_spans: int = 1,
    ):
        super().__init__()
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if span_ms <= 0 or frame_shift_ms <= 0:
            raise ValueError("span_ms and frame_shift_ms must be positive")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        if min_spans < 0:
            raise ValueError(f"min_spans must be >= 0, got {min_spans}")
        self.mask_prob = mask_prob
        self.span_ms = span_ms
        self.frame_shift_ms = frame_shift_ms
        self.noise_std = noise_std
        self.min_spans = min_spans

    def span_frames(self, factor: int) -> int:
        """Span length in output frames for subsampling ``factor``."""
        return max(1, round(self.span_ms / (self.frame_shift_ms * factor)))

    def start_prob(self, factor: int) -> float:
        """Probability that one output frame starts a span."""
        return 1.0 - (1.0 - self.mask_prob) ** factor

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        subsampling: FrameSubsampling,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Mask ``feats``.

        Args:
            feats: (B, L, D) normalised features (the encoder input).
            lengths: (B,) valid input frames.
            subsampling: Length arithmetic of the encoder's input layer.
            generator: Random stream for span starts and noise (the model passes a
                per-rank one, :func:`espnet2_birq.rng.step_generator`); None: the
                global stream.

        Returns:
            masked: (B, L, D) features with masked frames replaced by noise.
            mask_info: dict with
                ``input_mask`` (B, L) bool, masked input frames;
                ``mask_m`` (B, T_out) bool, masked encoder output frames;
                ``mask_u`` (B, T_out) bool, unmasked valid encoder output frames;
                ``output_lengths`` (B,) encoder output frames (as the encoder counts);
                ``frame_lengths`` (B,) output frames with a full input group, the
                frames that enter the losses (``<= output_lengths``).
                ``subsampling_factor`` (int) input frames per output frame.
        """
        factor = max(subsampling.factor, 1)
        batch, num_frames, _ = feats.shape
        device = feats.device
        lengths = lengths.to(device)
        output_lengths = subsampling.output_lengths(lengths, num_frames)
        frame_lengths = subsampling.target_lengths(lengths, num_frames)
        max_out = subsampling.max_output_frames(num_frames)

        span = self.span_frames(factor)
        out_index = torch.arange(max_out, device=device)
        valid_out = out_index[None, :] < frame_lengths[:, None]
        starts = (
            torch.rand(batch, max_out, device=device, generator=generator)
            < self.start_prob(factor)
        ) & valid_out
        if self.min_spans > 0:
            starts = self._force_min_spans(starts, frame_lengths, generator)
        # A frame is masked when a span started at most ``span - 1`` frames before it:
        # a running count over a window of ``span`` start flags.
        if max_out > 0:
            counts = torch.nn.functional.conv1d(
                starts.float()[:, None, :],
                torch.ones(1, 1, span, device=device),
                padding=span - 1,
            )[:, 0, :max_out]
            mask_m = (counts > 0) & valid_out
        else:
            # Input too short for the subsampling (conv1d rejects an empty time axis).
            mask_m = valid_out

        # Expand output frames to the input frames they own. Input frames past the last
        # full group (the tail the subsampling drops) are never masked.
        input_mask = torch.zeros(batch, num_frames, dtype=torch.bool, device=device)
        expanded = mask_m.repeat_interleave(factor, dim=1)[:, :num_frames]
        input_mask[:, : expanded.shape[1]] = expanded
        noise = torch.randn(
            feats.shape, device=device, dtype=feats.dtype, generator=generator
        ).mul_(self.noise_std)
        masked = torch.where(input_mask[:, :, None], noise, feats)
        mask_info = {
            "input_mask": input_mask,
            "mask_m": mask_m,
            "mask_u": valid_out & ~mask_m,
            "output_lengths": output_lengths,
            "frame_lengths": frame_lengths,
            # Input frames per output frame, so that losses stacking input frames into
            # targets can refuse a different stacking (see losses.common).
            "subsampling_factor": factor,
        }
        return masked, mask_info

    def _force_min_spans(
        self,
        starts: torch.Tensor,
        output_lengths: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Add ``min_spans`` random starts to each utterance that drew none."""
        needs = (starts.sum(dim=1) == 0) & (output_lengths > 0)
        if not bool(needs.any()):
            return starts
        starts = starts.clone()
        for b in torch.nonzero(needs).flatten().tolist():
            n_out = int(output_lengths[b])
            picks = torch.randint(
                0, n_out, (self.min_spans,), device=starts.device, generator=generator
            )
            starts[b, picks] = True
        return starts


def measure_mask(mask: torch.Tensor, lengths: torch.Tensor) -> Tuple[float, List[int]]:
    """Masked fraction of valid frames and the lengths of all masked runs.

    Runs that touch the end of an utterance are excluded from the span lengths since
    they may be truncated. Used by tests and by the masking statistics in the logs.

    Args:
        mask: (B, T) bool.
        lengths: (B,) valid frames.
    """
    masked = 0
    total = 0
    runs: List[int] = []
    for row, length in zip(mask.tolist(), lengths.tolist()):
        row = row[:length]
        masked += sum(row)
        total += length
        run = 0
        for value in row:
            if value:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    return (masked / total if total else 0.0), runs


def expected_mask_rate(start_prob: float, span: int) -> float:
    """Masked fraction far from utterance edges for independent span starts."""
    return 1.0 - (1.0 - start_prob) ** span

