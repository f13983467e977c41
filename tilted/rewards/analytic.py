"""Analytic rewards: quadratics (whose tilts of Gaussian laws are known in closed form) and log-densities."""

from __future__ import annotations

import torch

from tilted.errors import ModelError, ShapeError
from tilted.rewards.base import Reward


class Quadratic(Reward):
    """r(x) = xᵀ A x + bᵀ x + c over the last dimension of x (A symmetric).

    A Gaussian N(m, S) tilted by exp(r/α) is Gaussian again when S⁻¹ − 2A/α ≻ 0 (see
    :mod:`tilted.reference`). ``Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0])))`` is the DAS
    toy reward −x²/100 − y².
    """

    def __init__(self, A=None, b=None, c: float = 0.0, dim: int | None = None):
        if A is None and b is None and dim is None:
            raise ShapeError("give A, b or dim so that the dimension of the reward is known")
        if dim is None:
            dim = torch.as_tensor(A if A is not None else b).shape[-1]
        f64 = torch.float64  # lists are read straight into float64 (no float32 rounding on the way)
        A = torch.zeros(dim, dim, dtype=f64) if A is None else torch.as_tensor(A, dtype=f64)
        b = torch.zeros(dim, dtype=f64) if b is None else torch.as_tensor(b, dtype=f64)
        if A.shape != (dim, dim) or b.shape != (dim,):
            raise ShapeError(
                f"Quadratic reward: A must be ({dim}, {dim}) and b ({dim},), got {tuple(A.shape)}, {tuple(b.shape)}"
            )
        self.A = (0.5 * (A + A.T)).to(torch.float64)
        self.b = b.to(torch.float64)
        self.c = float(c)

    @classmethod
    def linear(cls, b, c: float = 0.0) -> Quadratic:
        """r(x) = bᵀ x + c."""
        return cls(b=b, c=c)

    @property
    def dim(self) -> int:
        return self.b.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ShapeError(f"Quadratic reward of dimension {self.dim} got x of shape {tuple(x.shape)}")
        A, b = self.A.to(x.dtype), self.b.to(x.dtype)
        return ((x @ A) * x).sum(-1) + x @ b + self.c

    def __repr__(self) -> str:
        return f"Quadratic(A={self.A.tolist()}, b={self.b.tolist()}, c={self.c})"


class LogDensity(Reward):
    """r(x) = log q(x) for a torch distribution q (``q.log_prob(x)``).

    Tilting p_θ by exp(log q / α) targets p_θ · q^{1/α}: at α = 1 the product of the pretrained law with
    q (for example a Gaussian likelihood of observations). Input: values of q's event shape with any
    batch shape broadcasting against q's; output: ``q.log_prob(x)``. Differentiable in x when q is
    continuous (its support is not discrete).
    """

    def __init__(self, dist: torch.distributions.Distribution):
        if not isinstance(dist, torch.distributions.Distribution):
            raise ModelError(f"LogDensity takes a torch.distributions.Distribution, got {type(dist).__name__}")
        self.dist = dist
        self.differentiable = not getattr(dist.support, "is_discrete", False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        event = self.dist.event_shape
        if x.shape[x.ndim - len(event) :] != event:
            raise ShapeError(f"LogDensity of event shape {tuple(event)} got x of shape {tuple(x.shape)}")
        return self.dist.log_prob(x)

    def __repr__(self) -> str:
        return f"LogDensity({self.dist!r})"
