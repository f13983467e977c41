"""Adapters for pretrained diffusers models: a ``UNet2DModel`` + DDPM/DDIM scheduler as a process.

:func:`from_diffusers` reads everything that defines the sampling chain from a diffusers scheduler's
configuration (training ᾱ, timestep spacing and offset, final ᾱ, prediction type, x̂_0 clipping) and
returns a :class:`~tilted.distributions.GaussianDiffusion` whose kernels are those of the
scheduler's ``step``:

    x_{k-1} ~ N( √ᾱ_{k-1} x̂_0 + √(1 − ᾱ_{k-1} − σ_k²) ε̂ ,  σ_k² I ),
    σ_k² = η² (1 − ᾱ_{k-1})/(1 − ᾱ_k) · (1 − ᾱ_k/ᾱ_{k-1}),

with ᾱ_k = ``alphas_cumprod[τ_k]`` at the scheduler's inference timesteps τ_K > … > τ_1 and ᾱ_0 the
final level (1, or ``alphas_cumprod[0]`` for DDIM with ``set_alpha_to_one=False``).
``DDPMScheduler`` is η = 1 (Ho et al. 2020, eq. 7, "fixed_small" variance); ``DDIMScheduler`` takes η.
Unlike ``step``, the process exposes the transition mean and σ_k, so engines get log-densities.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tilted.distributions.gaussian import GaussianDiffusion
from tilted.errors import ModelError, ShapeError

SUPPORTED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
#: DDPM variance rules that give the posterior variance β̃_t ("fixed_small_log" is the same law, stored as a std)
DDPM_VARIANCES = ("fixed_small", "fixed_small_log")


def _config_event_shape(denoiser) -> tuple[int, ...] | None:
    """(C, H, W) from a diffusers model's ``in_channels`` and ``sample_size``, when it has them."""
    config = getattr(denoiser, "config", None)
    channels = getattr(config, "in_channels", None)
    size = getattr(config, "sample_size", None)
    if channels is None or size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), *(int(s) for s in size))


def _check_event_shape(denoiser, event_shape) -> torch.Size:
    inferred = _config_event_shape(denoiser)
    if event_shape is None:
        if inferred is None:
            raise ModelError(
                "event_shape is required for a denoiser without a diffusers config "
                "(in_channels, sample_size), e.g. event_shape=(3, 64, 64)"
            )
        return torch.Size(inferred)
    event_shape = torch.Size(event_shape)
    config = getattr(denoiser, "config", None)
    channels = getattr(config, "in_channels", None)
    if channels is not None and (len(event_shape) < 1 or event_shape[0] != channels):
        raise ShapeError(
            f"event_shape {tuple(event_shape)} does not match the model, which takes {channels} input channels; "
            f"use event_shape=({channels}, ...)"
        )
    out_channels = getattr(config, "out_channels", None)
    if channels is not None and out_channels is not None and out_channels != channels:
        raise ShapeError(
            f"the model maps {channels} channels to {out_channels}; a denoiser must return one prediction per "
            "input element (models with learned variances, 2×channels out, are not supported)"
        )
    return event_shape


def from_diffusers(
    denoiser: Callable[..., Any],
    scheduler: Any,
    num_steps: int,
    *,
    eta: float | None = None,
    event_shape: tuple[int, ...] | torch.Size | None = None,
    context: Mapping[str, Any] | None = None,
) -> GaussianDiffusion:
    """A :class:`~tilted.distributions.GaussianDiffusion` from a diffusers model and scheduler.

    Parameters
    ----------
    denoiser
        A diffusers model such as ``UNet2DModel`` (its ``.sample`` output is unwrapped) or any callable
        ``denoiser(x_t, t, **context)`` returning a prediction of the same shape as ``x_t``; ``t`` is a
        ``long`` tensor of shape (batch,).
    scheduler
        A ``DDPMScheduler`` or ``DDIMScheduler`` instance. It is copied (``from_config``), never modified.
        Read from its configuration: ``alphas_cumprod`` (betas, beta schedule, ``rescale_betas_zero_snr``),
        ``timestep_spacing``, ``steps_offset``, ``set_alpha_to_one`` (DDIM), ``prediction_type``, and
        ``clip_sample`` / ``clip_sample_range`` (x̂_0 is clipped to ±range only when ``clip_sample`` is true).
    num_steps
        Number of inference steps K (``scheduler.set_timesteps(num_steps)``).
    eta
        DDIM stochasticity η ≥ 0; default 1.0 (the DDPM posterior variance on the DDIM timesteps), because
        engines need transition densities and η = 0 (diffusers' ``DDIMPipeline`` default) is deterministic
        and has none. For a ``DDPMScheduler`` η is 1 by definition: leave it unset or pass 1.
    event_shape
        Shape of one sample, e.g. (3, 32, 32). Inferred from ``denoiser.config`` (``in_channels``,
        ``sample_size``) when omitted; checked against its ``in_channels``/``out_channels`` when given
        (a spatial size other than ``sample_size`` is allowed: UNets are convolutional).
    context
        Keyword arguments passed to every denoiser call (e.g. ``class_labels``).

    Returns
    -------
    GaussianDiffusion
        ``process.transition_moments(x, k)`` is the mean of ``scheduler.step(..., τ_k, x)`` with zero noise
        and σ_k its noise scale; ``process.predict(x, k)`` is its ``pred_original_sample``.

    Raises
    ------
    ModelError
        For another scheduler class, DDPM with a ``variance_type`` other than "fixed_small" (or the same law
        "fixed_small_log"), dynamic thresholding, η ≠ 1 with DDPM, or η < 0.
    ShapeError
        When ``event_shape`` does not match the model's channels.

    Notes
    -----
    Where the chain and diffusers' ``step`` differ, and why:

    - DDIM with clipping: the process computes ε̂ from the *clipped* x̂_0, as ``DDPMScheduler.step`` does
      and as ``DDIMScheduler.step(..., use_clipped_model_output=True)`` does. With the default
      ``use_clipped_model_output=False`` diffusers uses the raw network ε in the direction term, so with
      ``clip_sample=True`` means differ wherever x̂_0 was clipped. Without clipping they agree exactly.
    - DDIM moves from τ to τ − N // K regardless of its own timestep list. With ``timestep_spacing="linspace"``,
      or "trailing" when K does not divide N, that is not the next inference timestep, so diffusers feeds
      the network a sample whose noise level is not the one the timestep says. The process always moves
      to the ᾱ of the next inference timestep (as ``DDPMScheduler`` does). For "leading" and for
      "trailing" with K dividing N both agree.
    - DDPM's last step to ᾱ = 1 has variance 0, which diffusers clamps to 1e-20; the process uses σ = 0
      (a deterministic step, see :class:`~tilted.distributions.PointMass`).
    """
    return GaussianDiffusion(
        denoiser, context=context, **chain_settings(denoiser, scheduler, num_steps, eta, event_shape)
    )


