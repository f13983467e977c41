"""GaussianSoftValue: the soft value of a Gaussian approximation of the denoising posterior.

Exact checks: second-order Tweedie gives the exact posterior covariance of Gaussian data; the
scalar (Hutchinson) covariance equals the full one for isotropic data; common random numbers give
equal values to equal states; for a linear reward on a linear-Gaussian chain the potential is the
exact soft value up to a constant per level, so the gradient proposal gives ESS = N at every step
and the exact log Z. Statistical checks: the Monte-Carlo estimate matches the closed-form Gaussian
expectation within its standard error, and SMC with this potential matches the chain's closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_smc import assert_moments_match, gaussian_process, make_model, z_for

from tilted.distributions import MaskedDiffusion, TabularSequences
from tilted.errors import ModelError
from tilted.inference import SMC, GaussianSoftValue
from tilted.reference import LinearGaussianChain, gaussian_log_expectation
from tilted.rewards import Quadratic

F64 = torch.float64
MEAN, COV = [1.0, -2.0, 0.5], [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]]


def posterior(mean, cov, a, x):
    """x_0 | x_k = x ~ N(μ + √ᾱ Σ C⁻¹ (x − √ᾱ μ), Σ − ᾱ Σ C⁻¹ Σ), C = ᾱΣ + (1 − ᾱ) I (Gaussian data)."""
    mean, cov = torch.as_tensor(mean, dtype=F64), torch.as_tensor(cov, dtype=F64)
    C = a * cov + (1 - a) * torch.eye(len(mean), dtype=F64)
    gain = math.sqrt(a) * torch.linalg.solve(C, cov).mT
    return mean + (x - math.sqrt(a) * mean) @ gain.mT, cov - a * cov @ torch.linalg.solve(C, cov)


def factor_of(potential, x, k):
    """L (n, d, d) of the potential at states x (n, d), k > 0."""
    leaf = x.clone().requires_grad_(True)
    x0 = potential.plan.process.predict(leaf, k)
    potential.redraw(1)
    return potential.factor(k, leaf, x0, potential.probes.expand_as(x))


@pytest.mark.parametrize("k", [1, 4, 9])
def test_tweedie_covariance_is_the_exact_posterior_covariance(k):
    process = gaussian_process(MEAN, COV, num_steps=10)
    potential = GaussianSoftValue(make_model(process, Quadratic.linear([1.0, 0.0, 0.0])), seed=0)
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(k))
    L = factor_of(potential, x, k)
    _, S = posterior(MEAN, COV, float(process.alphas_cumprod[k]), x)
    assert torch.allclose(L @ L.mT, S.expand(5, 3, 3), atol=1e-10)


def test_scalar_covariance_equals_full_for_isotropic_data():
    """J ∝ I: the Hutchinson trace with Rademacher probes is exact, so both factors give the same Σ_k."""
    process = gaussian_process(MEAN, 0.7 * torch.eye(3, dtype=F64), num_steps=10)
    model = make_model(process, Quadratic.linear([1.0, 0.0, 0.0]))
    x = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    full = factor_of(GaussianSoftValue(model, seed=0), x, 5)
    scalar = factor_of(GaussianSoftValue(model, covariance="scalar", seed=0), x, 5)
    assert scalar.shape == (4, 1, 1)  # Σ_k = s²I, kept as the scale s
    assert torch.allclose(full @ full.mT, scalar**2 * torch.eye(3, dtype=F64), atol=1e-12)


def test_common_random_numbers_equal_states_equal_values():
    process = gaussian_process(MEAN, COV, num_steps=10)
    potential = GaussianSoftValue(make_model(process, Quadratic(A=-0.3 * torch.eye(3))), num_draws=3, seed=1)
    state = torch.randn(1, 1, 3).expand(2, 4, 3)  # 2 runs, 4 copies of one state each
    potential.redraw(2)
    psi = potential.value(state, 6)
    assert (psi == psi[:, :1]).all()  # equal within a run
    assert psi[0, 0] != psi[1, 0]  # runs draw their own ε


def test_matches_the_gaussian_expectation_within_monte_carlo_error():
    """ψ̂ = log mean_m w_m, w_m = exp(r(x_0^m)/α); delta method: s.e.(ψ̂) = sd(w)/(mean(w)√M)."""
    process = gaussian_process(MEAN, COV, num_steps=10)
    reward, alpha, k, M = Quadratic(A=-0.2 * torch.eye(3), b=[0.5, 0.0, -0.5]), 0.8, 7, 20_000
    potential = GaussianSoftValue(make_model(process, reward, alpha), num_draws=M, seed=2)
    x = torch.randn(1, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    psi = potential.value(x, k)[0]
    m, S = posterior(MEAN, COV, float(process.alphas_cumprod[k]), x[0])
    exact = gaussian_log_expectation(m, S, reward, alpha)
    L = torch.linalg.cholesky(S)
    eps = torch.randn(M, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    w = (reward(m[:, None] + eps @ L.mT) / alpha).exp()  # (3 states, M): for the standard error only
    se = w.std(-1) / (w.mean(-1) * math.sqrt(M))
    assert ((psi - exact).abs() <= z_for(3) * se).all(), (psi, exact, se)


@pytest.mark.parametrize("covariance", ["full", "scalar"])
def test_linear_reward_gradient_proposal_gives_equal_weights_and_exact_evidence(covariance):
    """For a linear reward bᵀx on Gaussian data ψ̂_k = bᵀx̂_0(x) + c_k, the exact soft value of the DDPM chain
    (η = 1) up to the constant c_k, and ∇ψ̂ is constant: the gradient proposal is the optimal kernel and every
    increment is the same constant, so ESS = N at every step and log Ẑ = log Z (no randomness is left)."""
    process = gaussian_process(MEAN, COV, num_steps=12)
    reward, alpha = Quadratic.linear([1.5, -0.5, 2.0]), 0.7
    _, _, log_z = LinearGaussianChain(process).tilted(reward, alpha)
    model = make_model(process, reward, alpha)
    potential = GaussianSoftValue(model, num_draws=5, covariance=covariance, seed=0)
    res = SMC(model, 7, proposal="gradient", potential=potential, num_runs=3, ess_threshold=1.0).run(seed=0)
    # float32 states: increments agree to ~1e-6 relative; a wrong potential moves the ESS by O(1)
    assert torch.allclose(res.trace.ess, torch.full_like(res.trace.ess, 7.0), rtol=1e-5)
    assert torch.allclose(res.log_evidence, torch.full((3,), float(log_z), dtype=F64), atol=1e-3)


def test_counts_one_denoiser_call_d_gradients_and_fm_rewards_per_particle_and_level_in_the_result():
    process = gaussian_process(MEAN, COV, num_steps=6)
    model = make_model(process, Quadratic(A=-0.3 * torch.eye(3)))
    potential = GaussianSoftValue(model, num_draws=4, seed=0)
    res = SMC(model, 5, potential=potential, num_runs=2).run(seed=0)
    evaluations = 6 * 2 * 5  # levels K, …, 1 (the last step uses the exact reward) × runs × particles
    # the engine binds its counts: its own x̂_0 per particle and level, and the final reward, are added
    assert res.counts.as_dict() == {
        "denoiser_calls": 2 * evaluations,
        "reward_calls": 4 * evaluations + 2 * 5,
        "gradient_evaluations": 3 * evaluations,
    }
    assert potential.counts is res.counts


def test_batch_size_changes_nothing():
    process = gaussian_process(MEAN, COV, num_steps=6)
    model = make_model(process, Quadratic(A=-0.3 * torch.eye(3), b=[1.0, 0.0, 0.0]))
    runs = [
        SMC(model, 6, potential=GaussianSoftValue(model, seed=0, batch_size=b), num_runs=2).run(seed=0)
        for b in (None, 5)
    ]
    assert torch.allclose(runs[0].log_weights, runs[1].log_weights, atol=1e-6)
    assert torch.allclose(runs[0].particles["x"], runs[1].particles["x"], atol=1e-5)


def test_bad_settings_raise():
    model = make_model(gaussian_process(MEAN, COV), Quadratic.linear([1.0, 0.0, 0.0]))
    with pytest.raises(ModelError, match="num_draws"):
        GaussianSoftValue(model, num_draws=0)
    with pytest.raises(ModelError, match="covariance"):
        GaussianSoftValue(model, covariance="diagonal")
    masked = MaskedDiffusion(data=TabularSequences(torch.full((2, 2), 0.25)), num_steps=2)
    with pytest.raises(ModelError, match="Gaussian-path process"):
        GaussianSoftValue(make_model(masked, lambda x: x.sum(-1).double()))


@pytest.mark.slow
@pytest.mark.parametrize("proposal", ["prior", "gradient"])
def test_smc_with_the_potential_matches_the_closed_form(proposal):
    """A quadratic reward (Σ_k approximate: the chain's posterior covariance is not the data law's) keeps SMC
    exact: weighted moments within z s.e. (pooled over runs, as in test_smc) and E[Ẑ]/Z = 1 within z s.e."""
    process = gaussian_process([1.0, -1.0], [[1.0, 0.4], [0.4, 0.6]], num_steps=10)
    reward, alpha = Quadratic(A=[[-0.4, 0.1], [0.1, -0.2]], b=[1.0, 0.5]), 0.8
    mean, cov, log_z = LinearGaussianChain(process).tilted(reward, alpha)
    model = make_model(process, reward, alpha)
    z = z_for(2 * 6)  # 2 proposals × (2 means + 3 covariances + 1 evidence)
    res = SMC(model, 256, proposal=proposal, potential=GaussianSoftValue(model, seed=0), num_runs=32).run(seed=0)
    assert_moments_match(res, mean, cov, z)
    ratio = (res.log_evidence - float(log_z)).exp()
    assert abs(float(ratio.mean()) - 1) <= z * float(ratio.std()) / math.sqrt(ratio.numel())
