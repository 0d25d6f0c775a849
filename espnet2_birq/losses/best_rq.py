"""BEST-RQ masked prediction loss (Chiu et al., ICML 2022)."""

from typing import Dict, List, Tuple

import torch
from typeguard import typechecked

from espnet2.ssl.loss.abs_loss import AbsSSLLoss
from espnet2_birq.losses.common import MaskedPredictionHeads, check_alignment, code_usage
from espnet2_birq.quantizer import RandomProjectionQuantizer


class BestRQLoss(AbsSSLLoss):
    """Predict random-projection codes of the unmasked input at masked frames.

    ``encoder_output_size``, ``input_size`` and ``subsampling_factor`` are filled in by
    the task from the encoder and features; the remaining arguments are the YAML
    ``loss: [{name: best_rq, conf: {...}}]`` keys.

    Args:
        encoder_output_size: Dimension of the encoder frames.
        input_size: Feature dimension the quantiser reads (80 for fbank).
        subsampling_factor: Encoder time reduction; frames stacked per target.
        codebook_size: Entries per codebook (paper: 8192).
        code_dim: Projection dimension (paper: 16).
        num_codebooks: Independent quantisers, one head each (paper: 1).
        seed: Seed of the quantiser's projection and codebook.
        layer: Encoder layer whose output feeds the heads (-1: final, normalised).
    """

    @typechecked
    def __init__(
        self,
        encoder_output_size: int,
        input_size: int,
        subsampling_factor: int,
        codebook_size: int = 8192,
        code_dim: int = 16,
        num_codebooks: int = 1,
        seed: int = 0,
        layer: int = -1,
    ):
        super().__init__()
        self.util_attributes = {"span_mask"}
        self.required_inputs = [
            "features",
            "feature_lengths",
            "encoder_output",
            "mask_info",
        ]
        self.layer = layer
        self.codebook_size = codebook_size
        self.quantizer = RandomProjectionQuantizer(
            input_dim=input_size,
            stack_frames=subsampling_factor,
            code_dim=code_dim,
            codebook_size=codebook_size,
            num_codebooks=num_codebooks,
            seed=seed,
        )
        self.heads = MaskedPredictionHeads(
            encoder_output_size, codebook_size, num_codebooks
        )

    def targets(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        mask_info: Dict[str, torch.Tensor],
        hidden: torch.Tensor,
    ) -> torch.Tensor:
        """(B, T_out, N) anchoring codes aligned with ``hidden`` (B, T_out, D)."""
        codes, code_lengths = self.quantizer(features, feature_lengths)
        return check_alignment(
            codes,
            code_lengths,
            mask_info,
            hidden,
            "best_rq",
            stack_frames=self.quantizer.stack_frames,
        )

    def forward(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor,
        encoder_output: List[torch.Tensor],
        mask_info: Dict[str, torch.Tensor],
    ) -> Tuple[torch.Tensor, Dict]:
        """Compute the loss.

        Args:
            features: (B, L, D) normalised features before masking.
            feature_lengths: (B,) valid frames.
            encoder_output: per-layer (B, T_out, D') outputs of the masked forward.
            mask_info: output of :class:`espnet2_birq.masking.SpanMasking`.
        """
        hidden = encoder_output[self.layer]
        codes = self.targets(features, feature_lengths, mask_info, hidden)
        mask_m = mask_info["mask_m"]
        loss, accuracy = self.heads(hidden[mask_m], codes[mask_m])
        valid = mask_m | mask_info["mask_u"]
        perplexity, distinct = code_usage(codes[valid], self.codebook_size)
        stats = {
            "best_rq_loss": loss.detach(),
            "best_rq_acc": accuracy,
            "best_rq_ppl": perplexity,
            "best_rq_codes": distinct,
            "best_rq_mask_rate": mask_m.sum() / valid.sum().clamp(min=1),
        }
        return loss, stats
