"""Values of chain states for guidance and search: denoiser predictions, rewards, ψ̂ and its gradients.

Guidance and search engines score a state x_k at level k by the one-sample value estimate

    ψ̂(x_k) = Σ_j r_j(x̂_0(x_k)) / α_j        (ψ̂(x_0) = Σ_j r_j(x_0)/α_j exactly at level 0),

the log-tilt of the denoiser's prediction (README, Guarantees: v̂_k = r(x̂_0(x_k)), in units of the tilt). For a
masked (discrete) model x̂_0 is a table of per-position probabilities, and ψ̂ is read off *fills*
(clean sequences drawn from x̂_0, :mod:`tilted.inference.discrete`): with ``fill="soft"`` the soft
value log (1/M) Σ_m exp(Σ_j r_j(f_m)/α_j) over M fills (common random numbers per run, as in SMC),
with ``fill="argmax"`` the rewards of the most probable sequence. With every α replaced by 0 (greedy
search) ψ̂ is Σ_j r_j, and over fills its maximum (the α → 0 limit of the soft value estimate).

:class:`Values` evaluates predictions, exact rewards, ψ̂ and the gradients guidance needs —
∇_{x_k} ψ̂(x̂_0(x_k)) through the denoiser (DPS, FreeDoM), ∇_{x̂_0} ψ̂ at the prediction (MPGD), and
for masked models Σ_j ∇_P r_j(P)/α_j at the relaxed input P = x̂_0 (the Taylor tilt) — in
micro-batches of ``batch_size`` particles, and counts every call in one
:class:`~tilted.inference.result.Counts`:

- a denoiser call per particle evaluated at a level k > 0 (level 0 needs none: x̂_0(x_0) = x_0);
- a reward call per factor, particle and fill;
- a gradient evaluation per particle and backward pass: one pass differentiates Σ_j r_j/α_j for
  Gaussian models; masked models differentiate each factor at the relaxed input (F per particle, as SMC).

Every tensor has leading batch dimensions followed by the process's event shape (for masked models
the first batch dimension is the run: fills share their random numbers within a run).
"""

from __future__ import annotations

import torch

