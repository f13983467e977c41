"""Learned (and deliberately broken) denoisers: bounded drifts, clear errors, exact weighting.

A network's x̂_0 error is amplified by √((1 − ᾱ)/ᾱ) at high noise (ε-prediction), so the engines
must neither explode nor fail silently: the gradient proposal's shift is bounded by the trust
region, non-finite values raise :class:`NonFiniteError` naming the site, step and cause, and the
default potential weight w_k = ᾱ_k keeps the target exact (checked against the closed form).
"""

import math

import pyro
import pytest
import torch

import tilted
from tilted.diagnostics import diagnose
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.errors import NonFiniteError
from tilted.inference import SMC, Importance
from tilted.inference.proposals import trust_region
from tilted.reference import LinearGaussianChain
from tilted.rewards import Quadratic


class MLP(torch.nn.Module):
    """An untrained ε-network f(x_t, t) with seeded random weights."""

    def __init__(self, dim=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, 64), torch.nn.SiLU(), torch.nn.Linear(64, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t.float()[:, None] / 1000], -1))


class Broken(torch.nn.Module):
    """Returns ``value`` at the timesteps ``bad`` and zeros elsewhere."""

    def __init__(self, bad, value):
        super().__init__()
        self.bad, self.value = set(bad), value

    def forward(self, x, t):
        return torch.where(torch.isin(t, torch.tensor(sorted(self.bad)))[:, None], self.value, torch.zeros_like(x))


def model_of(process, reward=lambda x: -(x**2).sum(-1), alpha=1.0):
    def model():
        x = pyro.sample("x", process)
        tilted.factor("r", reward, x, temperature=alpha)

    return model


def test_trust_region_bounds_the_shift_and_leaves_small_drifts_alone():
    gen = torch.Generator().manual_seed(0)
    drift = torch.randn(3, 50, 4, generator=gen) * torch.logspace(-2, 3, 50)[None, :, None]
    sigma, tau = 0.3, 1.5
    out, clipped = trust_region(drift, sigma, tau, 1)
    norm = (sigma**2 * out).norm(dim=-1)
    limit = tau * sigma * math.sqrt(4)
    assert (norm <= limit * (1 + 1e-6)).all()
    assert torch.equal(clipped, (sigma**2 * drift).norm(dim=-1) > limit)
    assert torch.equal(out[~clipped], drift[~clipped])  # untouched inside the region
    cos = torch.nn.functional.cosine_similarity(out[clipped], drift[clipped], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos))  # scaled, not rotated
    assert torch.allclose(norm[clipped], torch.full_like(norm[clipped], limit))
    same, none = trust_region(drift, sigma, None, 1)
    assert same is drift and not none.any()


def test_random_network_with_gradient_proposal_stays_finite_and_records_clipping():
    """Untrained weights and no potential weight: the raw drift is huge at high noise; bounded, it cannot explode."""
    process = GaussianDiffusion(MLP(), event_shape=(2,), num_steps=20)
    smc = SMC(model_of(process), 16, proposal="gradient", potential_weight="none", num_runs=8)
    res = smc.run(seed=0)
    assert torch.isfinite(res.particles["x"]).all() and torch.isfinite(res.log_evidence).all()
    assert torch.isfinite(res.log_weights).any(-1).all()
    assert float(res.trace.drift_clipped.max()) > 0  # the trust region bound, and it says so
    assert res.config["trust_region"] == 1.0
    unbounded = SMC(model_of(process), 16, proposal="gradient", potential_weight="none", trust_region=None, num_runs=8)
    with pytest.raises(NonFiniteError, match=r"site 'x', step \d+"):  # without the bound it explodes, loudly
        unbounded.run(seed=0)


def test_diagnostics_flag_a_bound_trust_region():
    process = GaussianDiffusion(MLP(), event_shape=(2,), num_steps=20)
    res = SMC(model_of(process), 16, proposal="gradient", potential_weight="none", trust_region=0.01, num_runs=4).run(
        seed=0
    )
    verdict = diagnose(res).get("intermediate_potential")
    assert verdict.passed is False and "trust region" in verdict.message and "proposal='prior'" in verdict.message


