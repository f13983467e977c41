"""Flow matching (rectified flow; SD3, FLUX) as a sequential Pyro distribution with a stochastic sampler.

The interpolant is x_t = (1 − t) x_0 + t ε, t ∈ [0, 1] (t = 1 is noise); a network predicts the
velocity v = ε − x_0, so x̂_0 = x_t − t v̂ and ε̂ = x_t + (1 − t) v̂. Levels k = K, …, 0 sit at times
1 = t_K > … > t_0 = 0, uniform in u = k/K, or shifted as in SD3/FLUX: t = s u / (1 + (s − 1) u).

Resampling copies of a deterministic ODE sampler leaves them copies, so the engines need a stochastic
sampler with the flow's marginals. This is a :class:`~tilted.distributions.gaussian.GaussianPath` with
a_k = 1 − t_k, s_k = t_k: step k draws

    x_{k-1} ~ N( a_{k-1} x̂_0 + √(s_{k-1}² − σ_k²) ε̂ ,  σ_k² I ),   σ_k² = η² s_{k-1}² (1 − SNR_k/SNR_{k-1}),

SNR = a²/s². With the exact x̂_0 every η ∈ [0, 1] leaves the path's marginals N(a x_0, s² I)|x_0
invariant in the limit of small steps — η = 0 is the flow's ODE (Euler on the velocity: x_{k-1} =
x_k + (t_{k-1} − t_k) v̂), η = 1 the DDPM-type reverse SDE whose score is −ε̂/s (docs/modelling.md).
η = 0 has no transition densities, and engines that need them refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tilted.distributions.gaussian import DataLaw, GaussianPath, _check_finite, _checked_arguments
from tilted.errors import ModelError, ShapeError


def flow_times(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """t_k for k = 0, …, K: t = s u / (1 + (s − 1) u) at u = k/K (s = 1: uniform), float64."""
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    return shift * u / (1 + (shift - 1) * u)


class FlowMatching(GaussianPath):
    """A pretrained flow-matching model as a Pyro distribution over x_0 (see module docstring).

    Parameters
    ----------
    velocity
        ``velocity(x_t, t, **context) -> v̂`` predicting ε − x_0 (a ``torch.nn.Module`` or any
        callable; a diffusers output with ``.sample`` is unwrapped). ``t`` is a float tensor of shape
        (batch,) holding t_k · ``time_scale``.
    data
        A data law with an exact denoiser (for example :class:`~tilted.distributions.GaussianMixture`),
        used instead of ``velocity``: x̂_0 = E[x_0 | x_t] exactly.
    event_shape
        Shape of one sample; taken from ``data`` when given.
    num_steps
        Number of inference steps K.
    eta
        Noise level of the sampler: 1 the reverse SDE (default), 0 the ODE (no transition densities).
    shift
        SD3/FLUX time shift s > 0 of the grid (1: uniform in t; SD3 uses 3).
    times
        Instead of ``shift``: the K + 1 times t_0 = 0 < … < t_K ≤ 1, increasing.
    time_scale
        Factor on t passed to the network (diffusers' SD3 transformer takes 1000 t, FLUX's takes t).
    clip_sample
        Clip x̂_0 to [−c, c]; ``None`` (default) does not clip.
    context, batch_shape
        As for :class:`~tilted.distributions.GaussianDiffusion`.
    """

    network_name = "velocity network"

    def __init__(
        self,
        velocity: Callable[..., Any] | None = None,
        *,
        data: DataLaw | None = None,
        event_shape: tuple[int, ...] | torch.Size | None = None,
        num_steps: int = 50,
        eta: float = 1.0,
        shift: float = 1.0,
        times: torch.Tensor | None = None,
        time_scale: float = 1.0,
        clip_sample: float | None = None,
        context: Mapping[str, Any] | None = None,
        batch_shape: tuple[int, ...] | torch.Size = (),
    ):
        event_shape = _checked_arguments("velocity", velocity, data, event_shape, num_steps, clip_sample, (16, 64, 64))
        eta = float(eta)
        if not math.isfinite(eta) or not 0 <= eta <= 1:
            raise ModelError(f"eta must be in [0, 1] (0: the ODE, 1: the reverse SDE), got {eta}")
        if times is None:
            if not (math.isfinite(shift) and shift > 0):
                raise ModelError(f"shift must be finite and > 0, got {shift}")
            times = flow_times(int(num_steps), float(shift))
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.shape != (int(num_steps) + 1,):
            raise ModelError(
                f"times must hold K + 1 = {int(num_steps) + 1} values t_0, …, t_K, got {tuple(times.shape)}"
            )
        if times[0] != 0 or (times[1:] <= times[:-1]).any() or times[-1] > 1 or not torch.isfinite(times).all():
            raise ModelError("times must increase strictly from t_0 = 0 to t_K ≤ 1")
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) > 1 or any(n < 1 for n in batch_shape):
            raise ShapeError(f"batch_shape must be () or (P,) with P ≥ 1 groups, got {tuple(batch_shape)}")
        super().__init__(event_shape, int(num_steps), batch_shape)
        self.denoiser = velocity  # the network (SequentialProcess.device reads it)
        self.data = data
        self.eta = eta
        self.shift = float(shift)
        self.time_scale = float(time_scale)
        self.clip_sample = clip_sample
        self.context = dict(context or {})
        #: t_k for levels k = 0, …, K (index by level)
        self.times = times
        #: the levels' times in thousandths, round(1000 t_k) for k = K, …, 1 in sampling order (SD3's
        #: timestep convention; engines record it in their traces, as diffusion models' training timesteps)
        self.timesteps = torch.round(1000 * times[1:].flip(0)).to(torch.long)
        self._set_path(1 - times, times, eta)

    @property
    def device(self) -> torch.device:
        return super().device if self.data is None else torch.device("cpu")

    def time(self, k: int) -> float:
        return float(self.times[k])

    def timestep(self, k: int) -> float:
        """The time the network reads at level k: t_k · time_scale."""
        return float(self.times[k]) * self.time_scale

    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0(x_k): the exact posterior mean for a data law, else x_k − t_k v̂(x_k, t_k)."""
        self._check_trailing(x)
        t = float(self.times[k])
        if self.data is not None:
            # x_t / √(a² + s²) is the variance-preserving state at ᾱ = a²/(a² + s²)
            scale = math.sqrt((1 - t) ** 2 + t**2)
            out = self.data.posterior_mean(x / scale, float(self.alphas_cumprod[k]))
        else:
            v = self._network(
                x, torch.float32, self.timestep(k), "velocity ε − x_0", f"the velocity at t = {t:.4g}", k, None
            )
            out = x - t * v
        if self.clip_sample is not None:
            out = out.clamp(-self.clip_sample, self.clip_sample)
        _check_finite(out, k, None, f"x̂_0 at t = {t:.4g}")
        return out
