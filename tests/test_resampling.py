"""Resampling schemes: offspring-count properties, checked exactly or against derived MC bounds."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilted.inference import resampling as rs
from tilted.inference.weights import ess, log_mean_exp, normalize

SCHEMES = sorted(rs.RESAMPLERS)


def counts_of(ancestors, n):
    return torch.zeros(ancestors.shape[0], n, dtype=torch.long).scatter_add_(-1, ancestors, torch.ones_like(ancestors))


log_weight_rows = st.lists(st.one_of(st.floats(-30, 5), st.just(-math.inf)), min_size=1, max_size=24).filter(
    lambda v: any(math.isfinite(x) for x in v)
)


@pytest.mark.parametrize("name", SCHEMES)
@given(lw=log_weight_rows, seed=st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_offspring_counts(name, lw, seed):
    lw = torch.tensor([lw], dtype=torch.float64)
    n = lw.shape[-1]
    anc = rs.RESAMPLERS[name](lw, torch.Generator().manual_seed(seed))
    assert anc.shape == lw.shape and anc.dtype == torch.long
    c = counts_of(anc, n)[0]
    assert int(c.sum()) == n
    expected = n * torch.softmax(lw[0], -1)
    assert (c[expected == 0] == 0).all(), "a zero-weight particle was drawn"
    if name in ("systematic", "ssp"):
        assert (c >= expected.floor() - 1e-9).all() and (c <= expected.ceil() + 1e-9).all()
    if name == "residual":
        assert (c >= expected.floor() - 1e-9).all()


@pytest.mark.parametrize("name", SCHEMES)
def test_expected_counts_are_unbiased(name):
    # 3 runs × 7 particles, M = 4000 repetitions. Each count lies in [0, 7], so its standard deviation
    # is at most 3.5 and the s.e. of its mean at most 3.5/√M = 0.055. We allow 5 s.e. for each of the
    # 21 counts (family-wise false-alarm rate < 21 · 6e-7).
    gen = torch.Generator().manual_seed(0)
    lw = torch.randn(3, 7, generator=gen, dtype=torch.float64) * 2
    lw[0, 2] = -math.inf
    M = 4000
    total = torch.zeros(3, 7, dtype=torch.float64)
    sq = torch.zeros(3, 7, dtype=torch.float64)
    for _ in range(M):
        c = counts_of(rs.RESAMPLERS[name](lw, gen), 7).double()
        total += c
        sq += c**2
    mean = total / M
    se = ((sq / M - mean**2).clamp_min(0) / M).sqrt()
    expected = 7 * torch.softmax(lw, -1)
    assert ((mean - expected).abs() <= 5 * se + 1e-12).all()


def test_batched_runs_are_independent_rows():
    lw = torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 0.0]])
    for name in SCHEMES:
        anc = rs.RESAMPLERS[name](lw, torch.Generator().manual_seed(1))
        assert (anc[0] == 0).all() and (anc[1] == 2).all()


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=50))
def test_ess_between_one_and_n(lw):
    lw = torch.tensor(lw, dtype=torch.float64)
    e = float(ess(lw))
    assert 1 - 1e-9 <= e <= len(lw) + 1e-9
    assert torch.allclose(normalize(lw).exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_ess_uniform_and_log_mean_exp():
    lw = torch.full((5,), 3.0, dtype=torch.float64)
    assert float(ess(lw)) == pytest.approx(5)
    assert float(log_mean_exp(lw)) == pytest.approx(3.0)


def test_unknown_resampler():
    with pytest.raises(ValueError, match="unknown resampler"):
        rs.get_resampler("nope")
