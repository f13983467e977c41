"""Text-to-image pipelines as sequential distributions: Stable Diffusion 1.x/2.x and SDXL latents.

(SD3 and FLUX, flow-matching pipelines, are read by the same :func:`from_pipeline` into the
:class:`~tilted.distributions.flow_pipelines.LatentFlow` of :mod:`tilted.distributions.flow_pipelines`;
:func:`load_pipeline` loads a pipeline from its folder, naming what to download when it is missing.)

:func:`from_pipeline` turns a diffusers ``StableDiffusionPipeline`` (or ``StableDiffusionXLPipeline``)
into a :class:`LatentDiffusion`: a :class:`~tilted.distributions.GaussianDiffusion` over the VAE's
latents z (shape (C, H/f, W/f)) whose denoiser is the pipeline's UNet under classifier-free guidance
(Ho & Salimans 2022),

    ε̂(z_k, c) = ε(z_k, ∅) + w · (ε(z_k, c) − ε(z_k, ∅)),

with the pipeline's noise schedule sampled by DDIM(η > 0) or DDPM kernels (η = 1), and a
differentiable decoder D(z) = clamp(VAE⁻¹(z / s)/2 + 1/2, 0, 1) into images in [0, 1] for rewards
(``reward.after(prior.decode)``). The tilted target is over latents,
p_tar(z) ∝ p_θ(z | c) exp(r(D(z))/α).

Several prompts are P groups (``batch_shape = (P,)``): each is its own target and engines run it as
its own run, in one batched call per step. Prompt embeddings are computed once. Half-precision
pipelines keep their network weights in float16/bfloat16; latents, transition densities and
weights stay float32/float64 (the networks' outputs are cast back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from tilted.distributions.adapters import chain_settings
from tilted.distributions.gaussian import GaussianDiffusion
from tilted.errors import ModelError


class ClassifierFreeGuidance(torch.nn.Module):
    """out = out_∅ + w (out_c − out_∅) (Ho & Salimans 2022): one batched call on 2B rows (B rows at w = 1).

    The base of the pipelines' networks: a subclass's ``forward`` names its conditional inputs and their
    unconditional counterparts and hands :meth:`guide` a call of the network. Inputs are cast to the
    network's dtype; the guided output is formed in float32.
    """

    def __init__(self, network: torch.nn.Module, guidance_scale: float):
        super().__init__()
        self.network = network
        self.guidance_scale = float(guidance_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def guide(self, call, x, t, conditional: dict, unconditional: dict, shared: dict | None = None):
        """``call(x, t, **inputs)`` on [∅; c] rows; ``shared`` inputs are the same for both halves."""
        B, dtype = x.shape[0], self.network.dtype
        missing = [name for name, v in unconditional.items() if v is None]
        if self.guided and missing:
            raise ModelError(
                f"guidance_scale={self.guidance_scale} needs {', '.join(missing)} (the unconditional embedding); "
                "pass them, or use guidance_scale=1"
            )
        copies = 2 if self.guided else 1

        def rows(v):
            return v.expand((B,) + v.shape[1:])

        inputs = {n: torch.cat([rows(u), rows(c)]) if self.guided else rows(c) for (n, c), u in
                  zip(conditional.items(), unconditional.values(), strict=True)}  # fmt: skip
        inputs |= {n: rows(v).repeat((copies,) + (1,) * (v.ndim - 1)) for n, v in (shared or {}).items()}
        repeat = (copies,) + (1,) * (x.ndim - 1)
        out = call(x.repeat(repeat).to(dtype), t.repeat(copies), **{n: v.to(dtype) for n, v in inputs.items()})
        out = out.float()
        if not self.guided:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


class GuidedUNet(ClassifierFreeGuidance):
    """ε̂ = ε_∅ + w (ε_c − ε_∅): a conditional UNet under classifier-free guidance (w = 1: no guidance).

    Called as ``guided(z, t, prompt_embeds=..., negative_prompt_embeds=...)`` with one embedding per
    input (or one for all); SDXL adds ``text_embeds``, ``negative_text_embeds`` and ``time_ids``.
    """

    @property
    def unet(self) -> torch.nn.Module:
        return self.network

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        negative_text_embeds: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        conditional, unconditional = (
            {"prompt_embeds": prompt_embeds},
            {"negative_prompt_embeds": negative_prompt_embeds},
        )
        shared = {}
        if text_embeds is not None:  # SDXL: pooled text embeddings and size conditioning
            conditional["text_embeds"], unconditional["negative_text_embeds"] = text_embeds, negative_text_embeds
            shared["time_ids"] = time_ids

        def call(x, t, prompt_embeds, text_embeds=None, time_ids=None):
            added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(x, t, encoder_hidden_states=prompt_embeds, added_cond_kwargs=added).sample

        return self.guide(call, z, t, conditional, unconditional, shared)


class VAEDecoder:
    """D(z) = clamp(VAE⁻¹(z/s + b)/2 + 1/2, 0, 1): latents (*batch, C, h, w) → images (*batch, 3, H, W) in [0, 1].

    Differentiable (gradients reach z); s and b are the VAE's ``scaling_factor`` and ``shift_factor``.
    """

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        batch, event = z.shape[:-3], z.shape[-3:]
        flat = (z.reshape((-1,) + event) / self.scaling_factor + self.shift_factor).to(self.vae.dtype)
        images = self.vae.decode(flat).sample.float()
        return (images / 2 + 0.5).clamp(0, 1).reshape(batch + images.shape[1:])


class Decoded:
    """A latent process conditioned on prompts: ``decode`` maps latents to images, ``prompts`` names the groups."""

    def __init__(self, *args, decoder: VAEDecoder, prompts: Sequence[str] | str, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder = decoder
        self.prompts = prompts

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (*batch, 3, H, W), from latents (*batch, C, h, w)."""
        return self.decoder(z)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(event_shape={tuple(self.event_shape)}, groups={tuple(self.batch_shape)}, "
            f"num_steps={self.num_steps}, eta={self.eta}, guidance_scale={self.denoiser.guidance_scale})"
        )


