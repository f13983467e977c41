"""Rewards computed from pixels alone: no network, differentiable, on images of any channel count and range."""

from __future__ import annotations

import torch

from tilted.errors import ModelError, ShapeError
from tilted.rewards.base import Reward


class Symmetry(Reward):
    """Left-right mirror symmetry: r(x) = −mean_{c,h,w} (x_{c,h,w} − x_{c,h,W−1−w})².

    0 for a symmetric image, negative otherwise; on images in [−1, 1] its minimum is −4. Input: any
    tensor ``(*batch, C, H, W)`` (input ``"any"``, the last ``event_dim`` = 3 dimensions are one
    image); output float32 ``batch``. Differentiable: ∇r = −4(x − flip(x))/(C·H·W) (the pair of mirrored
    pixels is pulled together). Cost: one flip.
    """

    def __init__(self, event_dim: int = 3):
        if isinstance(event_dim, bool) or not isinstance(event_dim, int) or event_dim < 1:
            raise ModelError(f"event_dim must be a positive integer (3 for (C, H, W) images), got {event_dim!r}")
        self.event_dim = event_dim

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < self.event_dim:
            raise ShapeError(f"Symmetry with event_dim={self.event_dim} got x of shape {tuple(x.shape)}")
        dims = tuple(range(-self.event_dim, 0))
        return -(x - x.flip(-1)).pow(2).mean(dim=dims).float()

    def __repr__(self) -> str:
        return f"Symmetry(event_dim={self.event_dim})"
