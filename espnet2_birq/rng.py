"""Per-rank, per-step random streams for masking and label noise.

ESPnet seeds every data-parallel rank alike (``seed + epoch`` at the start of each
epoch), which is what the frozen quantisers need (their buffers must be identical on
every rank) but not what masking needs: with one global stream, every rank would draw
the same mask starts, the same mask noise and the same Gumbel noise for its different
utterances. :func:`step_generator` derives a private generator for one training step
from one draw of the global stream (hence from the seed, the epoch and the step, and
exact after a resume, which restarts at an epoch boundary) and from the rank.
"""

import torch

# Odd 63-bit constant (golden-ratio based) that spreads consecutive ranks far apart.
_RANK_STRIDE = 0x1E3779B97F4A7C15
_SEED_SPACE = 2**63


def data_parallel_rank() -> int:
    """This process' rank in torch.distributed, 0 when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def step_generator(device: torch.device, rank: int = None) -> torch.Generator:
    """A generator on ``device`` for this step and rank.

    One 62-bit integer is drawn from the global CPU stream (the same on every rank,
    and different at every step), then mixed with the rank.

    Args:
        device: Device the random tensors will be drawn on.
        rank: Data-parallel rank (default: from torch.distributed).
    """
    if rank is None:
        rank = data_parallel_rank()
    base = int(torch.randint(0, 2**62, (1,)))
    generator = torch.Generator(device=device)
    generator.manual_seed((base + rank * _RANK_STRIDE) % _SEED_SPACE)
    return generator