class LatentDiffusion(Decoded, GaussianDiffusion):
    """A latent diffusion model conditioned on prompts: a :class:`GaussianDiffusion` with a decoder.

    Built by :func:`from_pipeline`. ``decode`` maps latents to images in [0, 1] (differentiable);
    ``prompts`` holds the prompt of each group.
    """


def _scheduler(pipe, scheduler):
    """A DDPM/DDIM scheduler with the pipeline's noise schedule (other samplers' configs are read as DDIM)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if scheduler is not None:
        return scheduler
    if isinstance(pipe.scheduler, DDPMScheduler | DDIMScheduler):
        return pipe.scheduler
    # every value explicit: from_config would replace the values the pipeline's scheduler left at *its*
    # defaults by DDIM's (PNDM's set_alpha_to_one=False would become True); latents are not in [−1, 1]
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    config["clip_sample"] = bool(config.get("clip_sample", False))
    return DDIMScheduler.from_config(config)


def prompt_lists(prompt, negative_prompt) -> tuple[list[str], str | list[str] | None]:
    """The prompts as a list, and the negative prompt(s) checked against them."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ModelError("prompt must be a string or a non-empty list of strings")
    negatives = negative_prompt
    if negatives is not None and not isinstance(negatives, str):
        negatives = list(negatives)
        if len(negatives) != len(prompts):
            raise ModelError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one per prompt")
    return prompts, negatives


