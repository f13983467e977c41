"""Values of chain states for guidance and search: denoiser predictions, rewards, ψ̂ and its gradient.

Guidance and search engines score a state x_k at level k by the one-sample value estimate

    ψ̂(x_k) = Σ_j r_j(x̂_0(x_k)) / α_j        (ψ̂(x_0) = Σ_j r_j(x_0)/α_j exactly at level 0),

the log-tilt of the denoiser's prediction (DESIGN §2: v̂_k = r(x̂_0(x_k)), in units of the tilt).
:class:`Values` evaluates predictions, rewards, ψ̂ and the two gradients guidance needs —
∇_{x_k} ψ̂(x̂_0(x_k)) through the denoiser (DPS, FreeDoM) and ∇_{x̂_0} ψ̂ at the prediction (MPGD) —
in micro-batches of ``batch_size`` particles, and counts every call in one
:class:`~tilted.inference.result.Counts`:

- a denoiser call per particle evaluated at a level k > 0 (level 0 needs none: x̂_0(x_0) = x_0);
- a reward call per factor and particle;
- a gradient evaluation per particle and backward pass (one pass differentiates Σ_j r_j/α_j, so
  several factors still cost one gradient).

Every tensor has leading batch dimensions (any number) followed by the process's event shape.
"""

from __future__ import annotations

import torch

from tilted.errors import ModelError
from tilted.inference.result import Counts
from tilted.plan import Plan

F64 = torch.float64


class Values:
    """Counted, micro-batched evaluations of one plan's process and factors (module docstring).

    Parameters
    ----------
    plan
        The model read into a plan.
    counts
        Where calls are counted (shared with the engine).
    batch_size
        Particles per denoiser/reward evaluation (``None``: all at once). Results do not depend on it.
    temperatures
        α used in ψ̂ = Σ_j r_j/α_j: ``None`` for the factors' own, or one number replacing every α_j.
    """

    def __init__(self, plan: Plan, counts: Counts, batch_size: int | None = None, temperatures: float | None = None):
        self.plan = plan
        self.counts = counts
        self.batch_size = batch_size
        alpha = plan.temperatures if temperatures is None else torch.full((len(plan.factors),), float(temperatures))
        self.alpha = alpha.to(F64)

    @property
    def num_factors(self) -> int:
        return len(self.plan.factors)

    def _chunks(self, x: torch.Tensor):
        event = self.plan.process.event_shape
        flat = x.reshape((-1,) + event)
        return flat, flat.split(self.batch_size or max(flat.shape[0], 1))

    # -- plain evaluations ----------------------------------------------------------------------
    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0(x_k), same shape as x (no gradient)."""
        if k == 0:
            return x
        flat, chunks = self._chunks(x)
        with torch.no_grad():
            out = torch.cat([self.plan.process.predict(c, k) for c in chunks])
        self.counts.denoiser_calls += flat.shape[0]
        return out.reshape(x.shape)

    def rewards(self, x0: torch.Tensor) -> torch.Tensor:
        """r_j(x0) for every factor: (F, *batch), validated finite."""
        batch = x0.shape[: x0.ndim - self.plan.event_dim]
        flat, chunks = self._chunks(x0)
        with torch.no_grad():
            out = torch.cat([self.plan.rewards(c) for c in chunks], -1)
        self.counts.reward_calls += self.num_factors * flat.shape[0]
        return out.reshape((self.num_factors,) + batch)

    def value(self, rewards: torch.Tensor) -> torch.Tensor:
        """ψ̂ = Σ_j r_j/α_j from rewards (F, *batch): (*batch), float64. With α = 0 (argmax search): Σ_j r_j."""
        r = rewards.to(F64)
        if not self.num_factors:
            return r.new_zeros(r.shape[1:])
        alpha = self.alpha.reshape((-1,) + (1,) * (r.ndim - 1))
        return (r / torch.where(alpha > 0, alpha, torch.ones_like(alpha))).sum(0)

    def state(self, x: torch.Tensor, k: int, with_rewards: bool = True):
        """(x̂_0(x_k), rewards of x̂_0 or ``None``); at level 0 the rewards are the exact r_j(x_0)."""
        x0 = self.predict(x, k)
        return x0, self.rewards(x0) if with_rewards else None

    # -- gradients ----------------------------------------------------------------------------
    def gradient(self, x: torch.Tensor, k: int, through_denoiser: bool = True):
        """(x̂_0(x_k), g): g = ∇_{x_k} ψ̂(x̂_0(x_k)) through the denoiser, or ∇_{x̂_0} ψ̂ at x̂_0 (MPGD).

        Raises :class:`~tilted.errors.ModelError` when the rewards give no gradient.
        """
        if not self.num_factors:
            x0 = self.predict(x, k)
            return x0, torch.zeros_like(x)
        flat, chunks = self._chunks(x)
        if not through_denoiser:
            x0 = self.predict(x, k)
            flat, chunks = self._chunks(x0)
        x0s, grads = [], []
        for chunk in chunks:
            with torch.enable_grad():
                leaf = chunk.detach().requires_grad_(True)
                pred = self.plan.process.predict(leaf, k) if through_denoiser and k > 0 else leaf
                psi = self.value(self.plan.rewards(pred))
                if not psi.requires_grad:
                    raise ModelError(
                        f"gradient guidance needs rewards differentiable in x; {[f.name for f in self.plan.factors]} "
                        "gave no gradient. Use a derivative-free engine (SVDD, BeamSearch, BestOfN, NestedIS, SMC "
                        "with proposal='prior')"
                    )
                (g,) = torch.autograd.grad(psi.sum(), leaf)
            x0s.append(pred.detach())
            grads.append(g.to(x.dtype))
        n = flat.shape[0]
        if through_denoiser and k > 0:
            self.counts.denoiser_calls += n
        self.counts.reward_calls += self.num_factors * n
        self.counts.gradient_evaluations += n
        x0 = x0 if not through_denoiser else torch.cat(x0s).reshape(x.shape)
        return x0, torch.cat(grads).reshape(x.shape)
