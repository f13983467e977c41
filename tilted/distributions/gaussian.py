"""Gaussian diffusion (DDPM, DDIM with η ≥ 0) as a sequential Pyro distribution.

Levels k = K, …, 0 carry noise levels ᾱ_k (``alphas_cumprod`` of the training schedule read at the
inference timesteps τ_k; ᾱ_0 is the final level, 1 by default). x_K ~ N(0, I). Step k predicts
x̂_0 = x̂_0(x_k, τ_k), sets ε̂ = (x_k − √ᾱ_k x̂_0)/√(1 − ᾱ_k) and draws

    x_{k-1} ~ N( √ᾱ_{k-1} x̂_0 + √(1 − ᾱ_{k-1} − σ_k²) ε̂ ,  σ_k² I ),
    σ_k² = η² (1 − ᾱ_{k-1})/(1 − ᾱ_k) · (1 − ᾱ_k/ᾱ_{k-1})        (Song et al. 2021, eq. 16).

η = 1 is DDPM with the "fixed_small" variance (Ho et al. 2020, eq. 7), η = 0 deterministic DDIM.
With ᾱ_0 = 1 the last step is the deterministic map x_0 = x̂_0(x_1): it has no density, and
engines treat it as an identity move followed by the exact reward.

Both this model and flow matching (:class:`~tilted.distributions.FlowMatching`) are
:class:`GaussianPath` processes: x_k = a_k x_0 + s_k ε on a grid of levels, with the step above written
for any (a, s) — ε̂ = (x_k − a_k x̂_0)/s_k and

    x_{k-1} ~ N( a_{k-1} x̂_0 + √(s_{k-1}² − σ_k²) ε̂ ,  σ_k² I ),   σ_k² = η² s_{k-1}² (1 − SNR_k/SNR_{k-1}),

SNR = a²/s². For a = √ᾱ, s = √(1 − ᾱ) this is the DDIM step above. Engines read only this interface
(x̂_0, the step's moments, ᾱ_k = a_k²/(a_k² + s_k²) and :meth:`GaussianPath.kernel`), never the subclass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from pyro.distributions import Delta

from tilted.distributions.process import SequentialProcess
from tilted.errors import ModelError, NoDensityError, NonFiniteError, ShapeError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


class DataLaw(Protocol):
    """A data distribution with an exact denoiser: ``posterior_mean`` is E[x_0 | x_t] at level ᾱ."""

    event_shape: torch.Size

    def posterior_mean(self, x: torch.Tensor, alpha_cumprod: float) -> torch.Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...


class PointMass(Delta):
    """The law of a deterministic step: sampling returns the point, densities do not exist."""

    def log_prob(self, value):
        raise NoDensityError(
            "this step is deterministic (σ = 0: DDIM with η = 0, or a final step to ᾱ = 1) and has no "
            "transition density; use η > 0 for an engine that needs p(x_{k-1} | x_k)"
        )


def _diffusers_schedule(schedule, num_train_timesteps: int, timestep_spacing: str):
    """A diffusers scheduler describing the training noise schedule (betas or ᾱ)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if hasattr(schedule, "alphas_cumprod") and hasattr(schedule, "config"):
        return type(schedule).from_config(schedule.config)
    if isinstance(schedule, str):
        if schedule not in BETA_SCHEDULES:
            raise ModelError(f"unknown schedule {schedule!r}; use one of {sorted(BETA_SCHEDULES)} or a tensor of ᾱ")
        kind = BETA_SCHEDULES[schedule]
        extra = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
        return DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule=kind, timestep_spacing=timestep_spacing, **extra
        )
    ac = torch.as_tensor(schedule, dtype=torch.float64)
    if ac.ndim != 1 or ac.numel() < 2:
        raise ModelError(f"alphas_cumprod must be a 1-D tensor of training noise levels, got shape {tuple(ac.shape)}")
    if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac > 1).any() or (ac[1:] >= ac[:-1]).any():
        raise ModelError("alphas_cumprod must be finite, in (0, 1] and strictly decreasing")
    betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    return DDIMScheduler(num_train_timesteps=ac.numel(), trained_betas=betas.numpy(), timestep_spacing=timestep_spacing)


