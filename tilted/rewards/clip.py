"""CLIP rewards: CLIP score and PickScore, on a differentiable CLIP image encoder.

Both are s · cos(E_I(x), E_T(prompt)): E_I the CLIP image embedding of the image x, E_T the text
embedding of the prompt, cos their cosine similarity and s a scale. :class:`CLIPScore` uses s = 100
by default (the CLIPScore of Hessel et al. 2021 with w = 100, as torchmetrics reports it, without the
clamp at 0 that would zero gradients); :class:`PickScore` is the PickScore model (Kirstain et al. 2023, a
CLIP-H fine-tuned on human preferences) with s = exp(logit_scale) of that model, as its authors score.

The image side is torch end to end, so ∇_x r exists: resize of the shortest side to the processor's
``size`` (bicubic, antialiased, clamped to [0, 1] as PIL's 8-bit resize is), centre crop to
``crop_size``, normalisation by ``image_mean`` and ``image_std`` (all read from the processor's
configuration), then ``get_image_features``. This replaces the PIL path of ``CLIPImageProcessor``, which
is not differentiable; on the same smooth image the two agree within a level of 8-bit rounding. Text
embeddings are computed once, when the reward is built.

Prompts: one string scores every image against it. A list of P prompts pairs prompts with images along
one batch dimension, the last by default: images ``(*batch, P, 3, H, W)`` give rewards ``(*batch, P)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tilted.errors import ModelError, ShapeError
from tilted.rewards.images import ImageReward
from tilted.rewards.loading import from_pretrained, frozen

CLIP_L14 = "openai/clip-vit-large-patch14"
PICKSCORE = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resampling codes that torch interpolates the same way


class CLIPImageEncoder:
    """x ↦ E_I(x) / ‖E_I(x)‖: differentiable CLIP preprocessing and image embedding.

    Parameters
    ----------
    model
        A transformers ``CLIPModel`` (frozen and in eval mode; its dtype is the compute dtype).
    image_processor
        The ``CLIPImageProcessor`` whose configuration (``size``, ``crop_size``, ``image_mean``,
        ``image_std``, ``resample`` and the ``do_*`` switches) the preprocessing follows.
    """

    def __init__(self, model, image_processor):
        self.model = model
        ip = image_processor
        self.size = _size(getattr(ip, "size", None)) if getattr(ip, "do_resize", True) else None
        self.crop = _size(getattr(ip, "crop_size", None)) if getattr(ip, "do_center_crop", True) else None
        if isinstance(self.crop, int):
            self.crop = (self.crop, self.crop)
        self.mode = _MODES.get(int(getattr(ip, "resample", 3) or 3), "bicubic")
        normalise = getattr(ip, "do_normalize", True)
        self.mean = torch.tensor(ip.image_mean if normalise else [0.0] * 3, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(ip.image_std if normalise else [1.0] * 3, dtype=torch.float32).view(3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP pixel values (float32, on the model's device) of images ``(B, 3, H, W)`` in [0, 1]."""
        x = images.to(device=self.device, dtype=torch.float32)
        if self.size is not None:
            x = _resize(x, self.size, self.mode)
        if self.crop is not None:
            x = _centre_crop(x, self.crop)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``get_image_features(pixels)`` in float32, ``(B, D)``."""
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.dtype))).float()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings ``(*batch, D)`` (float32, on the model's device)."""
        batch = images.shape[:-3]
        flat = images.reshape((-1,) + images.shape[-3:])
        return F.normalize(self.features(self.pixels(flat)), dim=-1).reshape(batch + (-1,))


class CLIPScore(ImageReward):
    """r(x) = s · cos(E_I(x), E_T(prompt)), with s = 100 by default (``scale="logit_scale"``: the model's
    exp(logit_scale), which is 100 for OpenAI CLIP).

    Input: images ``(*batch, 3, H, W)`` in [0, 1]; with a list of P prompts, the batch dimension
    ``prompt_dim`` (the last by default) has size P and image i along it meets prompt i. Output:
    float32 ``(*batch)`` on the images' device. Differentiable. Cost: one CLIP image forward (and
    backward for gradients) per image; ViT-L/14 has 428 M parameters (1.7 GB in float32).

    Parameters
    ----------
    model
        A transformers ``CLIPModel``; it is put in eval mode with frozen parameters.
    processor
        A ``CLIPProcessor`` (its ``tokenizer`` and ``image_processor``).
    prompts
        A prompt for every image, or a list of P prompts paired with images along ``prompt_dim``.
    scale
        s: a number, or ``"logit_scale"`` for the model's exp(logit_scale); ``None`` is the class's
        default (100 here).
    prompt_dim
        Which batch dimension of the images pairs with a list of prompts (negative: from the last).
    """

    default_model: str = CLIP_L14
    default_processor: str | None = None  # None: the model's folder or hub id
    default_scale: float | str = 100.0

    def __init__(
        self,
        model,
        processor,
        prompts: str | Sequence[str],
        *,
        scale: float | str | None = None,
        prompt_dim: int = -1,
    ):
        self.model = frozen(model)
        self.encoder = CLIPImageEncoder(self.model, processor.image_processor)
        self.prompts, self.paired = _prompts(prompts)
        self.prompt_dim = int(prompt_dim)
        scale = self.default_scale if scale is None else scale
        if isinstance(scale, str) and scale != "logit_scale":
            raise ModelError(f"scale must be a number or 'logit_scale', got {scale!r}")
        self.scale = float(self.model.logit_scale.exp()) if scale == "logit_scale" else float(scale)
        self.text = encode_text(self.model, processor.tokenizer, self.prompts)  # (P, D), unit norm, float32

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike | None = None,
        *,
        prompts: str | Sequence[str],
        processor: str | os.PathLike | None = None,
        scale: float | str | None = None,
        prompt_dim: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> CLIPScore:
        """Load a ``CLIPModel`` and a ``CLIPProcessor`` from local folders or cached hub ids.

        ``path_or_hub_id`` defaults to ``default_model`` and ``processor`` to ``default_processor``
        (else the model's own place). ``dtype`` (e.g. ``torch.bfloat16``) is the compute dtype; the
        reward stays float32. Extra keyword arguments go to transformers' ``from_pretrained``.
        """
        model, proc = load_clip(
            cls.default_model if path_or_hub_id is None else path_or_hub_id,
            cls.default_processor if processor is None else processor,
            call=f"{cls.__name__}.from_pretrained",
            default_id=cls.default_model,
            default_processor_id=cls.default_processor,
            device=device,
            dtype=dtype,
            **kwargs,
        )
        return cls(model, proc, prompts, scale=scale, prompt_dim=prompt_dim)

    def similarity(self, images: torch.Tensor) -> torch.Tensor:
        """cos(E_I(x), E_T(prompt)) of shape ``batch(images)``, on the model's device."""
        batch = self.check(images)
        emb = self.encoder(images)
        if not self.paired:
            return emb @ self.text[0]
        P = len(self.prompts)
        if not -len(batch) <= self.prompt_dim < len(batch) or batch[self.prompt_dim] != P:
            raise ShapeError(
                f"{type(self).__name__} has {P} prompts, paired with the images' batch dimension {self.prompt_dim}, but the "
                f"images have shape {tuple(images.shape)} (batch {tuple(batch)}); arrange images as (..., {P}, 3, H, W) "
                "with image i meeting prompt i (or set prompt_dim), or give one string to score every image against it"
            )
        dim = self.prompt_dim % len(batch)
        return (emb.movedim(dim, -2) * self.text).sum(-1).movedim(-1, dim)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (self.scale * self.similarity(images)).to(images.device)

    def __repr__(self) -> str:
        shown = self.prompts[0] if not self.paired else f"{len(self.prompts)} prompts"
        return f"{type(self).__name__}({shown!r}, scale={self.scale:g})"