def test_diagnostics_flag_an_early_ess_collapse():
    """A reward of scale 1e3 under λ ≡ 1 and w ≡ 1 makes the first steps' weights collapse."""
    data = GaussianMixture(torch.tensor([[-3.0], [3.0]]), 0.3)
    process = GaussianDiffusion(data=data, num_steps=20)
    res = SMC(model_of(process, lambda x: 1e3 * x[..., 0]), 16, potential_weight="none", num_runs=4).run(seed=0)
    verdict = diagnose(res).get("intermediate_potential")
    assert verdict.passed is False and "ESS fell" in verdict.message and "potential_weight" in verdict.message
    ok = SMC(model_of(process, lambda x: 0.1 * x[..., 0]), 16, num_runs=4).run(seed=0)
    assert diagnose(ok).get("intermediate_potential").passed is True


@pytest.mark.parametrize("proposal", ["prior", "gradient"])
def test_nan_network_at_some_timesteps_names_site_step_and_cause(proposal):
    process = GaussianDiffusion(Broken({499}, float("nan")), event_shape=(2,), num_steps=10)
    with pytest.raises(NonFiniteError, match=r"site 'x', step \d+ .*denoiser's epsilon prediction.*timestep 499"):
        SMC(model_of(process), 8, proposal=proposal).run(seed=0)
    with pytest.raises(NonFiniteError, match="timestep 499"):
        Importance(model_of(process), 8).run(seed=0)  # no intermediate potentials, still the chain's own step


def test_huge_network_output_overflows_into_a_clear_error():
    process = GaussianDiffusion(Broken({899}, 3e38), event_shape=(2,), num_steps=10)
    with pytest.raises(NonFiniteError, match=r"site 'x'.*x̂_0 .*non-finite.*timestep 899"):
        SMC(model_of(process), 8).run(seed=0)


def test_non_finite_gradient_through_the_denoiser_raises():
    data = GaussianMixture(torch.zeros(1, 2), 1.0)
    process = GaussianDiffusion(data=data, num_steps=5)

    def reward(x):  # finite values, NaN gradient (the unused branch's sqrt of a negative number)
        return torch.where(x[..., 0] < 100, -(x[..., 0] ** 2), torch.sqrt(x[..., 0] - 100))

    with pytest.raises(NonFiniteError, match="site 'x'.*gradient of the reward"):
        SMC(model_of(process, reward), 8, proposal="gradient").run(seed=0)


def test_bad_potential_weight_and_trust_region_are_refused():
    process = GaussianDiffusion(data=GaussianMixture(torch.zeros(1, 1), 1.0), num_steps=4)
    model = model_of(process)
    for kwargs in ({"potential_weight": "snr"}, {"trust_region": 0}, {"trust_region": -1.0}):
        with pytest.raises(ValueError):
            SMC(model, 4, **kwargs)
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        SMC(model, 4, potential_weight=lambda a: -1.0).run(seed=0)


@pytest.mark.parametrize("weight", ["signal", "none", lambda a: a**0.5])
def test_potential_weights_keep_the_target_exact(weight):
    """Every weighting telescopes: moments and Ẑ match the closed form of the linear-Gaussian chain.

    64 runs × 256 particles; each run's weighted mean has its own error, so we compare the mean over
    runs with z = 4 standard errors of that mean (across-run spread), and Ẑ's ratio to Z likewise.
    """
    mean, cov = torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.4], [0.4, 0.6]])
    process = GaussianDiffusion(data=GaussianMixture(mean[None], cov), num_steps=10)
    reward = Quadratic(A=[[-0.4, 0.1], [0.1, -0.2]], b=[1.0, 0.5])
    t_mean, _, log_z = LinearGaussianChain(process).tilted(reward, 0.8)
    res = SMC(model_of(process, reward, 0.8), 256, proposal="gradient", potential_weight=weight, num_runs=64).run(
        seed=3
    )
    per_run = (res.log_weights.exp()[..., None] * res.particles["x"].double()).sum(1)
    se = per_run.std(0) / math.sqrt(64)
    assert ((per_run.mean(0) - t_mean).abs() <= 4 * se).all(), (per_run.mean(0), t_mean, se)
    ratio = (res.log_evidence - float(log_z)).exp()
    assert abs(float(ratio.mean()) - 1) <= 4 * float(ratio.std()) / 8
