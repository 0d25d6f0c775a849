"""Straight-through Gumbel-softmax labels, scored by a softmax head, in one autograd node.

BiRQ's enhanced loss is ``-sum_k y_k log p_k`` where ``y`` is a hard (Gumbel-softmax)
selection from the label scores with the straight-through gradient and ``p`` the prediction
head's softmax; a codebook-diversity term on the noise-free label probabilities comes
with it. Written as plain autograd, that is about twenty passes over (M, K) tensors (the
one-hot, ``hard - soft.detach() + soft``, the product with ``log p``, and each of
their backward ops) and keeps several (M, K) tensors alive. The hard label is one index
per frame, so the head's part is a sparse cross-entropy, and the label side needs only
the gradient of the soft sample: :class:`StraightThroughGumbelCE` computes both
gradients directly. ``tests/test_birq_gumbel.py`` checks it against the plain autograd
composition, value and gradients, for the same noise.
"""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Smallest probability inside the log of the diversity term (as in the reference).
_PROB_FLOOR = 1e-10


def gumbel_noise(
    like: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log U)``, U ~ Uniform(0, 1), float32, shaped like ``like``.

    Same distribution as ``F.gumbel_softmax``'s ``-log(Exponential(1))``, but drawn from
    uniforms, which is cheaper on CPU (``bench/step_cost.py --profile``), and from
    ``generator`` when given (per-rank streams, :mod:`espnet2_birq.rng`).
    """
    # U = 0 (probability 2**-24 per value) gives -inf: that code is not drawn, which
    # is what the limit says; U < 1, so the noise is never +inf and never NaN.
    uniform = torch.rand(
        like.shape, device=like.device, dtype=torch.float32, generator=generator
    )
    return uniform.log_().neg_().log_().neg_()


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M,) dot products of the rows of two (M, K) tensors, without an (M, K) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


class StraightThroughGumbelCE(torch.autograd.Function):
    """Cross-entropy of a head against hard Gumbel-softmax labels, plus diversity.

    Forward (M frames, K codes; in float32, or float64 for float64 inputs):

    - ``index = argmax(scores + noise)``: the hard label of each frame;
    - ``soft = softmax(scores + noise)``: the soft sample whose gradient the
      straight-through estimator uses;
    - ``ce = -mean_m log_softmax(head_logits)[m, index_m]``: its value equals
      ``-mean_m sum_k y_mk log p_mk`` with ``y = onehot(index) - sg(soft) + soft``;
    - ``diversity = 1 - exp(H(mean_m softmax(scores))) / K`` (0 when M = 0).

    Backward returns the gradients of ``ce`` (with the straight-through ``y``) and of
    ``diversity``: for the head ``(softmax(head_logits) - onehot(index)) / M``; for the
    scores, ``st_scale`` times the softmax backward of ``soft`` applied to
    ``-log p / M``, plus the softmax backward of the noise-free probabilities applied
    to the diversity gradient.

    Args (of ``apply``):
        scores: (M, K) label scores (cosine / tau); its gradient flows into the label
            generator (straight-through); ``requires_grad=False`` for stop-gradient labels.
        noise: (M, K) noise added to ``scores`` before the selection (scaled Gumbel
            noise), or None for deterministic (arg-max) labels.
        head_logits: (M, K) prediction head outputs for the same frames.
        st_scale: Factor on the straight-through gradient into ``scores`` (the
            diversity gradient is not scaled); 1.0 is plain straight-through.
        soft_targets: Train on the soft sample itself: ``ce = -mean_m <soft_m,
            log p_m>`` and the head's gradient ``(softmax(head_logits) - soft) / M``;
            the gradient into ``scores`` is the same as with the hard label.

    Returns:
        ce: scalar mean cross-entropy.
        diversity: scalar diversity penalty in [0, 1).
        index: (M,) long hard labels (no gradient).
        head_argmax: (M,) long arg-max of the head (for the accuracy; no gradient).
    """

    @staticmethod
    def forward(
        ctx,
        scores: torch.Tensor,
        noise: Optional[torch.Tensor],
        head_logits: torch.Tensor,
        st_scale: float = 1.0,
        soft_targets: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if scores.dim() != 2 or scores.shape != head_logits.shape:
            raise ValueError(
                f"scores {tuple(scores.shape)} and head logits "
                f"{tuple(head_logits.shape)} must be the same (M, K)"
            )
        frames, codes = scores.shape
        # float32 at least (half-precision logits under AMP), float64 kept for tests
        dtype = torch.promote_types(scores.dtype, torch.float32)
        scores32 = scores.to(dtype)
        log_probs = F.log_softmax(head_logits.to(dtype), dim=-1)
        noisy = scores32 if noise is None else scores32 + noise.to(dtype)
        index = noisy.argmax(dim=-1)
        soft = noisy.softmax(dim=-1)
        del noisy
        probs = scores32.softmax(dim=-1)
        if frames:
            mean_probs = probs.mean(dim=0)
            log_mean = mean_probs.clamp(min=_PROB_FLOOR).log()
            perplexity = torch.exp(-(mean_probs * log_mean).sum())
            diversity = 1.0 - perplexity / codes
            if soft_targets:
                ce = -_rowwise_dot(soft, log_probs).mean()
            else:
                ce = -log_probs.gather(1, index[:, None]).mean()
        else:
            # No frame (a batch without masked frames): nothing to predict and no
            # assignment to spread; zeros, not the NaN of an empty mean.
            log_mean = log_probs.new_zeros(codes)
            perplexity = log_probs.new_tensor(float(codes))
            diversity = log_probs.new_zeros(())
            ce = log_probs.new_zeros(())
        head_argmax = log_probs.argmax(dim=-1)

        ctx.mark_non_differentiable(index, head_argmax)
        ctx.save_for_backward(log_probs, soft, probs, index, log_mean, perplexity)
        ctx.dtypes = (scores.dtype, head_logits.dtype)
        ctx.st_scale = float(st_scale)
        ctx.soft_targets = bool(soft_targets)
        return ce, diversity, index, head_argmax

    @staticmethod
    def backward(ctx, grad_ce, grad_diversity, _grad_index, _grad_argmax):
        log_probs, soft, probs, index, log_mean, perplexity = ctx.saved_tensors
        frames, codes = log_probs.shape
        scale = grad_ce / max(frames, 1)
        st_scale = ctx.st_scale
        grad_scores = grad_head = None
        if ctx.needs_input_grad[2]:
            # d ce / d head_logits = (softmax - onehot) / M
            grad_head = log_probs.exp()
            if ctx.soft_targets:
                grad_head.sub_(soft)  # (softmax - soft sample) / M
            else:
                grad_head[torch.arange(frames, device=index.device), index] -= 1.0
            grad_head.mul_(scale)
            grad_head = grad_head.to(ctx.dtypes[1])
        if ctx.needs_input_grad[0]:
            # d ce / d soft = -log p / M (straight-through); softmax backward:
            # soft * (u - <soft, u>) with u = -scale * log p.
            soft_dot = _rowwise_dot(soft, log_probs)
            grad_scores = (log_probs - soft_dot[:, None]).mul_(soft).mul_(
                -scale * st_scale
            )
            # d diversity / d probs[m, k] = w_k = (ppl / K) * (log mean_k + 1) / M;
            # softmax backward: probs * (w - <probs, w>). (Below the floor the
            # clamped log's derivative differs by 1, multiplied by probabilities
            # under M * 1e-10: nothing measurable.)
            weight = (log_mean + 1.0) * (
                grad_diversity * perplexity / codes / max(frames, 1)
            )
            grad_scores.addcmul_(probs, weight)
            grad_scores.addcmul_(probs, (probs @ weight)[:, None], value=-1.0)
            grad_scores = grad_scores.to(ctx.dtypes[0])
        return grad_scores, None, grad_head, None, None
