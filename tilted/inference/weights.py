"""Log-space weight arithmetic. Weights never leave log space; the last dimension indexes particles."""

from __future__ import annotations

import math

import torch


def normalize(log_weights: torch.Tensor) -> torch.Tensor:
    """log W_i = log w_i − log Σ_j w_j along the last dimension."""
    return log_weights - torch.logsumexp(log_weights, -1, keepdim=True)


def ess(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size (Σ w)² / Σ w², in [1, N], from unnormalised log weights."""
    return torch.exp(2 * torch.logsumexp(log_weights, -1) - torch.logsumexp(2 * log_weights, -1))


def log_mean_exp(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/N) Σ_i w_i along the last dimension."""
    return torch.logsumexp(log_weights, -1) - math.log(log_weights.shape[-1])
