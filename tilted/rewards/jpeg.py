"""JPEG compressibility: r(x) = −(size of x as a JPEG at quality 95, in kilobytes), as in DDPO.

Each image is quantised to 8 bits (round(255·x), clamped to [0, 255]), encoded by Pillow as a
baseline JPEG at the given quality, and scored by minus its size in kB (1 kB = 1000 bytes): smooth,
low-detail images score higher. Not differentiable (the encoder is a black box): use it with engines
that only evaluate rewards (SMC with the prior proposal, importance sampling, best-of-N, SVDD, search).
"""

from __future__ import annotations

import io

import torch
from PIL import Image

from tilted.errors import ModelError
from tilted.rewards.images import ImageReward


class JPEGCompressibility(ImageReward):
    """r(x) = −(JPEG size of x in kB) at ``quality`` (95 by default, as in DDPO).

    Input: images ``(*batch, 3, H, W)`` in [0, 1] (values outside are clamped). Output: float32
    ``(*batch)`` on the images' device, without gradient. Cost: one JPEG encoding per image on the CPU
    (about 50 ms at 512×512 on one CPU core).
    """

    differentiable = False

    def __init__(self, quality: int = 95):
        if not (isinstance(quality, int) and 1 <= quality <= 100):
            raise ModelError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
        self.quality = quality

    def size_kb(self, image: torch.Tensor) -> float:
        """JPEG size in kB of one image ``(3, H, W)`` in [0, 1]."""
        pixels = (image.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=self.quality)
        return buffer.tell() / 1000

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = self.check(images)
        flat = images.reshape((-1,) + images.shape[-3:])
        sizes = [self.size_kb(image) for image in flat.float()]
        return -torch.tensor(sizes, dtype=torch.float32, device=images.device).reshape(batch)

    def __repr__(self) -> str:
        return f"JPEGCompressibility(quality={self.quality})"
