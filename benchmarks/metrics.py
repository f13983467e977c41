"""Sample-quality metrics: exact optimal transport (EMD), MMD, and summaries with standard errors.

- EMD: the exact Wasserstein-1 distance between two empirical laws with uniform weights,
  ``ot.emd2`` on the Euclidean ground distance (network simplex, no entropic smoothing).
  Between n and n points it is biased upwards by sampling noise; the **floor** is the same
  statistic between two independent exact draws of the same size.
- MMD²: the unbiased U-statistic with the Gaussian kernel k(x, y) = exp(−‖x − y‖²/(2h²)); the
  bandwidth h is fixed per task (median pairwise distance of exact target draws) and stated.
  Between two draws of the same law it is 0 in expectation (and can be negative).
- Total variation (discrete): ½ Σ_s |p̂(s) − p(s)| between the empirical law of the points and the
  exact law over the V^L sequences (`tilted.reference.total_variation`); its floor is the same statistic for exact draws of the same size.
- Weighted moments (linear-Gaussian): per run, the self-normalised mean m̂ = Σ W_i x_i and
  covariance Ĉ = Σ W_i (x_i − m̂)(x_i − m̂)ᵀ; errors ‖m̂ − m‖_{C⁻¹} (Mahalanobis) and
  ‖Ĉ − C‖_F / ‖C‖_F, averaged over runs.
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch

F64 = torch.float64


def emd(x: torch.Tensor, y: torch.Tensor, cost=torch.cdist) -> float:
    """Exact EMD (W₁) between the uniform empirical laws of x (n, d) and y (m, d)."""
    M = cost(x.to(F64), y.to(F64)).numpy()
    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    value, log = ot.emd2(a, b, M, numItermax=50_000_000, log=True)
    if log.get("result_code", 1) != 1:  # 1 = optimal
        raise RuntimeError(f"ot.emd2 did not reach the optimum: {log.get('warning')}")
    return float(value)


def median_bandwidth(x: torch.Tensor, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance of (up to ``max_points`` of) x."""
    x = x[:max_points].to(F64)
    d = torch.cdist(x, x)
    return float(d[torch.triu_indices(len(x), len(x), 1).unbind()].median())


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD² with the Gaussian kernel of bandwidth h."""
    x, y = x.to(F64), y.to(F64)

    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth**2))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * k(x, y).mean())


def mean_se(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of a list of numbers (s.e. NaN for fewer than two)."""
    t = torch.as_tensor(list(values), dtype=F64)
    if t.numel() == 0:
        return math.nan, math.nan
    se = float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else math.nan
    return float(t.mean()), se


def weighted_moment_errors(particles, log_weights, mean, cov) -> tuple[torch.Tensor, torch.Tensor]:
    """Per run: (‖m̂ − m‖_{C⁻¹}, ‖Ĉ − C‖_F/‖C‖_F) of the self-normalised weighted moments.

    ``particles`` (R, N, d), ``log_weights`` (R, N) (any normalisation), ``mean`` (d,), ``cov`` (d, d).
    """
    w = torch.softmax(log_weights.to(F64), -1)
    x = particles.to(F64)
    m_hat = torch.einsum("rn,rnd->rd", w, x)
    dev = x - m_hat[:, None]
    c_hat = torch.einsum("rn,rni,rnj->rij", w, dev, dev)
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, (m_hat - mean).unsqueeze(-1), upper=False).squeeze(-1)
    mean_err = z.norm(dim=-1)
    cov_err = torch.linalg.matrix_norm(c_hat - cov) / torch.linalg.matrix_norm(cov)
    return mean_err, cov_err
