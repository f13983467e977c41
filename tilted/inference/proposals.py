"""Proposals for a Gaussian move x_k → x_{k-1}, with their exact log-density ratio.

The prior kernel is p = N(μ, σ²I). The gradient-guided ("locally optimal", TDS/DAS) proposal is
q = N(μ + σ² g, σ²I), g = ∇ψ_{k-1} at x_k: the first-order approximation of p · exp(ψ_{k-1}).
For a draw x' = μ + σ²g + σε,

    log p(x') − log q(x') = (‖x' − μ − σ²g‖² − ‖x' − μ‖²) / (2σ²),

summed over the event dimensions. With g = 0 this is the prior (bootstrap) proposal, ratio 0.
"""

from __future__ import annotations

import torch

PROPOSALS = ("prior", "gradient")


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
        return mean + noise, torch.zeros(batch, dtype=torch.float64, device=mean.device)
    shift = sigma**2 * drift.to(mean.dtype)
    x = mean + shift + noise
    dims = tuple(range(mean.ndim - event_dim, mean.ndim))
    n, d = noise.to(torch.float64), (noise + shift).to(torch.float64)
    log_ratio = ((n**2).sum(dims) - (d**2).sum(dims)) / (2 * sigma**2)
    return x, log_ratio
