"""Tempering schedules λ for the intermediate potentials ψ_k = λ_k · r(x̂_0(x_k)) / α.

Steps are counted i = 0, …, K from the initial level (i = K − k). A schedule gives λ_i ∈ [0, 1];
the last level always has λ = 1, so the final weight uses the exact reward and the target is
exact whatever the schedule (the ψ telescope: intermediate λ only change variance).

``Adaptive`` chooses the next λ during a run, by bisection, through the very function the engine
uses to compute the incremental weights.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from tilted.errors import ModelError


class Tempering(abc.ABC):
    """A tempering schedule. Fixed schedules implement :meth:`lambdas`; adaptive ones :meth:`solve`."""

    adaptive: bool = False

    def lambdas(self, num_steps: int) -> torch.Tensor:
        """λ_i for i = 0, …, K (float64, length K + 1), with λ_K = 1."""
        i = torch.arange(num_steps + 1, dtype=torch.float64)
        lam = self._ramp(i, num_steps).clamp(0.0, 1.0)
        lam[-1] = 1.0
        return lam

    @abc.abstractmethod
    def _ramp(self, i: torch.Tensor, num_steps: int) -> torch.Tensor: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Tempering):
    """No tempering: λ ≡ 1 (the full reward twists from the first step)."""

    def _ramp(self, i, num_steps):
        return torch.ones_like(i)


class Linear(Tempering):
    """λ_i = min(i / (until · K), 1): a straight ramp reaching 1 after a fraction ``until`` of the steps."""

    def __init__(self, until: float = 1.0):
        if not 0 < until <= 1:
            raise ModelError(f"Linear(until=...) must be in (0, 1], got {until}")
        self.until = float(until)

    def _ramp(self, i, num_steps):
        return i / (self.until * num_steps)


class Exponential(Tempering):
    """λ_i = min((1 + γ)^i − 1, 1), the DAS schedule (Kim et al. 2025; γ = 0.008 at 100 steps)."""

    def __init__(self, gamma: float = 0.008):
        if not (math.isfinite(gamma) and gamma > 0):
            raise ModelError(f"Exponential(gamma=...) must be a positive number, got {gamma}")
        self.gamma = float(gamma)

    def _ramp(self, i, num_steps):
        return torch.expm1(i * math.log1p(self.gamma))


class Adaptive(Tempering):
    """Choose each next λ ∈ [λ_prev, 1] as large as keeps a fraction ``target_ess`` of the ESS.

    With W the current normalised weights and w(λ) the incremental weight at the candidate λ, the
    chosen λ is the largest (to ``tol``) with ESS(W · w(λ)) ≥ target_ess · ESS(W · w(λ_prev)).
    λ_prev always qualifies, so the bisection is well posed; the last level is forced to λ = 1.

    On a diffusion chain the Tweedie value r(x̂_0(x_k)) barely varies between particles at high
    noise, so early increments cost no ESS at any λ and the rule admits λ = 1 after the first step;
    λ never decreases, so the run then equals no tempering (measured on the DAS ring toy,
    docs/benchmarks.md). Use a fixed schedule (``Exponential``) to delay the tilt deliberately.
    """

    adaptive = True

    def __init__(self, target_ess: float = 0.5, tol: float = 1e-4, max_iter: int = 40):
        if not 0 < target_ess < 1:
            raise ModelError(f"Adaptive(target_ess=...) must be in (0, 1), got {target_ess}")
        self.target_ess = float(target_ess)
        self.tol = float(tol)
        self.max_iter = int(max_iter)

    def _ramp(self, i, num_steps):
        raise ModelError("an Adaptive schedule has no fixed λ: it is chosen by the engine during a run")

    def solve(
        self,
        log_weights: Callable[[torch.Tensor], torch.Tensor],
        lam_prev: torch.Tensor,
    ) -> torch.Tensor:
        """Next λ per run. ``log_weights(λ)`` maps λ of shape (R,) to unnormalised log weights (R, N)."""
        from tilted.inference.weights import ess

        lo = lam_prev.clone()
        hi = torch.ones_like(lo)
        floor = self.target_ess * ess(log_weights(lo))
        done = ess(log_weights(hi)) >= floor
        lo = torch.where(done, hi, lo)
        for _ in range(self.max_iter):
            if bool(((hi - lo) <= self.tol).all()):
                break
            mid = 0.5 * (lo + hi)
            ok = ess(log_weights(mid)) >= floor
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        return lo


def as_tempering(schedule: Tempering | str | None) -> Tempering:
    """Coerce ``None``/``"none"`` to :class:`Constant`, names to default instances."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Tempering):
        return schedule
    names = {"none": Constant, "constant": Constant, "linear": Linear, "exponential": Exponential, "adaptive": Adaptive}
    if isinstance(schedule, str) and schedule in names:
        return names[schedule]()
    raise ModelError(f"tempering must be a tilted.tempering.Tempering or one of {sorted(names)}, got {schedule!r}")