def chain_settings(denoiser, scheduler, num_steps: int, eta: float | None, event_shape) -> dict[str, Any]:
    """The :class:`GaussianDiffusion` keyword arguments that :func:`from_diffusers` reads and checks."""
    try:
        from diffusers import DDIMScheduler, DDPMScheduler
    except ImportError as err:  # pragma: no cover - diffusers is a dependency
        raise ModelError("from_diffusers needs the diffusers package: pip install diffusers") from err

    name = type(scheduler).__name__
    if isinstance(scheduler, type):
        raise ModelError(f"pass a scheduler instance, e.g. {scheduler.__name__}(), not the class")
    if not isinstance(scheduler, DDPMScheduler | DDIMScheduler):
        raise ModelError(
            f"scheduler {name} is not supported; use one of {', '.join(SUPPORTED_SCHEDULERS)} "
            f"(e.g. DDIMScheduler.from_config(scheduler.config)), whose kernels are Gaussian with known variance"
        )
    config = scheduler.config
    if getattr(config, "thresholding", False):
        raise ModelError(
            f"{name} with thresholding=True (dynamic thresholding of x̂_0) is not supported; "
            f"use {name}.from_config(scheduler.config, thresholding=False) (clip_sample still applies)"
        )
    if isinstance(scheduler, DDPMScheduler):
        if config.variance_type not in DDPM_VARIANCES:
            raise ModelError(
                f"DDPMScheduler with variance_type={config.variance_type!r} is not supported: the process has "
                f"the posterior variance β̃_t of variance_type='fixed_small'. Use "
                f"DDPMScheduler.from_config(scheduler.config, variance_type='fixed_small') (knowing that it samples "
                "a different chain from the one this variance_type defines), or a DDIMScheduler with eta"
            )
        if eta is not None and float(eta) != 1.0:
            raise ModelError(
                f"a DDPMScheduler samples with η = 1; got eta={eta}. For another η use "
                "DDIMScheduler.from_config(scheduler.config) with eta=..."
            )
        eta = 1.0
    elif eta is None:
        eta = 1.0
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ModelError(f"eta must be a finite number ≥ 0, got {eta}")

    event_shape = _check_event_shape(denoiser, event_shape)
    clip = float(config.clip_sample_range) if config.clip_sample else None

    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ModelError(f"num_steps must be a positive integer, got {num_steps!r}")
    probe = type(scheduler).from_config(config)
    if num_steps > config.num_train_timesteps:
        raise ModelError(
            f"num_steps={num_steps} exceeds the scheduler's {config.num_train_timesteps} training timesteps"
        )
    probe.set_timesteps(num_steps)
    if isinstance(scheduler, DDIMScheduler) and not config.set_alpha_to_one and int(probe.timesteps[-1]) == 0:
        raise ModelError(
            "DDIMScheduler with set_alpha_to_one=False and a last timestep 0 makes the last step an identity "
            "(ᾱ_0 = alphas_cumprod[0] is the level of timestep 0); set steps_offset=1 (as Stable Diffusion "
            "does) or set_alpha_to_one=True"
        )

    return {
        "event_shape": event_shape,
        "num_steps": int(num_steps),
        "eta": eta,
        "schedule": scheduler,
        "prediction_type": config.prediction_type,
        "clip_sample": clip,
    }
