"""Flow-matching text-to-image pipelines as sequential distributions: Stable Diffusion 3 and FLUX.

:func:`~tilted.distributions.from_pipeline` turns a diffusers ``StableDiffusion3Pipeline`` or
``FluxPipeline`` into a :class:`LatentFlow`: a :class:`~tilted.distributions.FlowMatching` over the
VAE's latents z (shape (C, H/f, W/f)) whose velocity is the pipeline's transformer,

- SD3: under classifier-free guidance, v̂ = v(z, ∅) + w (v(z, c) − v(z, c∅)), with the text embedding of
  two CLIP encoders and T5 and their pooled projections; the transformer reads 1000 t;
- FLUX: with the guidance w it was distilled to reproduce embedded in the transformer (no second row;
  ``true_cfg_scale`` adds classifier-free guidance with a negative prompt, as the pipeline does). Its
  transformer reads 2×2 patches of the latent as tokens, ``pack(z)`` of shape (H/2f · W/2f, 4C), with
  their (row, column) positions; the process keeps the unpacked latent, a permutation of the tokens,
  so decoders and rewards see latents as for SD, and densities are unchanged.

The time grid t_0 = 0 < … < t_K = 1 is the pipeline's scheduler's at K steps: SD3's shift s
(t = s u / (1 + (s − 1) u)), FLUX's resolution-dependent shift s = e^μ with μ linear in the number of
tokens. The deterministic chain (η = 0) is the pipeline's own Euler sampler; η > 0 is the stochastic
sampler with the same marginals that the engines need (docs/modelling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tilted.distributions.flow import FlowMatching
from tilted.distributions.pipelines import (
    ClassifierFreeGuidance,
    Decoded,
    VAEDecoder,
    frozen,
    image_size,
    per_group,
    prompt_lists,
)
from tilted.errors import ModelError


class LatentFlow(Decoded, FlowMatching):
    """A flow-matching latent model conditioned on prompts: a :class:`FlowMatching` with a decoder.

    Built by :func:`~tilted.distributions.from_pipeline`. ``decode`` maps latents to images in [0, 1]
    (differentiable); ``prompts`` holds the prompt of each group.
    """


class GuidedTransformer(ClassifierFreeGuidance):
    """v̂ = v_∅ + w (v_c − v_∅) from an ``SD3Transformer2DModel`` (text tokens and pooled projections).

    :meth:`call` is one transformer call; :class:`FluxVelocity` replaces it by FLUX's.
    """

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_projections: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_projections: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conditional = {"prompt_embeds": prompt_embeds, "pooled_projections": pooled_projections}
        unconditional = {
            "negative_prompt_embeds": negative_prompt_embeds,
            "negative_pooled_projections": negative_pooled_projections,
        }
        return self.guide(self.call, z, t, conditional, unconditional)

    def call(self, x, t, prompt_embeds, pooled_projections):
        return self.network(
            hidden_states=x, timestep=t, encoder_hidden_states=prompt_embeds, pooled_projections=pooled_projections,
            return_dict=False,
        )[0]  # fmt: skip


def pack(z: torch.Tensor) -> torch.Tensor:
    """FLUX's tokens: (B, C, h, w) → (B, h/2 · w/2, 4C), one token per 2×2 patch, row-major."""
    B, C, h, w = z.shape
    return z.reshape(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (h // 2) * (w // 2), 4 * C)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack`: (B, h/2 · w/2, 4C) → (B, C, h, w)."""
    B, _, C4 = tokens.shape
    return tokens.reshape(B, h // 2, w // 2, C4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C4 // 4, h, w)


class FluxVelocity(GuidedTransformer):
    """v̂ from a ``FluxTransformer2DModel`` on the packed latent, with FLUX's embedded guidance.

    ``guidance`` is the distilled guidance scale the transformer embeds (``None`` for models without
    a guidance embedding); ``guidance_scale`` (the pipeline's ``true_cfg_scale``) is classifier-free
    guidance with negative-prompt embeddings. ``img_ids`` and ``txt_ids`` are the tokens' positions.
    """

    def __init__(self, transformer, true_cfg_scale: float, guidance: float | None, img_ids, txt_ids):
        super().__init__(transformer, true_cfg_scale)
        self.guidance = guidance
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", txt_ids, persistent=False)

    def call(self, x, t, prompt_embeds, pooled_projections):
        guidance = None if self.guidance is None else torch.full_like(t, self.guidance, dtype=torch.float32)
        out = self.network(
            hidden_states=pack(x), timestep=t.to(x.dtype), guidance=guidance, pooled_projections=pooled_projections,
            encoder_hidden_states=prompt_embeds, txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False,
        )[0]  # fmt: skip
        return unpack(out, *x.shape[-2:])


def token_positions(h: int, w: int) -> torch.Tensor:
    """FLUX's image-token ids: (h/2 · w/2, 3) rows (0, row, column) of the 2×2 patches, row-major."""
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()


def resolution_shift(scheduler, tokens: int) -> float:
    """μ, linear in the number of image tokens between (base_image_seq_len, base_shift) and the max."""
    c = scheduler.config
    lo, hi = c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096)
    base, top = c.get("base_shift", 0.5), c.get("max_shift", 1.15)
    return base + (top - base) * (tokens - lo) / (hi - lo)


def flow_grid(scheduler, num_steps: int, **kwargs) -> torch.Tensor:
    """t_0 = 0 < … < t_K: the scheduler's sigmas at K steps (a copy is set; the pipeline's is untouched)."""
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(num_steps, **kwargs)
    sigmas = getattr(copy, "sigmas", None)
    if sigmas is None or sigmas.shape != (num_steps + 1,) or float(sigmas[-1]) != 0:
        raise ModelError(
            f"the pipeline's scheduler {type(scheduler).__name__} gives no flow time grid (K + 1 sigmas ending at "
            "0); use a FlowMatchEulerDiscreteScheduler"
        )
    return sigmas.detach().cpu().double().flip(0)


def from_flow_pipeline(
    pipe: Any,
    prompt: str | Sequence[str],
    *,
    negative_prompt,
    guidance_scale: float | None,
    num_steps: int,
    eta: float,
    height: int | None,
    width: int | None,
    true_cfg_scale: float,
    gradient_checkpointing: bool,
    max_sequence_length: int | None,
) -> LatentFlow:
    """:func:`~tilted.distributions.from_pipeline` for SD3 and FLUX pipelines (see its parameters)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    flux = isinstance(pipe, FluxPipeline)
    if not (flux or isinstance(pipe, StableDiffusion3Pipeline)):
        raise ModelError(
            f"from_pipeline reads transformer pipelines of SD3 (StableDiffusion3Pipeline) and FLUX (FluxPipeline); "
            f"got {type(pipe).__name__}"
        )
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    transformer, factor, scheduler = pipe.transformer, int(pipe.vae_scale_factor), pipe.scheduler
    cfg = true_cfg_scale if flux else (7.0 if guidance_scale is None else guidance_scale)
    if not cfg >= 1:
        name = "true_cfg_scale" if flux else "guidance_scale"
        raise ModelError(f"{name} must be ≥ 1 (1: no classifier-free guidance), got {cfg}")
    if not flux and true_cfg_scale != 1:
        raise ModelError("true_cfg_scale is FLUX's; SD3's classifier-free guidance is guidance_scale")
    guided = cfg != 1
    if flux and negatives is not None and not guided:
        raise ModelError("a negative prompt needs true_cfg_scale > 1 with FLUX (its guidance is embedded)")
    frozen(pipe, "transformer", gradient_checkpointing)
    default = int(pipe.default_sample_size) * factor
    patch = 2 if flux else int(transformer.config.patch_size)
    height, width = image_size(height, width, (default, default), factor * patch, "VAE scale factor × patch size")
    h, w = height // factor, width // factor
    device = transformer.device
    length = {} if max_sequence_length is None else {"max_sequence_length": int(max_sequence_length)}
    with torch.no_grad():
        if flux:
            embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device, **length)
            negative = negative_pooled = None
            if guided:
                negative, negative_pooled, _ = pipe.encode_prompt(
                    prompt=negatives or [""] * len(prompts), prompt_2=None, device=device, **length
                )
        else:
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=guided,
                negative_prompt=negatives, **length,
            )  # fmt: skip
    context = {"prompt_embeds": embeds, "pooled_projections": pooled}
    if guided:
        context |= {"negative_prompt_embeds": negative, "negative_pooled_projections": negative_pooled}
    context, batch_shape = per_group(context, prompt)
    if flux:
        embedded = bool(transformer.config.guidance_embeds)
        if guidance_scale is not None and not embedded:
            raise ModelError(
                "this FLUX transformer has no guidance embedding (FLUX.1-schnell); leave guidance_scale out"
            )
        guidance = (3.5 if guidance_scale is None else float(guidance_scale)) if embedded else None
        txt_ids = torch.zeros(embeds.shape[1], 3, device=device)
        velocity = FluxVelocity(transformer, cfg, guidance, token_positions(h, w).to(device), txt_ids)
        sigmas = [1 - i / num_steps for i in range(num_steps)]  # FluxPipeline's grid before the shift
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        shift = {"mu": resolution_shift(scheduler, (h // 2) * (w // 2))}
        if not scheduler.config.get("use_dynamic_shifting", False):
            shift = {}
        times = flow_grid(scheduler, num_steps, sigmas=sigmas, **shift)
        time_scale = scheduler.config.num_train_timesteps / 1000  # FluxPipeline passes timestep / 1000
    else:
        velocity = GuidedTransformer(transformer, cfg)
        tokens = (h // patch) * (w // patch)
        shift = {"mu": resolution_shift(scheduler, tokens)} if scheduler.config.get("use_dynamic_shifting") else {}
        times = flow_grid(scheduler, num_steps, **shift)
        time_scale = scheduler.config.num_train_timesteps
    return LatentFlow(
        velocity,
        event_shape=(int(transformer.config.in_channels) // (4 if flux else 1), h, w),
        num_steps=num_steps,
        eta=eta,
        times=times,
        shift=float(getattr(scheduler, "shift", 1.0)),
        time_scale=time_scale,
        context=context,
        batch_shape=batch_shape,
        decoder=VAEDecoder(pipe.vae),
        prompts=prompt if isinstance(prompt, str) else prompts,
    )
