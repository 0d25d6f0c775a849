"""Pieces shared by the masked-prediction losses: heads, cross-entropy, code usage."""

from typing import Dict, Optional, Tuple

import torch


class MaskedPredictionHeads(torch.nn.Module):
    """One linear softmax head per codebook.

    Args:
        input_size: Dimension of the encoder frames fed to the heads.
        codebook_size: Number of classes of each head.
        num_codebooks: Number of heads (one per codebook).
    """

    def __init__(self, input_size: int, codebook_size: int, num_codebooks: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(
            torch.nn.Linear(input_size, codebook_size) for _ in range(num_codebooks)
        )

    def forward(
        self, hidden: torch.Tensor, targets: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy, averaged over heads.

        Args:
            hidden: (M, D) encoder frames at the selected (masked) positions.
            targets: (M, N) code indices for the same positions, N = num_codebooks.

        Returns:
            loss: scalar mean cross-entropy over frames and heads.
            accuracy: scalar fraction of correct arg-max predictions (no gradient).
        """
        if targets.shape[-1] != len(self.heads):
            raise ValueError(
                f"{targets.shape[-1]} target codebooks for {len(self.heads)} heads"
            )
        if hidden.shape[0] == 0:
            # No masked frame in the batch: a zero loss that still reaches every head
            # parameter (DDP expects each parameter in the graph), not the NaN of an
            # empty cross-entropy.
            zero = hidden.sum() * 0.0
            for head in self.heads:
                zero = zero + sum(p.sum() for p in head.parameters()) * 0.0
            return zero, hidden.new_zeros(())
        losses = []
        correct = hidden.new_zeros(())
        for index, head in enumerate(self.heads):
            logits = head(hidden)
            losses.append(torch.nn.functional.cross_entropy(logits, targets[:, index]))
            correct = correct + (logits.detach().argmax(-1) == targets[:, index]).sum()
        accuracy = correct / max(targets.numel(), 1)
        return torch.stack(losses).mean(), accuracy


@torch.no_grad()
def code_usage(codes: torch.Tensor, codebook_size: int) -> Tuple[float, float]:
    """Perplexity and number of distinct codes, averaged over codebooks.

    A healthy quantiser spreads frames over many codes; a collapse shows as a
    perplexity (and distinct count) falling towards 1.

    Args:
        codes: (M, N) code indices of the valid frames of a batch.
        codebook_size: Size of each codebook.
    """
    if codes.numel() == 0:
        return 0.0, 0.0
    perplexities = []
    distinct = []
    for column in codes.unbind(dim=-1):
        counts = torch.bincount(column, minlength=codebook_size).float()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        perplexities.append(float(entropy.exp()))
        distinct.append(float((counts > 0).sum()))
    return sum(perplexities) / len(perplexities), sum(distinct) / len(distinct)


def check_alignment(
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    mask_info: Dict[str, torch.Tensor],
    hidden: torch.Tensor,
    name: str,
    stack_frames: Optional[int] = None,
) -> torch.Tensor:
    """Trim per-frame targets to the encoder frames, refusing any misalignment.

    Targets come from ``stack_frames``-frame groups of the input; the encoder output
    may be a frame shorter (convolution edges). Target ``i`` and encoder frame ``i``
    cover the same input group, so trimming the tail keeps them aligned. More encoder
    frames than targets, or a valid encoder frame without a target, is a bug.

    Args:
        targets: (B, T_t, N) codes.
        target_lengths: (B,) valid targets.
        mask_info: masking output (``mask_m`` and ``output_lengths``).
        hidden: (B, T_out, D) encoder frames the targets must align with.
        name: loss name for the error message.
        stack_frames: input frames stacked per target, for targets computed from the
            input; must equal ``mask_info["subsampling_factor"]`` when both are known
            (a smaller stacking gives enough targets but misaligned ones).

    Returns:
        (B, T_out, N) targets.
    """
    factor = mask_info.get("subsampling_factor")
    if stack_frames is not None and factor is not None and stack_frames != factor:
        raise RuntimeError(
            f"{name}: targets stack {stack_frames} input frames but the encoder "
            f"subsamples by {factor}; stack_frames must equal the encoder's "
            "subsampling factor"
        )
    out_frames = hidden.shape[1]
    if mask_info["mask_m"].shape[1] != out_frames:
        raise RuntimeError(
            f"{name}: mask has {mask_info['mask_m'].shape[1]} frames but the encoder "
            f"produced {out_frames}; the masking does not match the subsampling"
        )
    if targets.shape[1] < out_frames or bool(
        (mask_info["frame_lengths"] > target_lengths).any()
    ):
        raise RuntimeError(
            f"{name}: {targets.shape[1]} target frames for {out_frames} encoder "
            "frames; stack_frames must equal the encoder's subsampling factor"
        )
    return targets[:, :out_frames]
