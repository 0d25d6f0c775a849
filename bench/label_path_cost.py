"""Cost of BiRQ's enhanced-label path, fused against plain autograd, in one run.

The enhanced path of a BiRQ step is: cosine scores of the label-layer frames against the
enhanced codebook, Gumbel noise, the hard straight-through sample, the enhanced head's
cross-entropy against it, and the codebook-diversity term, forward and backward. This
script times, interleaved (A B C A B C ...) on the same tensors:

- ``head``: BEST-RQ's own head for comparison (linear layer + cross-entropy against
  fixed indices), the part of a step the enhanced head duplicates;
- ``plain``: the enhanced path written as plain autograd (``F.gumbel_softmax(hard=True)``,
  one-hot labels times the log-softmax, diversity on ``softmax``): the implementation
  before ``espnet2_birq/losses/gumbel.py``;
- ``fused``: the same path as ``BiRQLoss`` computes it (``StraightThroughGumbelCE``).

The defaults are the masked frames of ``bench/step_cost.py --size base`` (8 x 8 s,
about 490 masked frames, d=144, 8192 codes). It prints medians and the ratios
``plain / head`` and ``fused / head``: the label path's cost in units of one softmax head.

Usage::

    python bench/label_path_cost.py [--frames 490] [--dim 144] [--codes 8192]
        [--reps 20] [--threads 0]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet2_birq.losses.gumbel import StraightThroughGumbelCE, gumbel_noise  # noqa


def main(argv: List[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=490, help="masked frames M")
    parser.add_argument("--dim", type=int, default=144, help="encoder dimension D")
    parser.add_argument("--codes", type=int, default=8192, help="codebook size K")
    parser.add_argument("--code-dim", type=int, default=16)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--diversity-weight", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    frames, dim, codes = args.frames, args.dim, args.codes
    projection = torch.randn(dim, args.code_dim, generator=generator) / dim**0.5
    codebook = F.normalize(torch.randn(codes, args.code_dim, generator=generator), dim=-1)
    enhanced_head = torch.nn.Linear(dim, codes)
    anchor_head = torch.nn.Linear(dim, codes)
    label_hidden = torch.randn(frames, dim, generator=generator, requires_grad=True)
    head_hidden = torch.randn(frames, dim, generator=generator, requires_grad=True)
    anchor_targets = torch.randint(0, codes, (frames,), generator=generator)

    def cosine(hidden: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(hidden, hidden.shape[-1:])
        return F.normalize(normed @ projection, dim=-1) @ codebook.t()

    def head() -> torch.Tensor:
        logits = anchor_head(head_hidden)
        _ = (logits.detach().argmax(-1) == anchor_targets).float().mean()
        return F.cross_entropy(logits, anchor_targets)

    def plain() -> torch.Tensor:
        scores = cosine(label_hidden) / args.tau
        probs = scores.softmax(-1)
        labels = F.gumbel_softmax(scores, tau=1.0, hard=True)
        log_probs = F.log_softmax(enhanced_head(head_hidden), -1)
        loss = -(labels * log_probs).sum(-1).mean()
        with torch.no_grad():
            _ = (log_probs.argmax(-1) == labels.argmax(-1)).float().mean()
        mean_probs = probs.mean(0)
        perplexity = torch.exp(-(mean_probs * mean_probs.clamp(min=1e-10).log()).sum())
        return loss + args.diversity_weight * (1 - perplexity / codes)

    def fused() -> torch.Tensor:
        normed = F.layer_norm(label_hidden, label_hidden.shape[-1:])
        scores = F.normalize(normed @ projection, dim=-1) @ (codebook / args.tau).t()
        loss, diversity, index, head_argmax = StraightThroughGumbelCE.apply(
            scores, gumbel_noise(scores), enhanced_head(head_hidden)
        )
        _ = (head_argmax == index).float().mean()
        return loss + args.diversity_weight * diversity

    variants = {"head": head, "plain": plain, "fused": fused}
    times = {name: [] for name in variants}
    for rep in range(args.reps + 1):  # rep 0 warms up
        for name, fn in variants.items():
            for tensor in (label_hidden, head_hidden):
                tensor.grad = None
            start = time.perf_counter()
            fn().backward()
            elapsed = time.perf_counter() - start
            if rep > 0:
                times[name].append(elapsed)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"label path M={frames} D={dim} K={codes} threads={torch.get_num_threads()} "
        f"reps={args.reps}"
    )
    for name in variants:
        print(f"{name:6s} median {1000 * median[name]:8.1f} ms   "
              f"min {1000 * min(times[name]):8.1f} ms")  # fmt: skip
    print(f"plain/head = {median['plain'] / median['head']:.2f}")
    print(f"fused/head = {median['fused'] / median['head']:.2f}")
    print(f"fused/plain = {median['fused'] / median['plain']:.2f}")


if __name__ == "__main__":
    main()
