"""Gaussian moves x_k → x_{k-1} with their exact log-density ratio, and :class:`GaussianKernel`.

The prior kernel is p = N(μ, σ²I). The gradient-guided ("locally optimal", TDS/DAS) proposal is
q = N(μ + σ² g, σ²I), g = ∇ψ_{k-1} at x_k: the first-order approximation of p · exp(ψ_{k-1}).
For a draw x' = μ + σ²g + σε,

    log p(x') − log q(x') = (‖x' − μ − σ²g‖² − ‖x' − μ‖²) / (2σ²),

summed over the event dimensions. With g = 0 this is the prior (bootstrap) proposal, ratio 0.

**Trust region.** The first-order tilt is only trustworthy within a few standard deviations of the
transition, and a learned denoiser's gradient can be arbitrarily large at high noise (x̂_0 divides
by √ᾱ). So the shift is bounded in units of σ: g is scaled by min(1, τσ√d/‖σ²g‖), which keeps the
shift's root-mean-square per coordinate ≤ τσ (d = event size). The scaled g is still a fixed
function of x_k, so the draw and its exact log p − log q are unchanged in form and the target stays
exact; engines record the fraction of particles whose drift was scaled.

:class:`GaussianKernel` is what :class:`~tilted.inference.SMC` builds for a
:class:`~tilted.distributions.GaussianDiffusion` (its masked counterpart is
:class:`~tilted.inference.discrete.MaskedKernel`): both evaluate x̂_0 with the rewards and their
gradients, turn rewards into the tempered potential φ, draw x_K, and move the particles.
"""

from __future__ import annotations

import contextlib
import math

import torch

from tilted.distributions.gaussian import GaussianDiffusion
from tilted.errors import ModelError, NonFiniteError

PROPOSALS = ("prior", "gradient")
F64 = torch.float64
#: what to use where a reward has no gradient
DERIVATIVE_FREE = (
    "a derivative-free engine (SMC with proposal='prior', Importance, SVDD, BeamSearch, BestOfN, NestedIS)"
)


def require_differentiable(factors, needs: str, instead: str = DERIVATIVE_FREE) -> None:
    """Refuse factors whose reward declares ``differentiable = False`` (plain callables count as differentiable).

    ``needs`` names what differentiates the rewards, ``instead`` what to use.
    """
    bad = [
        f"factor {f.name!r} ({type(f.reward).__name__})"
        for f in factors
        if not getattr(f.reward, "differentiable", True)
    ]
    if bad:
        raise ModelError(
            f"{needs} differentiates the rewards, but the reward of {' and '.join(bad)} is not differentiable "
            f"(it declares differentiable=False); use {instead}"
        )


