"""Random-projection quantiser of BEST-RQ (Chiu et al., ICML 2022).

The quantiser turns normalised input features into discrete targets:

1. stack ``stack_frames`` consecutive feature frames so that one target covers the
   same span of time as one encoder output frame (4 frames of 10 ms for the usual
   4x convolutional subsampling);
2. project each stacked vector with a frozen Xavier-initialised matrix;
3. l2-normalise the projection along the *code* dimension (never along time);
4. pick the nearest entry of a frozen codebook whose entries are drawn from N(0, 1)
   and l2-normalised.

Projection and codebook are buffers: they never appear in ``parameters()``, no
optimiser touches them, and they are saved in (and restored from) every checkpoint.
They are drawn from a private ``torch.Generator`` seeded with ``seed`` so that two
quantisers built with the same arguments are identical, independent of the global RNG.
"""

from typing import Tuple

import torch
from typeguard import typechecked


class RandomProjectionQuantizer(torch.nn.Module):
    """Frozen random-projection quantiser with ``num_codebooks`` independent codebooks.

    Args:
        input_dim: Dimension D of one feature frame (80 for log-mel fbank).
        stack_frames: Number of consecutive frames stacked into one target; must equal
            the encoder's subsampling factor so targets align with encoder frames.
        code_dim: Dimension of the projected space (16 in the paper).
        codebook_size: Number of entries per codebook (8192 in the paper).
        num_codebooks: Number of independent projection/codebook pairs.
        seed: Seed of the private generator the buffers are drawn from.
    """

    @typechecked
    def __init__(
        self,
        input_dim: int,
        stack_frames: int = 4,
        code_dim: int = 16,
        codebook_size: int = 8192,
        num_codebooks: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (
            ("input_dim", input_dim),
            ("stack_frames", stack_frames),
            ("code_dim", code_dim),
            ("codebook_size", codebook_size),
            ("num_codebooks", num_codebooks),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.input_dim = input_dim
        self.stack_frames = stack_frames
        self.code_dim = code_dim
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.seed = seed

        generator = torch.Generator().manual_seed(seed)
        stacked_dim = input_dim * stack_frames
        projection = torch.empty(num_codebooks, stacked_dim, code_dim)
        # Xavier-uniform bound for a (stacked_dim -> code_dim) linear map, drawn
        # through the private generator (torch.nn.init has no generator argument
        # in every release we support).
        bound = (6.0 / (stacked_dim + code_dim)) ** 0.5
        projection.uniform_(-bound, bound, generator=generator)
        codebook = torch.randn(
            num_codebooks, codebook_size, code_dim, generator=generator
        )
        codebook = torch.nn.functional.normalize(codebook, dim=-1)
        self.register_buffer("projection", projection, persistent=True)
        self.register_buffer("codebook", codebook, persistent=True)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, stack_frames={self.stack_frames}, "
            f"code_dim={self.code_dim}, codebook_size={self.codebook_size}, "
            f"num_codebooks={self.num_codebooks}, seed={self.seed}"
        )

    def stack(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stack ``stack_frames`` consecutive frames; a trailing partial group is dropped.

        Args:
            feats: (B, L, D) features.
            lengths: (B,) valid frames per utterance.

        Returns:
            stacked: (B, L // stack_frames, stack_frames * D).
            stacked_lengths: (B,) ``lengths // stack_frames``.
        """
        batch, num_frames, dim = feats.shape
        if dim != self.input_dim:
            raise ValueError(
                f"quantiser expects {self.input_dim}-dim features, got {dim}"
            )
        num_groups = num_frames // self.stack_frames
        stacked = feats[:, : num_groups * self.stack_frames].reshape(
            batch, num_groups, self.stack_frames * dim
        )
        return stacked, torch.div(lengths, self.stack_frames, rounding_mode="floor")

    @torch.no_grad()
    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Compute discrete targets.

        Args:
            feats: (B, L, D) normalised, unmasked features.
            lengths: (B,) valid frames per utterance.

        Returns:
            targets: (B, L // stack_frames, num_codebooks) int64 code indices; positions
                beyond ``target_lengths`` hold codes of padding and must be ignored.
            target_lengths: (B,) ``lengths // stack_frames``.
        """
        stacked, target_lengths = self.stack(feats, lengths)
        # fp32 with autocast off: under bf16/fp16 autocast the einsums would run in
        # low precision (the .float() casts alone do not stop autocast) and flip a few
        # percent of the targets.
        with torch.autocast(device_type=stacked.device.type, enabled=False):
            # (B, T, S*D) x (N, S*D, C) -> (B, T, N, C)
            projected = torch.einsum(
                "btd,ndc->btnc", stacked.float(), self.projection.float()
            )
            projected = torch.nn.functional.normalize(projected, dim=-1)
            # Both sides have unit norm, so the nearest entry in Euclidean distance is
            # the one with the largest dot product.
            similarity = torch.einsum(
                "btnc,nkc->btnk", projected, self.codebook.float()
            )
        return similarity.argmax(dim=-1), target_lengths
