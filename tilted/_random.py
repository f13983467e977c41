"""Explicit randomness: every stochastic function takes a seed or a ``torch.Generator``."""

from __future__ import annotations

import torch

Seed = int | torch.Generator | None


def as_generator(seed: Seed, device: torch.device | str | None = None) -> torch.Generator | None:
    """A generator from a seed (``int``), a generator (returned as is) or ``None`` (global RNG)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, a torch.Generator or None, not {type(seed).__name__}")
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(seed)
    return gen
