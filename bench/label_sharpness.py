#!/usr/bin/env python3
"""How often BiRQ's selected enhanced label equals the noise-free arg-max.

Random unit vectors (16 dims) are scored against a random l2-normalised codebook, as the
enhanced quantiser does; the label is ``argmax(cos + s * g)`` with Gumbel noise ``g``
(``label_noise`` s). The paper-style selection, a hard Gumbel-softmax sample of
``cos / tau``, is the same as ``s = tau``. Prints one row per noise scale: the share
of labels equal to the arg-max, and the perplexity of the labels of one repeated vector
(how many codes' worth of randomness a frame's label carries).

    python bench/label_sharpness.py --frames 5000
"""

import argparse

import torch
import torch.nn.functional as F

from espnet2_birq.losses.common import code_usage
from espnet2_birq.losses.gumbel import gumbel_noise


def measure(codes: int, dim: int, scale: float, frames: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    codebook = F.normalize(torch.randn(codes, dim, generator=generator), dim=-1)
    vectors = F.normalize(torch.randn(frames, dim, generator=generator), dim=-1)
    cos = vectors @ codebook.t()
    noisy = cos + scale * gumbel_noise(cos, generator)
    agreement = float((noisy.argmax(-1) == cos.argmax(-1)).float().mean())
    # one vector labelled `frames` times: entropy of its label distribution
    repeated = cos[:1].expand(frames, -1)
    labels = (repeated + scale * gumbel_noise(repeated, generator)).argmax(-1)
    perplexity, _ = code_usage(labels[:, None], codes)
    return agreement, perplexity


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[0.0, 0.001, 0.003, 0.01, 0.05, 0.1]
    )
    args = parser.parse_args()
    print("| codebook | noise scale | label = arg-max | label perplexity of one frame |")
    print("|---|---|---|---|")
    for codes in (8192, 256):
        for scale in args.scales:
            agreement, perplexity = measure(codes, 16, scale, args.frames)
            print(
                f"| {codes} x 16 | {scale:g} | {100 * agreement:.1f}% | {perplexity:.1f} |"
            )


if __name__ == "__main__":
    main()
