"""Small model factories for run specifications, documentation and tests (exact denoisers, no weights).

``model = "tilted.diagnostics.toys:das_toy"`` in a TOML specification builds the DAS Figure-1 toy.
"""

from __future__ import annotations

import pyro
import torch

import tilted
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.rewards import Quadratic
from tilted.tempering import as_tempering

__all__ = ["das_toy", "linear_gaussian"]


def das_toy(num_steps: int = 100, temperature: float = 1.0, tempering: str | None = None, eta: float = 1.0):
    """The DAS Figure-1 toy: 9 Gaussians on {−4, 0, 4}² (covariance 0.3·I), r(x, y) = −x²/100 − y²."""
    grid = torch.tensor([-4.0, 0.0, 4.0])
    prior = GaussianDiffusion(data=GaussianMixture(torch.cartesian_prod(grid, grid), 0.3), num_steps=num_steps, eta=eta)
    reward = Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0])))
    schedule = as_tempering(tempering)

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("r", reward, x, temperature=temperature, tempering=schedule)

    return model


def linear_gaussian(
    dim: int = 2, slope: float = 1.0, temperature: float = 1.0, num_steps: int = 10, tempering: str | None = "linear"
):
    """N(0, I) data in ``dim`` dimensions tilted by the linear reward r(x) = slope · Σ_i x_i (an easy target)."""
    prior = GaussianDiffusion(data=GaussianMixture(torch.zeros(1, dim), 1.0), num_steps=num_steps)
    reward = Quadratic.linear([slope] * dim)
    schedule = as_tempering(tempering)

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("r", reward, x, temperature=temperature, tempering=schedule)

    return model
