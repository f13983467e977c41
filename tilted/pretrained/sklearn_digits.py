"""A DDPM and two classifiers for scikit-learn's 8×8 handwritten digits, trained here, shipped as safetensors.

Data: the 1,797 images of :func:`sklearn.datasets.load_digits` (pixels 0 … 16), scaled to
x = pixel/8 − 1 ∈ [−1, 1], shape (1, 8, 8); a stratified 80/20 split (``random_state=0``): 1,437
training and 360 held-out images. The diffusion model and both classifiers saw the training images
only. Training: ``python -m tilted.pretrained.train_digits`` (seeded; docs/pretrained.md is the model card).

- :func:`digits`: a diffusers ``UNet2DModel`` (651 k parameters) predicting ε under the DDPM linear
  schedule β = 10⁻⁴ … 0.02, T = 1000, as a :class:`~tilted.distributions.GaussianDiffusion`.
- :func:`digits_classifier`: a small CNN, (B, 1, 8, 8) → (B, 10) logits, trained with noise and shift
  augmentation: the reward network (:class:`~tilted.rewards.ClassLogProb`).
- :func:`digits_logistic`: multinomial logistic regression on the 64 pixels (scikit-learn), a
  classifier of another family for cross rewards that engines never see.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tilted.errors import MissingWeightsError, ModelError

#: the folder holding the shipped weights (unet/, scheduler/, classifier.safetensors, logistic.safetensors)
WEIGHTS = Path(__file__).parent / "weights" / "digits"
EVENT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10

#: the UNet's diffusers configuration (``UNet2DModel(**UNET_CONFIG)``)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=32,
    dropout=0.1,
)
#: the training noise schedule (``DDPMScheduler(**SCHEDULER_CONFIG)``)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="linear",
    beta_start=1e-4,
    beta_end=0.02,
    prediction_type="epsilon",
    clip_sample=False,
    timestep_spacing="trailing",
)


def to_images(pixels) -> torch.Tensor:
    """Pixels 0 … 16 (any shape with 64 or 8×8 trailing values) → float32 images (n, 1, 8, 8) in [−1, 1]."""
    x = torch.as_tensor(pixels, dtype=torch.float32)
    return (x.reshape(-1, *EVENT_SHAPE) / 8.0) - 1.0


def digits_data(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as (images (n, 1, 8, 8) in [−1, 1], labels (n,)): ``"train"`` (1,437), ``"test"`` (360) or ``"all"``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test", "all"):
        raise ModelError(f"split must be 'train', 'test' or 'all', got {split!r}")
    data = load_digits()
    x, y = data.data, data.target
    if split != "all":
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
        x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return to_images(x), torch.as_tensor(y, dtype=torch.long)


class _Batched(nn.Module):
    """Applies ``net`` to (*batch, 1, 8, 8) by flattening the batch dimensions around the call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] != EVENT_SHAPE:
            raise ModelError(f"{type(self).__name__} takes images (*batch, 1, 8, 8), got shape {tuple(x.shape)}")
        batch = x.shape[:-3]
        return self.net(x.reshape(-1, *EVENT_SHAPE)).reshape(*batch, NUM_CLASSES)


class DigitsCNN(_Batched):
    """Two 3×3 convolutions (32, 64 channels, SiLU), 2×2 average pooling, a 128-unit hidden layer: 10 logits."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.SiLU(),
            nn.Linear(128, NUM_CLASSES),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128 penultimate activations, (*batch, 128): a frozen encoder for surrogates (tilted.online)."""
        if x.shape[-3:] != EVENT_SHAPE:
            raise ModelError(f"DigitsCNN.features takes images (*batch, 1, 8, 8), got shape {tuple(x.shape)}")
        batch = x.shape[:-3]
        return self.net[:-1](x.reshape(-1, *EVENT_SHAPE)).reshape(*batch, -1)


class PixelLogistic(_Batched):
    """Multinomial logistic regression on the 64 pixels: logits = W·vec(x) + b."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, NUM_CLASSES))


def _folder(path: str | os.PathLike | None) -> Path:
    folder = WEIGHTS if path is None else Path(path).expanduser()
    if not folder.is_dir():
        raise MissingWeightsError(
            f"no digits weights at {str(folder)!r}; train them with `python -m tilted.pretrained.train_digits "
            f"--out {folder}` (about 10 minutes on 2 CPU cores) or pass the folder that holds them"
        )
    return folder


def _load(module: nn.Module, file: Path) -> nn.Module:
    from safetensors.torch import load_file

    if not file.is_file():
        raise MissingWeightsError(
            f"no weights file {str(file)!r}; train it with `python -m tilted.pretrained.train_digits --out "
            f"{file.parent}`"
        )
    module.load_state_dict(load_file(file))
    return module.eval().requires_grad_(False)


def digits_unet(path: str | os.PathLike | None = None):
    """The trained ``UNet2DModel`` (eval mode, frozen), from the shipped weights or the folder ``path``."""
    from diffusers import UNet2DModel

    return (
        UNet2DModel.from_pretrained(_folder(path) / "unet", use_safetensors=True, low_cpu_mem_usage=False)
        .eval()
        .requires_grad_(False)
    )


def digits(num_steps: int = 100, *, path: str | os.PathLike | None = None, **kwargs):
    """The trained digits DDPM as a :class:`~tilted.distributions.GaussianDiffusion` over (1, 8, 8).

    ``kwargs`` reach :class:`~tilted.distributions.GaussianDiffusion` and override its defaults here:
    ``schedule`` = the training ``DDPMScheduler`` (its "trailing" inference spacing, final ᾱ = 1),
    ``prediction_type="epsilon"``, ``eta=1`` (DDPM), no clipping (``clip_sample=1.0`` clips x̂₀ to the
    pixel range; clipping zeroes reward gradients at clipped pixels). ``path`` loads weights trained by
    ``python -m tilted.pretrained.train_digits --out PATH`` instead of the shipped ones.
    """
    from diffusers import DDPMScheduler

    from tilted.distributions import GaussianDiffusion

    folder = _folder(path)
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    settings = {"event_shape": EVENT_SHAPE, "schedule": scheduler, "prediction_type": "epsilon", **kwargs}
    return GaussianDiffusion(digits_unet(folder), num_steps=num_steps, **settings)


def digits_classifier(path: str | os.PathLike | None = None) -> nn.Module:
    """The trained CNN classifier (:class:`DigitsCNN`, eval mode, frozen): (*batch, 1, 8, 8) → (*batch, 10) logits."""
    return _load(DigitsCNN(), _folder(path) / "classifier.safetensors")


def digits_logistic(path: str | os.PathLike | None = None) -> nn.Module:
    """The logistic-regression classifier (:class:`PixelLogistic`, frozen): (*batch, 1, 8, 8) → (*batch, 10) logits."""
    return _load(PixelLogistic(), _folder(path) / "logistic.safetensors")
