"""Tests of the closed-form references in :mod:`tilted.reference`.

Statistical checks use fixed generators and tolerances of k Monte-Carlo standard errors (s.e.). For a
standard normal z, P(|z| > 4.5) = 6.8e-6 and P(|z| > 5) = 5.7e-7; each test states how many
comparisons it makes, so the family-wise false-alarm rate (Bonferroni: comparisons × per-check rate)
is below 1 % everywhere, and the generators are fixed, so a pass is reproducible.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import integrate

from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.errors import ModelError, NoDensityError, ShapeError
from tilted.reference import (
    LinearGaussianChain,
    chain_data_distance,
    chain_data_kl_table,
    gaussian_kl,
    gaussian_log_expectation,
    tilt_gaussian,
    tilt_mixture,
)
from tilted.rewards import Quadratic

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_spd(d: int, g: torch.Generator, jitter: float = 0.1) -> torch.Tensor:
    w = torch.randn(d, d, dtype=F64, generator=g)
    return w @ w.T / d + jitter * torch.eye(d, dtype=F64)


def reward_2d() -> Quadratic:
    return Quadratic(A=[[-0.5, 0.2], [0.2, -0.3]], b=[0.7, -1.0], c=0.4)


# -- gaussian_log_expectation -----------------------------------------------------------------------
@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    a=st.floats(-2.0, 0.5),
    b=st.floats(-2.0, 2.0),
    c=st.floats(-1.0, 1.0),
    m=st.floats(-3.0, 3.0),
    s=st.floats(0.05, 2.0),
    alpha=st.floats(0.3, 3.0),
)
def test_log_expectation_1d_matches_quadrature(a, b, c, m, s, alpha):
    assume(1 - 2 * a * s**2 / alpha > 0.05)
    reward = Quadratic(A=torch.tensor([[a]], dtype=F64), b=torch.tensor([b], dtype=F64), c=c)

    def integrand(x):
        return math.exp(-0.5 * ((x - m) / s) ** 2 + (a * x * x + b * x + c) / alpha) / (s * math.sqrt(2 * math.pi))

    value, err = integrate.quad(integrand, -np.inf, np.inf, epsabs=0, epsrel=1e-11, limit=200)
    got = gaussian_log_expectation(torch.tensor([m], dtype=F64), torch.tensor([[s * s]], dtype=F64), reward, alpha)
    assert got.dtype == F64 and got.shape == ()
    assert float(got) == pytest.approx(math.log(value), abs=1e-8)


def test_log_expectation_3d_matches_monte_carlo():
    g = gen(0)
    d, n = 3, 400_000
    mean, cov = torch.tensor([0.5, -1.0, 2.0], dtype=F64), random_spd(d, g)
    reward = Quadratic(A=-0.2 * torch.eye(d) + 0.05, b=[0.3, 0.1, -0.2], c=-0.3)
    x = mean + torch.randn(n, d, dtype=F64, generator=g) @ torch.linalg.cholesky(cov).T
    w = torch.exp(reward(x))
    # log of a mean: s.e.(log Ẑ) ≈ std(w) / (√n mean(w)) by the delta method; one comparison at 5 s.e.
    se = float(w.std() / (math.sqrt(n) * w.mean()))
    assert float(gaussian_log_expectation(mean, cov, reward, 1.0)) == pytest.approx(float(w.mean().log()), abs=5 * se)


def test_log_expectation_batches_means_and_covariances():
    g = gen(1)
    reward = reward_2d()
    means = torch.randn(4, 3, 2, dtype=F64, generator=g)
    cov = random_spd(2, g)
    got = gaussian_log_expectation(means, cov, reward, 1.5)
    assert got.shape == (4, 3)
    for i, j in itertools.product(range(4), range(3)):
        assert float(got[i, j]) == pytest.approx(float(gaussian_log_expectation(means[i, j], cov, reward, 1.5)))
    covs = torch.stack([random_spd(2, g) for _ in range(3)])
    got = gaussian_log_expectation(means, covs, reward, 1.5)  # (4, 3, 2) with (3, 2, 2)
    assert float(got[2, 1]) == pytest.approx(float(gaussian_log_expectation(means[2, 1], covs[1], reward, 1.5)))


def test_zero_covariance_gives_the_reward_at_the_mean():
    reward, m = reward_2d(), torch.tensor([[0.3, -2.0], [1.0, 1.0]], dtype=F64)
    got = gaussian_log_expectation(m, torch.zeros(2, 2), reward, 2.0)
    torch.testing.assert_close(got, reward(m) / 2.0, rtol=0, atol=1e-14)
    # a zero covariance normalises any tilt, even a convex one
    convex = Quadratic(A=10 * torch.eye(2))
    torch.testing.assert_close(gaussian_log_expectation(m, torch.zeros(2, 2), convex, 0.1), convex(m) / 0.1)


def test_rank_one_covariance_matches_line_quadrature():
    # x = m + s v z, z ~ N(0, 1): the 2-D expectation is a 1-D integral along v
    reward, m = reward_2d(), torch.tensor([0.4, -0.6], dtype=F64)
    v, s, alpha = torch.tensor([0.6, 0.8], dtype=F64), 1.3, 0.8
    cov = s * s * torch.outer(v, v)

    def integrand(z):
        x = m + s * z * v
        return math.exp(float(reward(x)) / alpha - 0.5 * z * z) / math.sqrt(2 * math.pi)

    value, _ = integrate.quad(integrand, -np.inf, np.inf, epsabs=0, epsrel=1e-11)
    assert float(gaussian_log_expectation(m, cov, reward, alpha)) == pytest.approx(math.log(value), abs=1e-8)
    # a convex reward direction outside the support of the Gaussian does not matter
    tilted = Quadratic(A=torch.diag(torch.tensor([5.0, 0.0])), b=[1.0, 1.0])
    got = gaussian_log_expectation(torch.zeros(2), torch.diag(torch.tensor([0.0, 1.0])), tilted, 1.0)
    assert float(got) == pytest.approx(0.5)  # E[exp(z)] = e^{1/2}


def test_non_normalisable_tilts_raise():
    cov = torch.eye(2, dtype=F64)
    with pytest.raises(ModelError, match="not normalisable"):
        gaussian_log_expectation(torch.zeros(2), cov, Quadratic(A=torch.eye(2)), 1.0)
    with pytest.raises(ModelError, match="not normalisable"):  # exactly on the boundary: I − 2A/α = 0
        gaussian_log_expectation(torch.zeros(2), cov, Quadratic(A=0.5 * torch.eye(2)), 1.0)
    with pytest.raises(ModelError, match="not normalisable"):  # indefinite A: one bad direction suffices
        tilt_gaussian(torch.zeros(2), cov, Quadratic(A=torch.diag(torch.tensor([-3.0, 0.6]))), 1.0)
    # the same A at a higher temperature is fine
    assert torch.isfinite(gaussian_log_expectation(torch.zeros(2), cov, Quadratic(A=torch.eye(2)), 3.0))


def test_bad_arguments_raise():
    reward = reward_2d()
    for alpha in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ModelError, match="temperature"):
            gaussian_log_expectation(torch.zeros(2), torch.eye(2), reward, alpha)
    with pytest.raises(ShapeError):
        gaussian_log_expectation(torch.zeros(3), torch.eye(3), reward, 1.0)
    with pytest.raises(ModelError, match="positive semi-definite"):
        gaussian_log_expectation(torch.zeros(2), torch.diag(torch.tensor([1.0, -0.5])), reward, 1.0)
    with pytest.raises(ModelError, match="symmetric"):
        gaussian_log_expectation(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]), reward, 1.0)
    with pytest.raises(ModelError, match="Quadratic"):
        gaussian_log_expectation(torch.zeros(2), torch.eye(2), lambda x: x.sum(-1), 1.0)


# -- tilt_gaussian against grid quadrature ----------------------------------------------------------
def grid_moments(mean, cov, reward, alpha, half_width=12.0, n=1201):
    """Z, mean and covariance of N(mean, cov)·exp(r/α) by the trapezoid rule on a square grid.

    The integrand is a Gaussian, smooth and negligible (< e^-40) at the edges: the rule is
    spectrally accurate, so agreement to ~1e-8 is expected.
    """
    d = mean.shape[0]
    axis = torch.linspace(-half_width, half_width, n, dtype=F64)
    pts = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)
    logw = torch.distributions.MultivariateNormal(mean, cov).log_prob(pts) + reward(pts) / alpha
    w = torch.exp(logw) * (axis[1] - axis[0]) ** d
    z = w.sum()
    mu = (w[:, None] * pts).sum(0) / z
    dev = pts - mu
    return z.log(), mu, (w[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(0) / z


@pytest.mark.parametrize(
    "mean, cov, A, b, alpha",
    [
        ([0.7], [[0.5]], [[-0.4]], [1.1], 0.7),
        ([0.7], [[2.0]], [[0.2]], [-0.5], 1.0),  # convex reward, normalisable: 1 − 2·0.2·2 > 0
        ([1.0, -0.5], [[1.0, 0.4], [0.4, 0.6]], [[-0.5, 0.2], [0.2, -0.3]], [0.7, -1.0], 1.0),
        ([0.0, 1.0], [[0.8, -0.3], [-0.3, 1.5]], [[0.1, 0.0], [0.0, -1.0]], [0.0, 2.0], 2.0),  # indefinite A
    ],
)
def test_tilt_gaussian_matches_grid_quadrature(mean, cov, A, b, alpha):
    mean, cov = torch.tensor(mean, dtype=F64), torch.tensor(cov, dtype=F64)
    reward = Quadratic(A=A, b=b, c=0.3)
    m, S, log_z = tilt_gaussian(mean, cov, reward, alpha)
    # 1-D: the convex case has tilted sd √10 ≈ 3.2 around −1.5, so the grid reaches ±40 (> 12 sd)
    grid = {"half_width": 40.0, "n": 8001} if len(b) == 1 else {"half_width": 12.0, "n": 701}
    ref_log_z, ref_m, ref_S = grid_moments(mean, cov, reward, alpha, **grid)
    assert float(log_z) == pytest.approx(float(ref_log_z), abs=1e-8)
    torch.testing.assert_close(m, ref_m, rtol=0, atol=1e-8)
    torch.testing.assert_close(S, ref_S, rtol=0, atol=1e-8)
    assert float(log_z) == pytest.approx(float(gaussian_log_expectation(mean, cov, reward, alpha)), abs=1e-12)


def test_tilt_gaussian_singular_covariance_stays_on_the_line():
    v = torch.tensor([0.6, 0.8], dtype=F64)
    m, S, _ = tilt_gaussian(torch.zeros(2), 2.0 * torch.outer(v, v), reward_2d(), 1.0)
    perp = torch.tensor([0.8, -0.6], dtype=F64)
    assert abs(float(perp @ m)) < 1e-12 and float((S @ perp).abs().max()) < 1e-12


# -- tilt_mixture against self-normalised importance sampling ---------------------------------------
def test_tilt_mixture_log_prob_identity():
    # tilted(x) = data(x) exp(r(x)/α) / Z for every x: an exact check of weights, components and Z
    g = gen(2)
    data = GaussianMixture(
        torch.randn(3, 2, dtype=F64, generator=g) * 2, torch.stack([random_spd(2, g) for _ in range(3)])
    )
    reward = reward_2d()
    tilted, log_z = tilt_mixture(data, reward, 0.8)
    x = torch.randn(50, 2, dtype=F64, generator=g) * 3
    torch.testing.assert_close(tilted.log_prob(x), data.log_prob(x) + reward(x) / 0.8 - log_z, rtol=0, atol=1e-10)


def test_tilt_mixture_matches_importance_sampling():
    g = gen(3)
    means = torch.tensor(list(itertools.product([-4.0, 0.0, 4.0], repeat=2)), dtype=F64)
    data = GaussianMixture(means, 0.3)
    reward = Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0])), b=[0.5, 0.0])  # DAS toy, shifted
    alpha, n = 2.0, 400_000
    tilted, log_z = tilt_mixture(data, reward, alpha)
    x = data.sample(n, g)
    logw = reward(x) / alpha
    w = torch.softmax(logw, 0)
    # log Ẑ = log mean(e^{r/α}); s.e. ≈ std(e^{r/α})/(√n · mean) (delta method)
    e = torch.exp(logw)
    se_log_z = float(e.std() / (math.sqrt(n) * e.mean()))
    # SNIS estimate of E_tilt[h] is Σ w̄_i h(x_i) with s.e.² ≈ Σ w̄_i² (h(x_i) − ĥ)² (delta method)
    h = torch.cat([x, x[:, [0]] ** 2, x[:, [0]] * x[:, [1]], x[:, [1]] ** 2], 1)
    est = w @ h
    se = ((w[:, None] ** 2) * (h - est) ** 2).sum(0).sqrt()
    m, c = tilted.mean(), tilted.covariance()
    exact = torch.stack([m[0], m[1], c[0, 0] + m[0] ** 2, c[0, 1] + m[0] * m[1], c[1, 1] + m[1] ** 2])
    # 6 comparisons at 5 s.e.: family-wise false-alarm rate 6 × 5.7e-7 ≈ 3e-6
    assert float(log_z) == pytest.approx(float(e.mean().log()), abs=5 * se_log_z)
    assert ((est - exact).abs() <= 5 * se).all(), (est, exact, se)


# -- LinearGaussianChain ----------------------------------------------------------------------------
def make_process(d: int, seed: int, **kwargs) -> GaussianDiffusion:
    g = gen(seed)
    data = GaussianMixture(2 * torch.randn(d, dtype=F64, generator=g), random_spd(d, g))
    return GaussianDiffusion(data=data, **kwargs)


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.5):
    """Sample mean within k s.e. (√(Σ_ii/n)) per coordinate; sample covariance entries within k s.e.

    For Gaussian x the sample covariance Ŝ_ij has variance (Σ_ii Σ_jj + Σ_ij²)/n (to O(1/n²)).
    """
    n = x.shape[0]
    x = x.to(F64)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= k * se_mean).all(), (x.mean(0), mean, se_mean)
    diag = cov.diagonal()
    se_cov = ((diag[:, None] * diag[None, :] + cov**2) / n).sqrt()
    emp = torch.atleast_2d(x.T.cov())
    assert ((emp - cov).abs() <= k * se_cov).all(), (emp, cov, se_cov)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(1, 4),
    schedule=st.sampled_from(["linear", "scaled_linear", "cosine"]),
    num_steps=st.integers(2, 50),
    eta=st.sampled_from([0.5, 1.0]),
    spacing=st.sampled_from(["trailing", "leading", "linspace"]),
    seed=st.integers(0, 2**16),
    level_fraction=st.floats(0.0, 1.0),
)
def test_chain_marginals_match_process_samples(d, schedule, num_steps, eta, spacing, seed, level_fraction):
    # Up to 2 levels × (4 means + 10 covariances) = 28 comparisons at 4.5 s.e. per example, 40 examples:
    # ≤ 1120 × 6.8e-6 ≈ 0.8 % family-wise false-alarm rate (fixed seeds make the outcome reproducible).
    # The chain runs in float32 inside process.sample: rounding (~1e-7 relative) is far below 1 s.e.
    process = make_process(d, seed, num_steps=num_steps, eta=eta, schedule=schedule, timestep_spacing=spacing)
    chain = LinearGaussianChain(process)
    n, g = 4000, gen(seed + 1)
    assert_moments(process.sample((n,), generator=g), *chain.marginal(0))
    level = round(level_fraction * num_steps)
    x = process.draw_initial((n,), g).to(F64)
    for k in range(num_steps, level, -1):
        x = process.draw_transition(x, k, g)
    assert_moments(x, *chain.marginal(level))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("d, num_steps", [(3, 17), (3, 3), (2, 2)])  # K == d once broke a batched solve
def test_chain_steps_are_the_process_transitions(eta, spacing, d, num_steps):
    process = make_process(d, 4, num_steps=num_steps, eta=eta, schedule="cosine", timestep_spacing=spacing)
    chain = LinearGaussianChain(process)
    x = torch.randn(5, d, dtype=F64, generator=gen(5)) * 2
    for k in process.levels:
        M, m, sigma = chain.step(k)
        mean, sd = process.transition_moments(x, k)
        torch.testing.assert_close(x @ M.T + m, mean, rtol=1e-10, atol=1e-10)
        assert sigma == pytest.approx(sd, abs=1e-15)
        assert process.is_deterministic(k) == (sigma == 0)


def test_chain_conditionals_compose_with_marginals():
    process = make_process(3, 6, num_steps=30, eta=0.7)
    chain = LinearGaussianChain(process)
    m0, S0 = chain.marginal(0)
    F, f, S = chain.conditional(0)
    torch.testing.assert_close(F, torch.eye(3, dtype=F64))
    assert f.abs().max() == 0 and S.abs().max() == 0
    assert chain.conditional(1)[2].abs().max() == 0  # ᾱ_0 = 1: the last step is deterministic
    for k in range(process.num_steps + 1):
        F, f, S = chain.conditional(k)
        mk, Sk = chain.marginal(k)
        torch.testing.assert_close(F @ mk + f, m0, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(F @ Sk @ F.T + S, S0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chain.marginal(process.num_steps)[1], torch.eye(3, dtype=F64))


def test_twist_is_exact():
    process = make_process(2, 7, num_steps=20, eta=1.0)
    chain = LinearGaussianChain(process)
    reward, alpha = reward_2d(), 0.5
    psi = chain.twist(reward, alpha)
    x = torch.randn(6, 2, dtype=F64, generator=gen(8)) * 2
    torch.testing.assert_close(psi(x, 0), reward(x) / alpha, rtol=1e-12, atol=1e-12)
    # tower property, exactly: ψ_k(x) = log E[exp ψ_{k-1}(M_k x + m_k + σ_k ε)] (σ_1 = 0 included)
    for k in process.levels:
        M, m, sigma = chain.step(k)
        cov = sigma**2 * torch.eye(2, dtype=F64)
        expected = gaussian_log_expectation(x @ M.T + m, cov, psi.quadratic(k - 1), 1.0)
        torch.testing.assert_close(psi(x, k), expected, rtol=1e-9, atol=1e-9)
    # log Z three ways: the tilted x_0 law, the x_0 marginal, and ψ_K integrated against x_K ~ N(0, I)
    _, _, log_z = chain.tilted(reward, alpha)
    assert float(log_z) == pytest.approx(float(gaussian_log_expectation(*chain.marginal(0), reward, alpha)))
    via_psi = gaussian_log_expectation(torch.zeros(2), torch.eye(2), psi.quadratic(process.num_steps), 1.0)
    assert float(log_z) == pytest.approx(float(via_psi), abs=1e-9)


def test_twist_tower_property_by_monte_carlo():
    process = make_process(2, 9, num_steps=10, eta=1.0)
    chain = LinearGaussianChain(process)
    psi = chain.twist(reward_2d(), 1.0)
    g, n = gen(10), 200_000
    x = torch.randn(2, dtype=F64, generator=g)
    # 3 levels × 1 comparison at 5 s.e. (relative s.e. of a mean of e^ψ, delta method on the log)
    for k in (10, 5, 2):
        e = torch.exp(psi(process.draw_transition(x.expand(n, 2), k, g), k - 1))
        se = float(e.std() / (math.sqrt(n) * e.mean()))
        assert float(e.mean().log()) == pytest.approx(float(psi(x, k)), abs=5 * se)
    # E_{x_K ~ N(0, I)}[exp ψ_K(x_K)] = Z
    e = torch.exp(psi(process.draw_initial((n,), g).to(F64), process.num_steps))
    se = float(e.std() / (math.sqrt(n) * e.mean()))
    assert float(e.mean().log()) == pytest.approx(float(chain.tilted(reward_2d(), 1.0)[2]), abs=5 * se)


def test_twist_is_differentiable_and_keeps_dtype():
    chain = LinearGaussianChain(make_process(2, 11, num_steps=8))
    psi = chain.twist(reward_2d(), 1.0)
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float32, requires_grad=True)
    value = psi(x, 5)
    assert value.dtype == torch.float32 and value.shape == (2,)
    (grad,) = torch.autograd.grad(value.sum(), x)
    q = psi.quadratic(5)
    expected = 2 * x.detach().double() @ q.A + q.b
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ModelError, match="level"):
        psi(x, 9)
    with pytest.raises(ModelError, match="not normalisable"):
        chain.twist(Quadratic(A=10 * torch.eye(2)), 1.0)


def test_chain_tilted_target_matches_importance_sampling_of_the_process():
    process = make_process(2, 12, num_steps=25, eta=1.0)
    chain = LinearGaussianChain(process)
    reward, alpha, n = reward_2d(), 1.0, 100_000
    m, _, log_z = chain.tilted(reward, alpha)
    x = process.sample((n,), generator=13).to(F64)
    logw = reward(x) / alpha
    w, e = torch.softmax(logw, 0), torch.exp(logw)
    est = w @ x
    se = ((w[:, None] ** 2) * (x - est) ** 2).sum(0).sqrt()  # SNIS delta-method s.e.
    se_log_z = float(e.std() / (math.sqrt(n) * e.mean()))
    # 3 comparisons at 5 s.e.
    assert ((est - m).abs() <= 5 * se).all(), (est, m, se)
    assert float(log_z) == pytest.approx(float(e.mean().log()), abs=5 * se_log_z)


def test_chain_sample_and_log_prob():
    chain = LinearGaussianChain(make_process(2, 14, num_steps=12, eta=0.0))
    x = chain.sample(5, generator=0)
    assert x.shape == (5, 2) and x.dtype == F64
    torch.testing.assert_close(x, chain.sample(5, generator=0))
    law = torch.distributions.MultivariateNormal(*chain.marginal(0))
    torch.testing.assert_close(chain.log_prob(x), law.log_prob(x))
    chain._cov[0] = torch.zeros(2, 2, dtype=F64)  # a degenerate x_0 law has no density
    with pytest.raises(NoDensityError):
        chain.log_prob(x)


def test_chain_rejects_what_is_not_linear_gaussian():
    means = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    with pytest.raises(ModelError, match="one Gaussian"):
        LinearGaussianChain(GaussianDiffusion(data=GaussianMixture(means), num_steps=5))
    with pytest.raises(ModelError, match="clip_sample"):
        LinearGaussianChain(GaussianDiffusion(data=GaussianMixture(means[0]), num_steps=5, clip_sample=1.0))
    with pytest.raises(ModelError, match="data="):
        LinearGaussianChain(GaussianDiffusion(lambda x, t: x, event_shape=(2,), num_steps=5))
    chain = LinearGaussianChain(GaussianDiffusion(data=GaussianMixture(means[0]), num_steps=5))
    for bad in (-1, 6):
        with pytest.raises(ModelError, match="level"):
            chain.marginal(bad)
    with pytest.raises(ModelError, match="level"):
        chain.step(0)


# -- distance of the chain from the data law --------------------------------------------------------
def test_gaussian_kl():
    m, S = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    assert gaussian_kl(m, S, m, S) == pytest.approx(0.0, abs=1e-12)
    m1, S1 = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m, S), torch.distributions.MultivariateNormal(m1, S1)
    )
    assert gaussian_kl(m, S, m1, S1) == pytest.approx(float(expected))
    assert gaussian_kl(m, torch.zeros(2, 2, dtype=F64), m1, S1) == math.inf


def test_chain_data_kl_table():
    rows = chain_data_kl_table(num_steps=(10, 100, 1000))
    kl = {(r["eta"], r["num_steps"]): r["kl"] for r in rows}
    assert kl[(1.0, 10)] > kl[(1.0, 100)] > kl[(1.0, 1000)] > 0
    assert kl[(0.0, 10)] > kl[(0.0, 100)] > kl[(0.0, 1000)] > 0
    # deterministic DDIM transports x_K ~ N(0, I) by a bijection, which preserves KL: the η = 0 error
    # cannot fall below KL(N(0, I) ‖ law of x_K under the data), the prior mismatch
    data = GaussianMixture([4.0, 4.0], 0.3)
    a_K = float(GaussianDiffusion(data=data, num_steps=1000).alphas_cumprod[-1])
    q = data.noised(a_K)
    floor = gaussian_kl(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64), q.means[0], q.covariances[0])
    assert floor <= kl[(0.0, 1000)] <= 1.1 * floor


def test_chain_data_distance_runs():
    process = GaussianDiffusion(data=GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 0.3), num_steps=10)
    stats = chain_data_distance(process, num_samples=200, repeats=2, seed=0)
    assert set(stats) == {"w2", "energy", "w2_floor", "energy_floor"}
    assert all(v[0] >= 0 and math.isfinite(v[1]) for v in stats.values())


def test_mismatched_mean_and_covariance_raise():
    with pytest.raises(ShapeError, match="covariance of shape"):
        gaussian_log_expectation(torch.zeros(2), torch.eye(3), reward_2d(), 1.0)
    with pytest.raises(ShapeError, match="covariance of shape"):
        tilt_gaussian(torch.zeros(2), torch.ones(2), reward_2d(), 1.0)
