"""Image rewards: the input convention they share and its checks.

Images are float tensors of shape ``(*batch, 3, H, W)`` with values in [0, 1] (any number of batch
dimensions, including none); an image reward returns float32 values of shape ``batch`` on the images'
device. Models behind a reward run in eval mode with frozen parameters (``requires_grad_(False)``), so
gradients reach the images only.
"""

from __future__ import annotations

import torch

from tilted.errors import NonFiniteError, ShapeError
from tilted.rewards.base import Reward


class ImageReward(Reward):
    """Base class of rewards on images ``(*batch, 3, H, W)`` in [0, 1], returning float32 ``(*batch)``."""

    input = "images"

    def check(self, images: torch.Tensor) -> torch.Size:
        """The batch shape of ``images``, after checking their shape, dtype and finiteness."""
        return check_images(type(self).__name__, images)


def check_images(name: str, images: torch.Tensor) -> torch.Size:
    """Batch shape of images ``(*batch, 3, H, W)``; a clear error for other shapes, dtypes or NaN/inf values."""
    if not isinstance(images, torch.Tensor):
        raise ShapeError(f"{name} takes a tensor of images (*batch, 3, H, W), got {type(images).__name__}")
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ShapeError(
            f"{name} takes RGB images of shape (*batch, 3, H, W) with values in [0, 1], got shape {tuple(images.shape)}; "
            "decode latents first (reward.after(decode, input='latents')) and put channels before height and width"
        )
    if not images.is_floating_point():
        raise ShapeError(
            f"{name} takes float images in [0, 1], got dtype {images.dtype}; convert uint8 images with x.float() / 255"
        )
    bad = ~torch.isfinite(images.detach())
    if bad.any():
        raise NonFiniteError(f"{name} got images with {int(bad.sum())} NaN or infinite pixel value(s)")
    return images.shape[:-3]