def frozen(pipe, network: str, gradient_checkpointing: bool) -> None:
    """Freeze the pipeline's networks (engines differentiate with respect to latents only)."""
    for module in (network, "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, module, None) is not None:
            getattr(pipe, module).requires_grad_(False).eval()
    if gradient_checkpointing:
        getattr(pipe, network).enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()


def image_size(height, width, default: tuple[int, int], multiple: int, what: str) -> tuple[int, int]:
    height, width = height or default[0], width or default[1]
    if height % multiple or width % multiple:
        raise ModelError(f"height and width must be multiples of {multiple} ({what}), got {height}×{width}")
    return height, width


def per_group(context: dict, prompt, shared: tuple[str, ...] = ()) -> tuple[dict, tuple[int, ...]]:
    """Several prompts: each context tensor gets a leading group dimension P (``shared`` names stay whole)."""
    context = {k: v for k, v in context.items() if v is not None}
    if isinstance(prompt, str):
        return context, ()
    P = len(prompt)
    return {k: v if k in shared else v.reshape((P,) + v.shape[1:]) for k, v in context.items()}, (P,)


def from_pipeline(
    pipe: Any,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
    num_steps: int = 50,
    eta: float | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: Any = None,
    gradient_checkpointing: bool = False,
    true_cfg_scale: float = 1.0,
    max_sequence_length: int | None = None,
) -> LatentDiffusion:
    """A latent process from a diffusers text-to-image pipeline: SD 1.x/2.x and SDXL, SD3 and FLUX.

    Stable Diffusion and SDXL give a :class:`LatentDiffusion`; ``StableDiffusion3Pipeline`` and
    ``FluxPipeline`` give a :class:`~tilted.distributions.flow_pipelines.LatentFlow`, a
    :class:`~tilted.distributions.FlowMatching` with the pipeline's transformer as velocity and its
    scheduler's shifted time grid (docs/modelling.md).

    Parameters
    ----------
    pipe
        A loaded pipeline (any dtype and device: the process runs where its network is). Its network
        (UNet or transformer), VAE and text encoders are frozen (``requires_grad_(False)``, ``eval()``):
        engines differentiate with respect to latents only.
    prompt
        One prompt (``batch_shape = ()``: a single target), or a list of P prompts (P groups, one
        target each; results gain a leading run dimension of P).
    negative_prompt
        The unconditional prompt(s) of classifier-free guidance (default: the empty prompt).
    guidance_scale
        SD, SDXL, SD3: the classifier-free guidance weight w (default 7.5 for SD/SDXL, 7 for SD3; 1
        switches guidance off: one network evaluation per particle instead of two). FLUX: the
        distilled guidance the transformer embeds (default 3.5; FLUX.1-schnell has none).
    num_steps, eta
        Inference steps K and the sampler's noise level η (default 1: the DDPM posterior variance,
        for flows the reverse SDE; η = 0 is deterministic DDIM or the flow's ODE, which have no
        transition densities). Flows take η ∈ [0, 1].
    height, width
        Image size in pixels (default: the pipeline's default size).
    scheduler
        SD/SDXL only: a ``DDPMScheduler`` or ``DDIMScheduler`` to use instead of the pipeline's; by
        default the pipeline's scheduler if it is one of these, else a ``DDIMScheduler`` from its
        configuration (same ᾱ, spacing and offset; ``clip_sample`` off unless the configuration sets
        it). Flows read their time grid from the pipeline's flow-matching scheduler.
    gradient_checkpointing
        Recompute network and VAE activations in the backward pass (the gradient proposal and gradient
        guidance): less memory for about one more forward pass.
    true_cfg_scale
        FLUX only: classifier-free guidance on top of the embedded guidance, with ``negative_prompt``
        (two transformer rows per particle), as ``FluxPipeline(true_cfg_scale=...)``.
    max_sequence_length
        SD3 and FLUX: tokens of the T5 prompt embedding (default: the pipeline's, 256 and 512).

    Returns
    -------
    LatentDiffusion or LatentFlow
        Use ``prior.decode`` before image rewards: ``tilted.factor("r", reward.after(prior.decode), z, ...)``.
    """
    if getattr(pipe, "transformer", None) is not None:
        from tilted.distributions.flow_pipelines import from_flow_pipeline

        if scheduler is not None:
            raise ModelError("scheduler= is for Stable Diffusion pipelines; flows use the pipeline's own time grid")
        return from_flow_pipeline(
            pipe, prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale, num_steps=num_steps,
            eta=1.0 if eta is None else eta, height=height, width=width, true_cfg_scale=true_cfg_scale,
            gradient_checkpointing=gradient_checkpointing, max_sequence_length=max_sequence_length,
        )  # fmt: skip
    for name in ("unet", "vae", "text_encoder", "tokenizer", "encode_prompt"):
        if getattr(pipe, name, None) is None:
            raise ModelError(
                f"from_pipeline needs a Stable Diffusion, SDXL, SD3 or FLUX pipeline (one with a {name}); "
                f"got {type(pipe).__name__}"
            )
    if true_cfg_scale != 1 or max_sequence_length is not None:
        raise ModelError("true_cfg_scale and max_sequence_length are for SD3 and FLUX pipelines")
    guidance_scale = 7.5 if guidance_scale is None else guidance_scale
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    if not guidance_scale >= 1:
        raise ModelError(f"guidance_scale must be ≥ 1 (1: no guidance), got {guidance_scale}")
    frozen(pipe, "unet", gradient_checkpointing)
    unet, factor = pipe.unet, int(getattr(pipe, "vae_scale_factor", 8))
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    height, width = image_size(height, width, (size[0] * factor, size[1] * factor), factor, "the VAE's scale factor")
    guided = guidance_scale != 1
    device = unet.device
    with torch.no_grad():
        encoded = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guided,
            negative_prompt=negatives,
        )  # fmt: skip
    context = {"prompt_embeds": encoded[0], "negative_prompt_embeds": encoded[1] if guided else None}
    if len(encoded) == 4:  # SDXL: pooled text embeddings and size conditioning (original, crop, target)
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=unet.dtype, device=device)
        context.update(text_embeds=encoded[2], negative_text_embeds=encoded[3] if guided else None, time_ids=ids)
    # a tensor with a leading dimension P is read per group; time_ids are shared
    context, batch_shape = per_group(context, prompt, shared=("time_ids",))
    event_shape = (unet.config.in_channels, height // factor, width // factor)
    settings = chain_settings(unet, _scheduler(pipe, scheduler), num_steps, eta, event_shape)
    return LatentDiffusion(
        GuidedUNet(unet, guidance_scale),
        context=context,
        batch_shape=batch_shape,
        decoder=VAEDecoder(pipe.vae),
        prompts=prompt if isinstance(prompt, str) else prompts,
        **settings,
    )


def load_pipeline(path_or_hub_id: str | os.PathLike, pipeline_class: Any = None, **kwargs) -> Any:
    """A diffusers pipeline from a local folder (or a cached hub id), ready for :func:`from_pipeline`.

    ``pipeline_class.from_pretrained(path_or_hub_id, **kwargs)``, by default diffusers' ``DiffusionPipeline``
    (the class named in ``model_index.json``). A missing folder or file raises
    :class:`~tilted.errors.MissingWeightsError` with the ``hf download`` command: for the models the docs
    use (``models/stable-diffusion-v1-5`` ← ``stable-diffusion-v1-5/stable-diffusion-v1-5``,
    ``models/FLUX.1-dev`` ← ``black-forest-labs/FLUX.1-dev``, …) with their real hub id and filters.
    """
    from diffusers import DiffusionPipeline

    from tilted.rewards.loading import from_pretrained

    loader = DiffusionPipeline if pipeline_class is None else pipeline_class
    name = "" if pipeline_class is None else f", {loader.__name__}"
    return from_pretrained(
        loader, path_or_hub_id, what=f"diffusers pipeline ({loader.__name__})", default_id=None,
        usage=f"tilted.distributions.load_pipeline({{folder}}{name}, ...)", **kwargs,
    )  # fmt: skip
