"""Resampling schemes: ancestor indices from normalised log weights, batched over independent runs.

Every scheme is unbiased: the expected number of offspring of particle i is N·W_i. Systematic and
SSP offspring counts lie within ⌊N·W_i⌋ and ⌈N·W_i⌉ (Gerber, Chopin & Whiteley 2019); residual
counts are at least ⌊N·W_i⌋; stratified and multinomial counts have no such bounds. Zero-weight particles are never drawn.

Each function maps log weights of shape (R, N) and a generator to ancestors (R, N) of dtype long.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Resampler = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _weights(log_weights: torch.Tensor) -> torch.Tensor:
    return torch.softmax(log_weights.to(torch.float64), -1)


def _inverse_cdf(weights: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Ancestors a_j = min{i : Σ_{l≤i} W_l > u_j} for sorted positions u ∈ [0, 1)."""
    cdf = weights.cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    idx = torch.searchsorted(cdf, positions.contiguous(), right=True)
    return idx.clamp_max(weights.shape[-1] - 1)


def _from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Ancestor indices (sorted) from offspring counts that sum to N in every run."""
    n = counts.shape[-1]
    ends = counts.cumsum(-1)
    slots = torch.arange(n, device=counts.device).expand_as(counts).contiguous()
    return torch.searchsorted(ends, slots, right=True)


def multinomial(log_weights, generator=None):
    """N independent draws from the categorical law W."""
    w = _weights(log_weights)
    return torch.multinomial(w.reshape(-1, w.shape[-1]), w.shape[-1], replacement=True, generator=generator).reshape(
        w.shape
    )


def stratified(log_weights, generator=None):
    """One uniform in each stratum [j/N, (j+1)/N)."""
    w = _weights(log_weights)
    n = w.shape[-1]
    u = torch.rand(w.shape, dtype=w.dtype, generator=generator, device=w.device)
    return _inverse_cdf(w, (torch.arange(n, dtype=w.dtype, device=w.device) + u) / n)


def systematic(log_weights, generator=None):
    """One uniform shared by all strata: positions (U + j)/N."""
    w = _weights(log_weights)
    n = w.shape[-1]
    u = torch.rand(w.shape[:-1] + (1,), dtype=w.dtype, generator=generator, device=w.device)
    return _inverse_cdf(w, (torch.arange(n, dtype=w.dtype, device=w.device) + u) / n)


def residual(log_weights, generator=None):
    """⌊N·W_i⌋ deterministic copies, the remaining draws multinomial on the residual weights."""
    w = _weights(log_weights)
    n = w.shape[-1]
    nw = n * w
    counts = nw.floor()
    rest = nw - counts
    left = (n - counts.sum(-1)).round().long()  # (R,)
    flat = rest.reshape(-1, n)
    safe = torch.where(flat.sum(-1, keepdim=True) > 0, flat, torch.ones_like(flat))
    draws = torch.multinomial(safe, n, replacement=True, generator=generator)  # (R', n)
    keep = torch.arange(n, device=draws.device).expand_as(draws) < left.reshape(-1, 1)
    extra = torch.zeros_like(flat).scatter_add_(-1, draws, keep.to(flat.dtype))
    return _from_counts(counts.long() + extra.reshape(w.shape).long())


def ssp(log_weights, generator=None):
    """Srinivasan sampling process (Gerber, Chopin & Whiteley 2019), as used by DAS.

    Start from the expected counts N·W_i. Repeatedly pair two particles with fractional parts
    p, q ∈ (0, 1): if p + q < 1, one of them (the first with probability p/(p+q)) takes p + q and
    the other 0; otherwise one (the first with probability (1−q)/(2−p−q)) becomes 1 and the other
    p + q − 1. Each pairing preserves expectations and the sum, so counts are unbiased and lie
    within ⌊N·W_i⌋ and ⌈N·W_i⌉. Disjoint pairs are updated in parallel: O(log N) rounds.
    """
    w = _weights(log_weights)
    n = w.shape[-1]
    flat = (n * w).reshape(-1, n)
    base = flat.floor()
    frac = flat - base
    tol = 1e-9
    for _ in range(4 * n.bit_length() + 8):
        is_frac = (frac > tol) & (frac < 1 - tol)
        if not bool((is_frac.sum(-1) >= 2).any()):
            break
        order = torch.argsort((~is_frac).to(torch.int8), dim=-1, stable=True)
        m = n // 2
        i, j = order[:, 0 : 2 * m : 2], order[:, 1 : 2 * m : 2]
        p, q = frac.gather(-1, i), frac.gather(-1, j)
        active = is_frac.gather(-1, i) & is_frac.gather(-1, j)
        u = torch.rand(p.shape, dtype=p.dtype, generator=generator, device=p.device)
        s = p + q
        low = s < 1
        first_low = u < p / s.clamp_min(tol)
        first_high = u < (1 - q) / (2 - s).clamp_min(tol)
        new_p = torch.where(low, torch.where(first_low, s, 0.0), torch.where(first_high, 1.0, s - 1))
        new_q = torch.where(low, torch.where(first_low, 0.0, s), torch.where(first_high, s - 1, 1.0))
        frac = frac.scatter(-1, i, torch.where(active, new_p, p)).scatter(-1, j, torch.where(active, new_q, q))
    counts = (base + frac).round().long()
    # numerical guard: fix the total to N by adjusting the largest count (never triggered in exact arithmetic)
    diff = n - counts.sum(-1)
    if bool((diff != 0).any()):
        top = counts.argmax(-1, keepdim=True)
        counts = counts.scatter_add(-1, top, diff[:, None])
    return _from_counts(counts).reshape(w.shape)


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
    "ssp": ssp,
}


def get_resampler(name: str | Resampler) -> Resampler:
    if callable(name):
        return name
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown resampler {name!r}; choose one of {sorted(RESAMPLERS)}") from None