class PickScore(CLIPScore):
    """PickScore: r(x) = exp(logit_scale) · cos(E_I(x), E_T(prompt)) with the PickScore CLIP-H model.

    Same input, output, prompt pairing and loading as :class:`CLIPScore`, with other defaults: the
    model ``yuvalkirstain/PickScore_v1``, the processor ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the
    PickScore repository has no processor files) and the model's own scale (about 100). Cost: a
    ViT-H/14 image forward per image (about 1 B parameters: 3.9 GB in float32, half in bfloat16).
    """

    default_model = PICKSCORE
    default_processor = PICKSCORE_PROCESSOR
    default_scale = "logit_scale"


def load_clip(
    source,
    processor=None,
    *,
    call: str,
    default_id: str,
    default_processor_id: str | None = None,
    device=None,
    dtype=None,
    **kwargs,
):
    """(frozen ``CLIPModel`` on ``device`` in ``dtype``, ``CLIPProcessor``) from local folders or cached hub
    ids; ``call`` names the public loader in error messages."""
    from transformers import CLIPModel, CLIPProcessor

    usage = call + "({folder}, ...)"
    model = from_pretrained(CLIPModel, source, what="CLIP model", default_id=default_id, usage=usage, **kwargs)
    if processor is None:
        proc = from_pretrained(
            CLIPProcessor, source, what="CLIP processor", default_id=default_id, usage=usage, **kwargs
        )
    else:
        proc = from_pretrained(
            CLIPProcessor,
            processor,
            what="CLIP processor (tokenizer and image-processor settings)",
            default_id=default_processor_id or default_id,
            usage=call + "(..., processor={folder})",
            files="processor",
            **kwargs,
        )
    return frozen(model, device=device, dtype=dtype), proc


def encode_text(model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings ``(P, D)`` in float32 (no gradient), truncated to the model's context."""
    max_length = getattr(model.config.text_config, "max_position_embeddings", 77)
    tokens = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.get_text_features(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        )
    return F.normalize(_pooled(out).float(), dim=-1)


def _prompts(prompts) -> tuple[list[str], bool]:
    if isinstance(prompts, str):
        return [prompts], False
    prompts = list(prompts) if isinstance(prompts, Sequence) else None
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ModelError(
            "prompts must be a string or a non-empty list of strings (one per image along the prompt dimension)"
        )
    return prompts, True


def _pooled(output) -> torch.Tensor:
    """The projected features: a tensor (transformers 4) or the ``pooler_output`` of a model output (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _size(size) -> int | tuple[int, int] | None:
    """``shortest_edge`` as an int, or (height, width), from a size dict or SizeDict."""
    if size is None or isinstance(size, int):
        return size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    if get("shortest_edge"):
        return int(get("shortest_edge"))
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    raise ModelError(f"unsupported CLIP image-processor size {size!r}: give shortest_edge or height and width")


def _resize(x: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """Resize as CLIPImageProcessor does: the shortest side to ``size`` (the other by int(size·long/short)),
    or to (height, width)."""
    h, w = x.shape[-2:]
    if isinstance(size, int):
        short, long = min(h, w), max(h, w)
        new_long = int(size * long / short)
        size = (new_long, size) if w <= h else (size, new_long)
    if tuple(size) == (h, w):
        return x
    # clamped like PIL's 8-bit resize: bicubic overshoots at sharp edges
    return F.interpolate(x, size=tuple(size), mode=mode, antialias=True, align_corners=False).clamp(0, 1)


def _centre_crop(x: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = crop
    if ch > h or cw > w:
        raise ShapeError(
            f"CLIP centre crop {ch}×{cw} is larger than the resized image {h}×{w}; check the processor's size"
        )
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]
