"""Intermediate log-potentials ψ_k of the Feynman–Kac system.

Every engine weights a move x_k → x_{k-1} by exp(ψ_{k-1} − ψ_k) (times p/q), and imposes the exact
terminal potential ψ_0 = Σ_j r_j(x_0)/α_j. The product telescopes, so the target is exact for any
choice below: ψ only shapes the variance. With φ_k = Σ_j λ_{j,k} r_j(x̂_0(x_k))/α_j:

- ``Tweedie`` (default; FK steering's "difference" potential): ψ_k = φ_k;
- ``Max`` (FK steering): ψ_k = max(ψ_{k+1}, φ_k), the best value seen along the path;
- ``Sum`` (FK steering): ψ_k = ψ_{k+1} + φ_k, the accumulated value along the path;
- ``Terminal``: ψ_k = 0 before the end (importance sampling: no intermediate reward calls);
- ``Twist(fn)``: ψ_k = fn(x_k, k), a user-supplied (e.g. learned or exact) soft value.

The sum potential tilts the particles by about exp(K·r/α) before the final correction
exp(r/α − Σ_k φ_k); for concave rewards that correction can have infinite variance (for
r = −a‖x‖², once (K − 2)·a/α exceeds 1/(2 Var x)). It stays consistent, but its error bars do not
hold: prefer Tweedie or Max unless you know the weights are well behaved.

Path-dependent potentials (max, sum) keep ψ itself as their state, and ψ is gathered with the
particles at resampling, so no other bookkeeping is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tilted.errors import ModelError


class Potential:
    """ψ_k from the previous ψ and φ_k (see module docstring)."""

    #: whether φ_k (Tweedie rewards r(x̂_0(x_k))) is needed at every level
    uses_rewards: bool = True

    def start(self, phi: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_K at the initial level."""
        return phi

    def advance(self, psi: torch.Tensor, phi: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_k given ψ_{k+1} (gathered along the path) and φ_k."""
        return phi

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tweedie(Potential):
    """ψ_k = Σ_j λ_{j,k} r_j(x̂_0(x_k)) / α_j (DAS, TDS; FK steering's "difference")."""


class Max(Potential):
    """ψ_k = max over the path so far of φ (FK steering's "max" potential)."""

    def advance(self, psi, phi, x, k):
        return torch.maximum(psi, phi)


class Sum(Potential):
    """ψ_k = Σ over the path so far of φ (FK steering's "sum" potential)."""

    def advance(self, psi, phi, x, k):
        return psi + phi


class Terminal(Potential):
    """ψ_k = 0 for k > 0: only the exact terminal reward weights the particles (importance sampling)."""

    uses_rewards = False

    def start(self, phi, x, k):
        return x.new_zeros(x.shape[:2], dtype=torch.float64)

    def advance(self, psi, phi, x, k):
        return torch.zeros_like(psi)


class Twist(Potential):
    """ψ_k = fn(x_k, k): a user-supplied twist, e.g. an exact or learned soft value v_k/α.

    ``fn(x, k)`` maps states of shape (..., *event) at level k to one log-potential per particle.
    With the gradient proposal its gradient ∇_x fn(x_k, k − 1) sets the drift.
    """

    uses_rewards = False

    def __init__(self, fn: Callable[[torch.Tensor, int], torch.Tensor]):
        if not callable(fn):
            raise ModelError("Twist(fn): fn must be callable as fn(x, k)")
        self.fn = fn

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        out = self.fn(x, k)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape[:2]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"twist returned {got} for states of shape {tuple(x.shape)}; return one value per particle"
            )
        return out.to(torch.float64)

    def start(self, phi, x, k):
        return self(x, k)

    def advance(self, psi, phi, x, k):
        return self(x, k)

    def gradient(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """∇_x fn(x, k) for every particle."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.fn(xg, k)
            if not out.requires_grad:
                raise ModelError("the twist is not differentiable in x; use proposal='prior'")
            return torch.autograd.grad(out.sum(), xg)[0]


POTENTIALS = {"tweedie": Tweedie, "difference": Tweedie, "max": Max, "sum": Sum, "terminal": Terminal}


def as_potential(potential: Potential | str | Callable) -> Potential:
    if isinstance(potential, Potential):
        return potential
    if isinstance(potential, str):
        if potential not in POTENTIALS:
            raise ModelError(f"unknown potential {potential!r}; use one of {sorted(POTENTIALS)} or Twist(fn)")
        return POTENTIALS[potential]()
    if callable(potential):
        return Twist(potential)
    raise ModelError(f"potential must be a name, a Potential or a callable fn(x, k), got {type(potential).__name__}")
