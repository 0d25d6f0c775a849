"""Span masking of input features, aligned with the encoder's subsampled frames.

BEST-RQ masks the (normalised) features *before* the convolutional subsampling and
predicts targets only for encoder output frames that are masked. To make "masked"
unambiguous, spans are drawn at the resolution of the encoder output: output frame
``i`` owns input frames ``[i * factor, (i + 1) * factor)``, and a span covers whole
groups. An output frame is masked exactly when every input frame of its group is.

This module also knows the exact output length of ESPnet's subsampling layers, so the
per-frame masks have the same length as the encoder output for every input length
(a classic off-by-one source in public implementations).

:class:`LearnedMasking` (util ``learned_mask``) is the wav2vec 2.0 / data2vec / MT4SSL
alternative: spans drawn on the encoder's frames, replaced *after* the subsampling by
a trained embedding. Both give the losses the same ``mask_info``.
"""

import contextlib
import math
from typing import Dict, Iterator, List, Optional, Tuple

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



# --------------------------------------------------------------------------------------
# Learned-embedding masking of the subsampled frames (wav2vec 2.0 / data2vec / MT4SSL)
# --------------------------------------------------------------------------------------
def _positional_encoding_classes() -> Tuple[type, ...]:
    from espnet.nets.pytorch_backend.transformer import embedding

    names = (
        "PositionalEncoding",  # also ScaledPositionalEncoding, LegacyRelPositionalEncoding
        "RelPositionalEncoding",
        "LearnableFourierPosEnc",
        "StreamPositionalEncoding",
        "ConvolutionalPositionalEmbedding",
    )
    return tuple(getattr(embedding, name) for name in names if hasattr(embedding, name))


def positional_encoding_of(encoder: torch.nn.Module) -> torch.nn.Module:
    """The positional-encoding module that ends the input layer ``encoder.embed``.

    ESPnet's input layers (``conv2d*``, ``linear``, ...) end with a positional encoding
    whose input is the subsampled, projected frame sequence (B, T_out, d): the place
    where :class:`LearnedMasking` replaces masked frames.
    """
    embed = getattr(encoder, "embed", None)
    found = (
        []
        if embed is None
        else [m for m in embed.modules() if isinstance(m, _positional_encoding_classes())]
    )
    if len(found) != 1:
        raise TypeError(
            f"learned_mask needs an ESPnet encoder whose input layer 'embed' ends with one "
            f"positional encoding (Transformer, Conformer, E-Branchformer); "
            f"{type(encoder).__name__}.embed has {len(found)}"
        )
    return found[0]