def path_sigmas(signal: torch.Tensor, noise: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_k (k = 0, …, K; σ_0 = 0 unused) of the η-step between levels with coefficients (a_k, s_k):
    σ_k² = η² s_{k-1}² (1 − SNR_k/SNR_{k-1}), SNR = a²/s², the DDPM posterior variance (η = 1) in any scaling."""
    a, a_prev, s, s_prev = signal[1:], signal[:-1], noise[1:], noise[:-1]
    var = eta**2 * s_prev**2 * (1 - (a * s_prev) ** 2 / (s * a_prev) ** 2)
    return torch.cat([signal.new_zeros(1), var.clamp_min(0).sqrt()])


class GaussianPath(SequentialProcess):
    """A chain on a Gaussian path x_k = a_k x_0 + s_k ε, x_K ~ N(0, I), with η-steps (module docstring).

    Subclasses set, for levels k = 0, …, K (float64 tensors): :attr:`signal` a_k, :attr:`noise` s_k
    (s_k > 0 for k ≥ 1), :attr:`alphas_cumprod` ᾱ_k = a_k²/(a_k² + s_k²) (the signal fraction, which is
    the noise level of the equivalent variance-preserving diffusion), :attr:`sigmas` σ_k; and they
    implement :meth:`predict` (x̂_0) and :meth:`time` (the level's time as a fraction of the noise scale).
    """

    signal: torch.Tensor
    noise: torch.Tensor
    #: what the network is called in errors
    network_name = "denoiser"
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor

    def _set_path(self, signal: torch.Tensor, noise: torch.Tensor, eta: float) -> None:
        self.signal, self.noise = signal.to(torch.float64), noise.to(torch.float64)
        self.alphas_cumprod = self.signal**2 / (self.signal**2 + self.noise**2)
        self.sigmas = path_sigmas(self.signal, self.noise, eta)

    def time(self, k: int) -> float:
        """The time of level k in [0, 1] (0: data, 1: noise)."""
        raise NotImplementedError

    def kernel(self, **options):
        """What SMC moves with on this process: Gaussian moves with x̂_0 and gradients through the denoiser."""
        from tilted.inference.proposals import GaussianKernel

        return GaussianKernel(self)

    def is_deterministic(self, k: int) -> bool:
        return bool(self.sigmas[k] == 0)

    def initial(self):
        loc = torch.zeros(self.event_shape, device=self.device)
        return torch.distributions.Independent(torch.distributions.Normal(loc, 1.0), len(self.event_shape))

    def draw_initial(self, shape, generator=None):
        return torch.randn(torch.Size(shape) + self.event_shape, generator=generator, device=self.device)

    @property
    def signal_fraction(self) -> torch.Tensor:
        """ᾱ_k = SNR/(1 + SNR) for k = 0, …, K: the weight ``potential_weight="signal"`` gives level k."""
        return self.alphas_cumprod

    def _context(self, batch: torch.Size) -> dict[str, Any]:
        """The context for a flattened batch: tensors with a leading group dimension P are read per group."""
        if not self.batch_shape:
            return self.context
        P = self.batch_shape[0]
        return {
            name: v.expand(batch + v.shape[1:]).reshape((-1,) + v.shape[1:])
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == P
            else v
            for name, v in self.context.items()
        }

    def _check_trailing(self, x: torch.Tensor) -> None:
        trailing = self.batch_shape + self.event_shape
        if x.shape[x.ndim - len(trailing) :] != trailing:
            raise ShapeError(
                f"expected x with trailing shape {tuple(trailing)} (groups, then the event), got {tuple(x.shape)}"
            )

    def _network(self, x, dtype, t: float, what: str, name: str, k: int, timestep) -> torch.Tensor:
        """The network's output at x (batch + event) and time t, flattened to one batch, checked, in x's dtype."""
        batch = x.shape[: x.ndim - len(self.event_shape)]
        flat = x.reshape((-1,) + self.event_shape)
        tt = torch.full((flat.shape[0],), t, dtype=dtype, device=x.device)
        out = self.denoiser(flat, tt, **self._context(batch))
        out = getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor) or out.shape != flat.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ShapeError(
                f"the {self.network_name} returned {got} for an input of shape {tuple(flat.shape)}; it must return one "
                f"{what} per input element (same shape as x_t)"
            )
        _check_finite(out, k, timestep, name)
        return out.to(x.dtype).reshape(batch + self.event_shape)

    def transition_moments(self, x: torch.Tensor, k: int, prediction: torch.Tensor | None = None):
        """Mean and standard deviation (a float) of p(x_{k-1} | x_k)."""
        x0 = self.predict(x, k) if prediction is None else prediction
        a, a_prev = float(self.signal[k]), float(self.signal[k - 1])
        s, s_prev = float(self.noise[k]), float(self.noise[k - 1])
        sigma = float(self.sigmas[k])
        eps = (x - a * x0) / s
        mean = a_prev * x0 + math.sqrt(max(s_prev**2 - sigma**2, 0.0)) * eps
        return mean, sigma

    def forward_moments(self, x: torch.Tensor, k: int):
        """Mean and standard deviation of the forward kernel q(x_k | x_{k-1} = x) of the path."""
        ratio = float(self.signal[k] / self.signal[k - 1])
        return ratio * x, math.sqrt(max(float(self.noise[k]) ** 2 - ratio**2 * float(self.noise[k - 1]) ** 2, 0.0))

    def transition(self, x, k, prediction=None):
        mean, sigma = self.transition_moments(x, k, prediction)
        if sigma == 0:
            return PointMass(mean, event_dim=len(self.event_shape))
        return torch.distributions.Independent(torch.distributions.Normal(mean, sigma), len(self.event_shape))

    def draw_transition(self, x, k, generator=None, prediction=None):
        mean, sigma = self.transition_moments(x, k, prediction)
        if sigma == 0:
            return mean
        return mean + sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)


class GaussianDiffusion(GaussianPath):
    """A pretrained Gaussian diffusion model as a Pyro distribution over x_0 (see module docstring).

    Parameters
    ----------
    denoiser
        ``denoiser(x_t, t, **context) -> prediction`` (a ``torch.nn.Module`` or any callable; an
        output with a ``.sample`` attribute, as diffusers models return, is unwrapped). ``t`` is a
        ``long`` tensor of shape (batch,) holding the training timestep τ_k.
    data
        A data law with an exact denoiser (for example :class:`~tilted.distributions.GaussianMixture`),
        used instead of ``denoiser``: a "pretrained" model with no training.
    event_shape
        Shape of one sample; taken from ``data`` when given.
    num_steps
        Number of inference steps K.
    eta
        DDIM stochasticity: 1 is DDPM, 0 deterministic DDIM (no transition densities).
    schedule
        ``"linear"``, ``"scaled_linear"``, ``"cosine"``, a 1-D tensor of training ᾱ_t, or a diffusers
        scheduler (its ᾱ, spacing, offset and final ᾱ are used).
    num_train_timesteps, timestep_spacing
        Training schedule length and spacing of the inference timesteps (``"leading"``,
        ``"trailing"``, ``"linspace"``, as in diffusers).
    prediction_type
        What the denoiser predicts: ``"epsilon"``, ``"sample"`` (x_0) or ``"v_prediction"``.
    clip_sample
        Clip x̂_0 to [−c, c] (images: 1.0); ``None`` (default) does not clip.
    final_alpha_cumprod
        ᾱ_0 of the last level; 1 makes the last step deterministic.
    context
        Keyword arguments passed to every denoiser call (conditioning).
    batch_shape
        ``(P,)`` for P independent chains with their own conditioning (one per prompt): a context
        tensor whose leading dimension is P is read per group, and engines run each group as its own
        run (:mod:`tilted.plan`). Default ``()``: one chain, context passed unchanged.
    """

    def __init__(
        self,
        denoiser: Callable[..., Any] | None = None,
        *,
        data: DataLaw | None = None,
        event_shape: tuple[int, ...] | torch.Size | None = None,
        num_steps: int = 100,
        eta: float = 1.0,
        schedule: Any = "linear",
        num_train_timesteps: int = 1000,
        timestep_spacing: str = "trailing",
        prediction_type: str = "epsilon",
        clip_sample: float | None = None,
        final_alpha_cumprod: float | None = None,
        context: Mapping[str, Any] | None = None,
        batch_shape: tuple[int, ...] | torch.Size = (),
    ):
        event_shape = _checked_arguments("denoiser", denoiser, data, event_shape, num_steps, clip_sample, (3, 64, 64))
        if data is not None:
            prediction_type = "sample"
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        eta = float(eta)
        if not math.isfinite(eta) or eta < 0:
            raise ModelError(f"eta must be finite and ≥ 0, got {eta}")
        scheduler = _diffusers_schedule(schedule, num_train_timesteps, timestep_spacing)
        train_ac = scheduler.alphas_cumprod.to(torch.float64)
        if not torch.isfinite(train_ac).all() or (train_ac <= 0).any():
            raise ModelError("the noise schedule has non-finite or non-positive ᾱ; check the betas")
        if num_steps > train_ac.numel():
            raise ModelError(f"num_steps={num_steps} exceeds the {train_ac.numel()} training timesteps")
        scheduler.set_timesteps(num_steps)
        if final_alpha_cumprod is None:
            one = getattr(scheduler.config, "set_alpha_to_one", True)
            final_alpha_cumprod = 1.0 if one else float(train_ac[0])
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) > 1 or any(n < 1 for n in batch_shape):
            raise ShapeError(f"batch_shape must be () or (P,) with P ≥ 1 groups, got {tuple(batch_shape)}")
        super().__init__(event_shape, num_steps, batch_shape)
        self.denoiser = denoiser
        self.data = data
        self.eta = eta
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.context = dict(context or {})
        self.scheduler = scheduler
        #: inference timesteps τ_K > … > τ_1, in sampling order (as diffusers' ``scheduler.timesteps``)
        self.timesteps = scheduler.timesteps.to(torch.long).clone()
        levels = torch.cat(
            [torch.tensor([float(final_alpha_cumprod)], dtype=torch.float64), train_ac[self.timesteps.flip(0)]]
        )
        if (levels[1:] >= levels[:-1]).any():
            raise ModelError("inference noise levels must strictly decrease from x_0 to x_K")
        # a_k = √ᾱ_k, s_k = √(1 − ᾱ_k); ᾱ_k (index by level) and σ_k (σ_0 = 0 unused) follow
        self._set_path(levels.sqrt(), (1 - levels).sqrt(), eta)
        self.alphas_cumprod = levels  # exactly the schedule's values

    @classmethod
    def from_diffusers(cls, denoiser, scheduler, num_steps: int, **kwargs) -> GaussianDiffusion:
        """From a diffusers model and DDPM/DDIM scheduler: see :func:`tilted.distributions.from_diffusers`."""
        from tilted.distributions.adapters import from_diffusers

        return from_diffusers(denoiser, scheduler, num_steps, **kwargs)

    # -- coefficients -------------------------------------------------------------------------
    def timestep(self, k: int) -> int:
        """Training timestep τ_k of level k ≥ 1."""
        return int(self.timesteps[self.num_steps - k])

    def time(self, k: int) -> float:
        """τ_k / T, the training timestep of level k as a fraction of the training schedule (0 at k = 0)."""
        return self.timestep(k) / len(self.scheduler.alphas_cumprod) if k else 0.0

    @property
    def device(self) -> torch.device:
        return super().device if self.data is None else torch.device("cpu")

    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0(x_k): the exact posterior mean for a data law, else the converted network output."""
        self._check_trailing(x)
        a = float(self.alphas_cumprod[k])
        if self.data is not None:
            out = self.data.posterior_mean(x, a)
        else:
            what = f"{self.prediction_type} prediction"
            out = self._network(x, torch.long, self.timestep(k), what, f"the denoiser's {what}", k, self.timestep(k))
            if self.prediction_type == "epsilon":
                out = (x - math.sqrt(1 - a) * out) / math.sqrt(a)
            elif self.prediction_type == "v_prediction":
                out = math.sqrt(a) * x - math.sqrt(1 - a) * out
        if self.clip_sample is not None:
            out = out.clamp(-self.clip_sample, self.clip_sample)
        _check_finite(out, k, self.timestep(k) if k else None, "x̂_0")
        return out


def _checked_arguments(name, network, data, event_shape, num_steps, clip_sample, example) -> torch.Size:
    """The event shape, after the checks every Gaussian path shares: one of network/data, shapes, K, clipping."""
    if (network is None) == (data is None):
        raise ModelError(f"give exactly one of {name}= (a network or callable) and data= (a data law)")
    if data is not None:
        if event_shape is not None and torch.Size(event_shape) != torch.Size(data.event_shape):
            raise ShapeError(f"event_shape {tuple(event_shape)} differs from the data law's {tuple(data.event_shape)}")
        event_shape = data.event_shape
    if event_shape is None:
        raise ModelError(f"event_shape is required with a {name} network, e.g. event_shape={example}")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ModelError(f"num_steps must be a positive integer, got {num_steps!r}")
    if clip_sample is not None and not clip_sample > 0:
        raise ModelError(f"clip_sample must be a positive bound or None, got {clip_sample}")
    return torch.Size(event_shape)


def _check_finite(value: torch.Tensor, k: int, timestep: int | None, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the level, its timestep and the quantity if ``value`` has NaN/±inf."""
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        at = f"level {k}" + ("" if timestep is None else f" (training timestep {timestep})")
        raise NonFiniteError(
            f"{what} has {int(bad.sum())} non-finite value(s) (NaN or ±inf) out of {value.numel()} at {at}; the "
            "network is unusable at this noise level: check its weights, its prediction_type and its dtype "
            "(half precision overflows), or evaluate it in float32"
        )
