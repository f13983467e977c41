"""Text-to-image pipelines as sequential distributions: Stable Diffusion 1.x/2.x and SDXL latents.

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

from collections.abc import Sequence
from typing import Any

import torch

from tilted.distributions.adapters import chain_settings
from tilted.distributions.gaussian import GaussianDiffusion
from tilted.errors import ModelError


class GuidedUNet(torch.nn.Module):
    """ε̂ = ε_∅ + w (ε_c − ε_∅): a conditional UNet under classifier-free guidance (w = 1: no guidance).

    Called as ``guided(z, t, prompt_embeds=..., negative_prompt_embeds=...)`` with one embedding per
    input (or one for all); SDXL adds ``text_embeds``, ``negative_text_embeds`` and ``time_ids``. Inputs
    are cast to the UNet's dtype; the guided prediction is formed in float32.
    """

    def __init__(self, unet: torch.nn.Module, guidance_scale: float):
        super().__init__()
        self.unet = unet
        self.guidance_scale = float(guidance_scale)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

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
        B, dtype = z.shape[0], self.unet.dtype
        if self.guided and negative_prompt_embeds is None:
            raise ModelError(
                f"guidance_scale={self.guidance_scale} needs negative_prompt_embeds (the unconditional embedding); "
                "pass them, or use guidance_scale=1"
            )

        def both(cond, uncond):
            cond = cond.expand((B,) + cond.shape[1:])
            return torch.cat([uncond.expand((B,) + uncond.shape[1:]), cond]) if self.guided else cond

        copies = 2 if self.guided else 1
        added = None
        if text_embeds is not None:
            ids = time_ids.expand((B,) + time_ids.shape[1:])
            added = {
                "text_embeds": both(text_embeds, negative_text_embeds).to(dtype),
                "time_ids": ids.repeat(copies, 1),
            }
        out = self.unet(
            z.repeat((copies,) + (1,) * (z.ndim - 1)).to(dtype),
            t.repeat(copies),
            encoder_hidden_states=both(prompt_embeds, negative_prompt_embeds).to(dtype),
            added_cond_kwargs=added,
        ).sample.float()
        if not self.guided:
            return out
        uncond, cond = out.chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


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


class LatentDiffusion(GaussianDiffusion):
    """A latent diffusion model conditioned on prompts: a :class:`GaussianDiffusion` with a decoder.

    Built by :func:`from_pipeline`. ``decode`` maps latents to images in [0, 1] (differentiable);
    ``prompts`` holds the prompt of each group.
    """

    def __init__(self, *args, decoder: VAEDecoder, prompts: Sequence[str] | str, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder = decoder
        self.prompts = prompts

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], shape (*batch, 3, H, W), from latents (*batch, C, h, w)."""
        return self.decoder(z)

    def __repr__(self) -> str:
        return (
            f"LatentDiffusion(event_shape={tuple(self.event_shape)}, groups={tuple(self.batch_shape)}, "
            f"num_steps={self.num_steps}, eta={self.eta}, guidance_scale={self.denoiser.guidance_scale})"
        )


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


def from_pipeline(
    pipe: Any,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
    guidance_scale: float = 7.5,
    num_steps: int = 50,
    eta: float | None = None,
    height: int | None = None,
    width: int | None = None,
    scheduler: Any = None,
    gradient_checkpointing: bool = False,
) -> LatentDiffusion:
    """A :class:`LatentDiffusion` from a diffusers Stable Diffusion (1.x, 2.x) or SDXL pipeline.

    Parameters
    ----------
    pipe
        A loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (any dtype and device:
        the process runs where the UNet is). Its UNet, VAE and text encoders are frozen
        (``requires_grad_(False)``, ``eval()``): engines differentiate with respect to latents only.
    prompt
        One prompt (``batch_shape = ()``: a single target), or a list of P prompts (P groups, one
        target each; results gain a leading run dimension of P).
    negative_prompt
        The unconditional prompt(s) of classifier-free guidance (default: the empty prompt).
    guidance_scale
        w; 1 switches guidance off (one UNet evaluation per particle instead of two).
    num_steps, eta
        Inference steps K and DDIM stochasticity η (default 1: the DDPM posterior variance; η = 0 is
        deterministic DDIM, which has no transition densities).
    height, width
        Image size in pixels (default: the UNet's ``sample_size`` × the VAE's scale factor).
    scheduler
        A ``DDPMScheduler`` or ``DDIMScheduler`` to use instead of the pipeline's; by default the
        pipeline's scheduler if it is one of these, else a ``DDIMScheduler`` from its configuration
        (same ᾱ, spacing and offset; ``clip_sample`` off unless the configuration sets it).
    gradient_checkpointing
        Recompute UNet and VAE activations in the backward pass (the gradient proposal and gradient
        guidance): less memory for about one more forward pass.

    Returns
    -------
    LatentDiffusion
        Use ``prior.decode`` before image rewards: ``tilted.factor("r", reward.after(prior.decode), z, ...)``.
    """
    for name in ("unet", "vae", "text_encoder", "tokenizer", "encode_prompt"):
        if getattr(pipe, name, None) is None:
            raise ModelError(
                f"from_pipeline needs a Stable Diffusion pipeline with a {name}; got {type(pipe).__name__}"
            )
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ModelError("prompt must be a string or a non-empty list of strings")
    negatives = negative_prompt
    if negatives is not None and not isinstance(negatives, str):
        negatives = list(negatives)
        if len(negatives) != len(prompts):
            raise ModelError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one per prompt")
    if not guidance_scale >= 1:
        raise ModelError(f"guidance_scale must be ≥ 1 (1: no guidance), got {guidance_scale}")
    for module in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, module, None) is not None:
            getattr(pipe, module).requires_grad_(False).eval()
    if gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()

    unet, factor = pipe.unet, int(getattr(pipe, "vae_scale_factor", 8))
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    height, width = height or size[0] * factor, width or size[1] * factor
    if height % factor or width % factor:
        raise ModelError(f"height and width must be multiples of the VAE's scale factor {factor}, got {height}×{width}")
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
    context = {k: v for k, v in context.items() if v is not None}
    denoiser = GuidedUNet(unet, guidance_scale)
    event_shape = (unet.config.in_channels, height // factor, width // factor)
    settings = chain_settings(unet, _scheduler(pipe, scheduler), num_steps, eta, event_shape)
    grouped = not isinstance(prompt, str)
    if grouped:  # a tensor with a leading dimension P is read per group; time_ids are shared
        context = {k: v if k == "time_ids" else v.reshape((len(prompts),) + v.shape[1:]) for k, v in context.items()}
    return LatentDiffusion(
        denoiser,
        context=context,
        batch_shape=(len(prompts),) if grouped else (),
        decoder=VAEDecoder(pipe.vae),
        prompts=prompts if grouped else prompt,
        **settings,
    )