def wav2vec2_span_mask(
    frame_lengths: torch.Tensor,
    max_frames: int,
    mask_prob: float,
    span: int,
    min_spans: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Spans as fairseq's ``compute_mask_indices`` draws them (static lengths, overlap).

    For an utterance of ``n`` frames: ``k = max(min_spans, floor(mask_prob * n / span
    + u))`` spans (``u`` uniform in [0, 1): probabilistic rounding), their starts drawn
    uniformly *without replacement* from the first ``n - span`` frames (``k + 1``
    frames, at most ``n``, when ``n - span <= k``), each masking ``span`` frames from
    its start; overlapping spans merge and frames past ``n`` are dropped. So
    ``mask_prob`` is the fraction of frames that would be masked without overlap;
    with overlap, far from the edges a frame stays unmasked with probability about
    ``(1 - mask_prob / span) ** span`` (0.65, 10: about 49 % masked).
    fairseq's ``require_same_masks`` (trimming every utterance of a batch to the same
    number of masked frames, a convenience of its reshapes) is not applied.

    Args:
        frame_lengths: (B,) frames that may be masked.
        max_frames: Width of the returned mask.
        mask_prob, span, min_spans: As above.
        generator: Random stream (None: the global one).

    Returns:
        (B, max_frames) bool.
    """
    device = frame_lengths.device
    lengths = frame_lengths.long()
    batch = lengths.shape[0]
    if max_frames <= 0 or batch == 0:
        return torch.zeros(batch, max(max_frames, 0), dtype=torch.bool, device=device)
    rounding = torch.rand(batch, device=device, generator=generator)
    num = torch.floor(mask_prob * lengths / span + rounding).long().clamp(min=min_spans)
    positions = torch.where(lengths - span > num, lengths - span, num + 1)
    positions = torch.minimum(positions, lengths)
    num = torch.minimum(num, positions)
    # A uniform subset of ``num`` starts among the first ``positions`` frames: the
    # ``num`` smallest of i.i.d. uniform keys (later frames get keys above every draw).
    index = torch.arange(max_frames, device=device)
    keys = torch.rand(batch, max_frames, device=device, generator=generator)
    keys = keys.masked_fill(index[None, :] >= positions[:, None], 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    starts = rank < num[:, None]
    counts = torch.nn.functional.conv1d(
        starts.float()[:, None, :],
        torch.ones(1, 1, span, device=device),
        padding=span - 1,
    )[:, 0, :max_frames]
    return (counts > 0) & (index[None, :] < lengths[:, None])


class LearnedMasking(torch.nn.Module):
    """wav2vec 2.0 / data2vec / MT4SSL masking: a trained vector replaces masked frames.

    Unlike :class:`SpanMasking` (noise on the features, before the subsampling), the
    mask acts on the encoder's own frame sequence: the subsampled, projected frames
    (B, T_out, d) that enter the input layer's positional encoding, i.e. after the
    convolutional subsampling and its linear projection, before the positional
    encoding and the blocks. There a masked frame becomes ``embedding``, a parameter of
    ``d`` values trained with the rest of the model (initialised uniform in [0, 1), as
    wav2vec 2.0's ``mask_emb``), and the positional encoding still tells where it is.
    This is where wav2vec 2.0 and data2vec mask (after the feature extractor and its
    projection, before the convolutional positional embedding); the encoder frames are
    also the frames the targets are defined on, so no alignment is needed.

    Spans follow fairseq's ``compute_mask_indices`` (:func:`wav2vec2_span_mask`) over
    the frames that enter the losses (``frame_lengths``).

    The model draws the mask with :meth:`draw` and runs the encoder inside
    :meth:`applied`, which puts the replacement on the positional encoding's input for
    that one forward (the unmasked passes of the same step, BiRQ's label pass or the
    EMA teacher's input layer, are not masked).

    Args:
        encoder_output_size: ``d``, the encoder's frame dimension (filled in by the task).
        mask_prob: Proportion of frames covered by spans before overlaps (0.65 in
            wav2vec 2.0, data2vec, MT4SSL; about 49 % of the frames end up masked).
        span_frames: Span length in encoder frames (10; 40 ms frames with ``conv2d``).
        min_spans: Spans drawn at least per utterance (1 in MT4SSL's code).
    """

    @typechecked
    def __init__(
        self,
        encoder_output_size: int,
        mask_prob: float = 0.65,
        span_frames: int = 10,
        min_spans: int = 1,
    ):
        super().__init__()
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if span_frames < 1:
            raise ValueError(f"span_frames must be >= 1, got {span_frames}")
        if min_spans < 0:
            raise ValueError(f"min_spans must be >= 0, got {min_spans}")
        self.mask_prob = mask_prob
        self.span_frames = span_frames
        self.min_spans = min_spans
        self.embedding = torch.nn.Parameter(torch.empty(encoder_output_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.embedding.uniform_(0.0, 1.0)

    def espnet_initialization_fn(self) -> None:
        """ESPnet's ``--init`` calls this: keep wav2vec 2.0's initialisation."""
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"dim={self.embedding.shape[0]}, mask_prob={self.mask_prob}, "
            f"span_frames={self.span_frames}, min_spans={self.min_spans}"
        )

    def draw(
        self,
        lengths: torch.Tensor,
        num_frames: int,
        subsampling: FrameSubsampling,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """The mask of a batch, at the encoder's frame rate.

        Args:
            lengths: (B,) valid input frames.
            num_frames: Padded input length.
            subsampling: Length arithmetic of the encoder's input layer.
            generator: Random stream (the model passes the step's per-rank one).

        Returns:
            mask_info with the keys of :meth:`SpanMasking.forward`: ``mask_m``,
            ``mask_u``, ``output_lengths``, ``frame_lengths``, ``subsampling_factor``
            and ``input_mask`` (the input frames of the masked encoder frames; the input
            itself is left as it is).
        """
        factor = max(subsampling.factor, 1)
        device = lengths.device
        output_lengths = subsampling.output_lengths(lengths, num_frames)
        frame_lengths = subsampling.target_lengths(lengths, num_frames)
        max_out = subsampling.max_output_frames(num_frames)
        mask_m = wav2vec2_span_mask(
            frame_lengths, max_out, self.mask_prob, self.span_frames, self.min_spans,
            generator,
        )  # fmt: skip
        valid_out = torch.arange(max_out, device=device)[None, :] < frame_lengths[:, None]
        input_mask = torch.zeros(lengths.shape[0], num_frames, dtype=torch.bool, device=device)
        expanded = mask_m.repeat_interleave(factor, dim=1)[:, :num_frames]
        input_mask[:, : expanded.shape[1]] = expanded
        return {
            "input_mask": input_mask,
            "mask_m": mask_m,
            "mask_u": valid_out & ~mask_m,
            "output_lengths": output_lengths,
            "frame_lengths": frame_lengths,
            "subsampling_factor": factor,
        }

    def replace(self, frames: torch.Tensor, mask_m: torch.Tensor) -> torch.Tensor:
        """``frames`` (B, T, d) with the masked ones replaced by the embedding."""
        if frames.shape[:2] != mask_m.shape:
            raise RuntimeError(
                f"learned_mask: the mask covers {tuple(mask_m.shape)} frames but the "
                f"encoder's input layer gives {tuple(frames.shape[:2])}"
            )
        embedding = self.embedding.to(frames.dtype)
        return torch.where(mask_m[:, :, None], embedding, frames)

    @contextlib.contextmanager
    def applied(self, encoder: torch.nn.Module, mask_m: torch.Tensor) -> Iterator[None]:
        """Mask the frames entering ``encoder``'s positional encoding during the block.

        The encoder's forward must call its input layer exactly once inside the block
        (checked), so the masked forward cannot silently run unmasked.
        """
        target = positional_encoding_of(encoder)
        calls = []

        def pre_hook(module, args):
            calls.append(True)
            return (self.replace(args[0], mask_m),) + tuple(args[1:])

        handle = target.register_forward_pre_hook(pre_hook)
        try:
            yield
        finally:
            handle.remove()
        if len(calls) != 1:
            raise RuntimeError(
                f"learned_mask: the encoder's positional encoding ran {len(calls)} times "
                "in the masked forward, expected once"
            )