def gaussian_move(
    mean: torch.Tensor,
    sigma: float,
    drift: torch.Tensor | None,
    event_dim: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw x' ~ N(mean + σ²·drift, σ²I); return x' and log p(x') − log q(x') (float64, per particle)."""
    noise = sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    batch = mean.shape[: mean.ndim - event_dim]
    if drift is None:
        return mean + noise, torch.zeros(batch, dtype=F64, device=mean.device)
    shift = sigma**2 * drift.to(mean.dtype)
    x = mean + shift + noise
    return x, _ratio(noise.to(F64), (noise + shift).to(F64), sigma, event_dim)


def gaussian_log_ratio(x: torch.Tensor, mean: torch.Tensor, sigma: float, drift: torch.Tensor | None, event_dim: int):
    """log p(x) − log q(x) of a given x under p = N(mean, σ²I) and q = N(mean + σ²·drift, σ²I) (float64)."""
    offset = x - mean
    if drift is None:
        return torch.zeros(offset.shape[: offset.ndim - event_dim], dtype=F64, device=x.device)
    return _ratio((offset - sigma**2 * drift.to(offset.dtype)).to(F64), offset.to(F64), sigma, event_dim)


def _ratio(noise: torch.Tensor, offset: torch.Tensor, sigma: float, event_dim: int) -> torch.Tensor:
    """(‖x − μ − σ²g‖² − ‖x − μ‖²)/(2σ²) from the two offsets, summed over the event dimensions."""
    dims = tuple(range(noise.ndim - event_dim, noise.ndim))
    return ((noise**2).sum(dims) - (offset**2).sum(dims)) / (2 * sigma**2)


def trust_region(
    drift: torch.Tensor, sigma: float, tau: float | None, event_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale g so that ‖σ²g‖ ≤ τσ√d per particle; return it and the mask of scaled particles."""
    dims = tuple(range(drift.ndim - event_dim, drift.ndim))
    batch = drift.shape[: drift.ndim - event_dim]
    if tau is None:
        return drift, torch.zeros(batch, dtype=torch.bool, device=drift.device)
    d = math.prod(drift.shape[drift.ndim - event_dim :])
    norm = sigma * drift.to(F64).pow(2).sum(dims).sqrt()  # ‖σ²g‖ / σ
    limit = tau * math.sqrt(d)
    clipped = norm > limit
    scale = torch.where(clipped, limit / norm, torch.ones_like(norm))
    return drift * scale.to(drift.dtype).reshape(batch + (1,) * event_dim), clipped


@contextlib.contextmanager
def _located(where: str):
    """Re-raise a :class:`NonFiniteError` from inside an evaluation with the site and step prefixed."""
    try:
        yield
    except NonFiniteError as error:
        raise NonFiniteError(f"{where}: {error}") from None


class GaussianKernel:
    """What SMC does on a :class:`GaussianDiffusion`: x̂_0 and reward gradients through the denoiser, Gaussian moves."""

    #: x_K ~ N(0, I) has a density, so the gradient proposal can tilt it
    tilts_initial = True

    def __init__(self, process: GaussianDiffusion):
        self.process = process
        self.event_dim = len(process.event_shape)

    def evaluate(self, plan, x, k, with_rewards, with_grads, generator, counts, batch_size=None):
        """x̂_0(x) (R, N, *E), rewards r_j(x̂_0) (F, R, N) and gradients ∇_x r_j(x̂_0(x)) (F, R, N, *E) at level k."""
        shape, F = x.shape, len(plan.factors)
        x0s, rs, gs = [], [], []
        where = f"site {plan.site!r}, step {self.process.num_steps - k} (the state at level {k})"
        for chunk in plan.chunks(x, 2, batch_size):  # site layout (b, [P], *E)
            with torch.set_grad_enabled(with_grads), _located(where):
                xc = chunk.detach().requires_grad_(with_grads)
                x0 = self.process.predict(xc, k)
                r = plan.rewards(x0) if with_rewards else None
                if with_grads and F:
                    if not r.requires_grad:
                        raise ModelError(
                            "the gradient proposal needs rewards differentiable through the denoiser; "
                            f"{[f.name for f in plan.factors]} gave no gradient. Use proposal='prior'"
                        )
                    g = torch.stack([torch.autograd.grad(r[j].sum(), xc, retain_graph=j < F - 1)[0] for j in range(F)])
                    bad = ~torch.isfinite(g)
                    if bool(bad.any()):
                        raise NonFiniteError(
                            f"the gradient of the reward(s) through the denoiser has {int(bad.sum())} non-finite "
                            "entries: the network's Jacobian overflows at this noise level; use proposal='prior'"
                        )
                    gs.append(g)
            x0s.append(x0.detach())
            rs.append(None if r is None else r.detach())
        n = shape[0] * shape[1]
        counts.denoiser_calls += n
        x0 = plan.from_site(torch.cat(x0s), shape[:2])
        rewards = plan.from_site(torch.cat(rs, 1), shape[:2], lead=1) if with_rewards else None
        if with_rewards:
            counts.reward_calls += F * n
        grads = None
        if with_grads:
            grads = plan.from_site(torch.cat(gs, 1), shape[:2], lead=1) if F else x.new_zeros((0,) + shape)
            counts.gradient_evaluations += F * n
        return x0, rewards, grads

    @staticmethod
    def phi(rewards: torch.Tensor, lambdas: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """φ = Σ_j λ_j r_j/α_j from rewards (F, R, N), λ (F, R), α (F,): (R, N) float64."""
        return (lambdas[:, :, None] * rewards.to(F64) / alpha[:, None, None]).sum(0)

    def bound(self, drift: torch.Tensor, k: int, tau: float | None):
        """The drift of the move from level k (k = K + 1: the draw of x_K, σ = 1) in its trust region."""
        sigma = 1.0 if k > self.process.num_steps else float(self.process.sigmas[k])
        return trust_region(drift, sigma, tau, self.event_dim)

    def initial(self, shape, drift, generator=None):
        """x_K ~ N(g, I) (the prior N(0, I) for g = None) for a batch ``shape``, with log p − log q."""
        mean = torch.zeros(tuple(shape) + tuple(self.process.event_shape), device=self.process.device)
        return gaussian_move(mean, 1.0, drift, self.event_dim, generator)

    def move(self, state, k: int, drift, generator=None):
        """x_k → x_{k-1} ~ N(μ + σ²g, σ²I) (deterministic steps: x_{k-1} = μ), with log p − log q."""
        if self.process.is_deterministic(k):
            return self.process.transition_moments(state.x, k, state.x0)[0], torch.zeros_like(state.psi)
        mean, sigma = self.process.transition_moments(state.x, k, state.x0)
        return gaussian_move(mean, sigma, drift, self.event_dim, generator)

    def pinned(self, x, x0, k: int, drift, x_new) -> torch.Tensor:
        """log p − log q of a *given* x_{k-1} = ``x_new`` under the move from (x, x̂_0) at level k (k = K + 1: x_K)."""
        if k > self.process.num_steps:
            return gaussian_log_ratio(x_new, torch.zeros_like(x_new), 1.0, drift, self.event_dim)
        if self.process.is_deterministic(k):
            return torch.zeros(x_new.shape[: x_new.ndim - self.event_dim], dtype=F64, device=x_new.device)
        mean, sigma = self.process.transition_moments(x, k, x0)
        return gaussian_log_ratio(x_new, mean, sigma, drift, self.event_dim)

    def log_transition(self, x, x0, k: int, x_new) -> torch.Tensor:
        """log p_k(x_new | x) + const for every particle (x (R, N, *E), x_new broadcast), float64; k stochastic."""
        mean, sigma = self.process.transition_moments(x, k, x0)
        dims = tuple(range(mean.ndim - self.event_dim, mean.ndim))
        return -((x_new - mean).to(F64) ** 2).sum(dims) / (2 * sigma**2)