from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError
from tilted.inference.discrete import MaskedKernel, fill_potential
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
        α used in ψ̂ = Σ_j r_j/α_j: ``None`` for the factors' own, or one number replacing every α_j
        (0: greedy, ψ̂ = Σ_j r_j).
    generator
        The run's generator (masked models draw their fills' random numbers from it, once per run).
    fill, num_fills
        Masked models: how ψ̂ is read off x̂_0 (module docstring).
    """

    def __init__(
        self,
        plan: Plan,
        counts: Counts,
        batch_size: int | None = None,
        temperatures: float | None = None,
        generator: torch.Generator | None = None,
        fill: str = "soft",
        num_fills: int = 4,
    ):
        self.plan = plan
        self.counts = counts
        self.batch_size = batch_size
        self.generator = generator
        alpha = plan.temperatures if temperatures is None else torch.full((len(plan.factors),), float(temperatures))
        self.alpha = alpha.to(dtype=F64, device=plan.process.device)
        self.greedy = temperatures == 0
        masked = isinstance(plan.process, MaskedDiffusion)
        self.kernel = MaskedKernel(plan.process, fill, num_fills) if masked else None

    @property
    def num_factors(self) -> int:
        return len(self.plan.factors)

    def _chunks(self, x: torch.Tensor):
        """(number of particles, site-layout micro-batches of x) for states x of shape (R, ..., *event)."""
        batch_ndim = x.ndim - self.plan.event_dim
        return x.shape[:batch_ndim].numel(), self.plan.chunks(x, batch_ndim, self.batch_size)

    def _join(self, parts, x: torch.Tensor) -> torch.Tensor:
        """Micro-batch outputs (site layout) back in the engine layout of states x."""
        return self.plan.from_site(torch.cat(parts), x.shape[: x.ndim - self.plan.event_dim])

    def _masked(self, x: torch.Tensor, k: int, with_rewards: bool, with_grads: bool):
        """MaskedKernel.evaluate on x (R, ..., L) seen as (R, n, L): x̂_0, fill rewards, relaxed gradients."""
        R, L = x.shape[0], x.shape[-1]
        x0, rewards, grads = self.kernel.evaluate(
            self.plan, x.reshape(R, -1, L), k, with_rewards, with_grads, self.generator, self.counts, self.batch_size
        )
        return x0.reshape(x.shape + x0.shape[-1:]), rewards, grads

    # -- plain evaluations ----------------------------------------------------------------------
    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0(x_k) (no gradient): same shape as x, or (..., L, V) probabilities for a masked model."""
        if k == 0:
            return x
        if self.kernel is not None:
            return self._masked(x, k, False, False)[0]
        n, chunks = self._chunks(x)
        with torch.no_grad():
            out = self._join([self.plan.process.predict(c, k) for c in chunks], x)
        self.counts.denoiser_calls += n
        return out

    def rewards(self, x: torch.Tensor) -> torch.Tensor:
        """Exact r_j(x) of clean states for every factor: (F, *batch), validated finite."""
        batch_ndim = x.ndim - self.plan.event_dim
        out = self.plan.rewards_at(x, batch_ndim, self.batch_size)
        self.counts.reward_calls += self.num_factors * x.shape[:batch_ndim].numel()
        return out

    def score(self, rewards: torch.Tensor) -> torch.Tensor:
        """Σ_j r_j/α_j over the factor dimension of rewards (F, ...), float64 (greedy: Σ_j r_j)."""
        r = rewards.to(F64)
        if self.greedy or not self.num_factors:
            return r.sum(0)
        return (r / self.alpha.reshape((-1,) + (1,) * (r.ndim - 1))).sum(0)

    def state(self, x: torch.Tensor, k: int, with_value: bool = True):
        """(x̂_0(x_k), ψ̂(x_k) or ``None``, exact rewards at level 0 or ``None``) for states x at level k."""
        if k == 0:
            rewards = self.rewards(x)
            return x, self.score(rewards), rewards
        if self.kernel is None:
            x0 = self.predict(x, k)
            return x0, self.score(self.rewards(x0)) if with_value else None, None
        x0, fills, _ = self._masked(x, k, with_value, False)
        if not with_value:
            return x0, None, None
        if self.greedy:
            value = self.score(fills).amax(-1)
        else:
            value = fill_potential(fills, torch.ones(fills.shape[:2], dtype=F64, device=fills.device), self.alpha)
        return x0, value.reshape(x.shape[:-1]), None

    # -- gradients ----------------------------------------------------------------------------
    def gradient(self, x: torch.Tensor, k: int, through_denoiser: bool = True):
        """(x̂_0(x_k), g): g = ∇_{x_k} ψ̂(x̂_0(x_k)) through the denoiser, or ∇_{x̂_0} ψ̂ at x̂_0 (MPGD).

        Raises :class:`~tilted.errors.ModelError` when the rewards give no gradient.
        """
        if not self.num_factors:
            x0 = self.predict(x, k)
            return x0, torch.zeros_like(x)
        n, chunks = self._chunks(x)
        if not through_denoiser:
            x0 = self.predict(x, k)
            n, chunks = self._chunks(x0)
        x0s, grads = [], []
        for chunk in chunks:
            with torch.enable_grad():
                leaf = chunk.detach().requires_grad_(True)
                pred = self.plan.process.predict(leaf, k) if through_denoiser and k > 0 else leaf
                psi = self.score(self.plan.rewards(pred))
                if not psi.requires_grad:
                    raise ModelError(
                        f"gradient guidance needs rewards differentiable in x; {[f.name for f in self.plan.factors]} "
                        "gave no gradient. Use a derivative-free engine (SVDD, BeamSearch, BestOfN, NestedIS, SMC "
                        "with proposal='prior')"
                    )
                (g,) = torch.autograd.grad(psi.sum(), leaf)
            x0s.append(pred.detach())
            grads.append(g.to(x.dtype))
        if through_denoiser and k > 0:
            self.counts.denoiser_calls += n
        self.counts.reward_calls += self.num_factors * n
        self.counts.gradient_evaluations += n
        x0 = x0 if not through_denoiser else self._join(x0s, x)
        return x0, self._join(grads, x)

    def relaxed_gradient(self, x: torch.Tensor, k: int):
        """Masked models: (x̂_0(x_k), g) with g = Σ_j ∇_P r_j(P)/α_j at P = x̂_0(x_k), (..., L, V) float64."""
        try:
            x0, _, grads = self._masked(x, k, False, self.num_factors > 0)
        except ModelError as err:
            raise ModelError(
                f"discrete gradient guidance differentiates the rewards at relaxed inputs: {err}. Or use a "
                "derivative-free engine (SVDD, BeamSearch, BestOfN, NestedIS)"
            ) from err
        if not self.num_factors:
            return x0, torch.zeros_like(x0)
        coef = (1 / self.alpha).reshape((-1,) + (1,) * (grads.ndim - 1))
        return x0, (coef * grads).sum(0).reshape(x0.shape)
