"""FlowMatching: the Gaussian path x_t = (1 − t) x_0 + t ε, its exact chain, and engines run on it unchanged.

Statistical tolerances: sample moments within 4.5 s.e. (√(Σ_ii/n) for means, √((Σ_iiΣ_jj + Σ_ij²)/n)
for covariances); each test states its number of comparisons and family-wise false-alarm rate.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import tilted
from tilted.distributions import FlowMatching, GaussianMixture
from tilted.distributions.flow import flow_times
from tilted.errors import ModelError, NoDensityError, NonFiniteError, ShapeError
from tilted.inference import DPS, SMC, SVDD, BeamSearch, GaussianSoftValue, Importance
from tilted.reference import LinearGaussianChain, gaussian_kl
from tilted.rewards import Quadratic

F64 = torch.float64


def one_gaussian(d: int = 2, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(d, d, generator=g, dtype=F64)
    return GaussianMixture((2 * torch.randn(d, generator=g, dtype=F64))[None], root @ root.T + 0.3 * torch.eye(d))


def exact_velocity(process: FlowMatching):
    """v(x, t) = ε̂ − x̂_0 from the data law's exact denoiser: a 'network' that is exactly right."""

    def v(x, t):
        k = int(torch.argmin((process.times - float(t[0])).abs()))
        x0 = process.predict(x.to(F64), k)
        eps = (x.to(F64) - (1 - process.times[k]) * x0) / process.times[k]
        return (eps - x0).to(x.dtype)

    return v


def model_of(process, reward, alpha):
    def model():
        x = pyro.sample("x", process)
        tilted.factor("r", reward, x, temperature=alpha)

    return model


def test_time_grids_uniform_and_shifted():
    torch.testing.assert_close(flow_times(4), torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=F64))
    t = flow_times(2, shift=3.0)  # t = 3u / (1 + 2u): u = 1/2 → 0.75
    torch.testing.assert_close(t, torch.tensor([0, 0.75, 1.0], dtype=F64))
    p = FlowMatching(data=one_gaussian(), num_steps=4)
    torch.testing.assert_close(p.signal, 1 - p.times)
    torch.testing.assert_close(p.noise, p.times)
    assert p.is_deterministic(1) and not p.is_deterministic(2)  # t_0 = 0: the last step is x_0 = x̂_0(x_1)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_chain_steps_are_the_process_transitions(eta, shift):
    process = FlowMatching(data=one_gaussian(3, 1), num_steps=7, eta=eta, shift=shift)
    chain = LinearGaussianChain(process)
    x = 2 * torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    for k in process.levels:
        M, m, sigma = chain.step(k)
        mean, sd = process.transition_moments(x, k)
        torch.testing.assert_close(x @ M.T + m, mean, rtol=1e-10, atol=1e-10)
        assert sigma == pytest.approx(sd, abs=1e-15)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_chain_marginals_match_process_samples(eta):
    # 2 means + 3 covariances at 4.5 s.e., 2 cases: 10 × 6.8e-6 ≈ 7e-5 family-wise
    process = FlowMatching(data=one_gaussian(2, 3), num_steps=20, eta=eta, shift=2.0)
    mean, cov = LinearGaussianChain(process).marginal(0)
    n = 20000
    x = process.sample((n,), generator=0).to(F64)
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= 4.5 * se).all()
    d = cov.diagonal()
    assert ((x.T.cov() - cov).abs() <= 4.5 * ((d[:, None] * d[None] + cov**2) / n).sqrt()).all()


def test_untilted_chain_converges_to_the_data_law():
    data = one_gaussian(2, 4)
    kls = [
        gaussian_kl(
            *LinearGaussianChain(FlowMatching(data=data, num_steps=k)).marginal(0), data.means[0], data.covariances[0]
        )
        for k in (10, 100, 1000)
    ]
    assert kls[0] > kls[1] > kls[2] and kls[2] < 1e-3  # no prior mismatch: x_K = ε exactly at t_K = 1


def test_a_velocity_network_gives_the_same_chain_as_the_data_law():
    ref = FlowMatching(data=one_gaussian(), num_steps=10)
    net = FlowMatching(exact_velocity(ref), event_shape=(2,), num_steps=10)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for k in (10, 5, 1):
        torch.testing.assert_close(net.predict(x, k), ref.predict(x, k), rtol=1e-9, atol=1e-9)
    ode = FlowMatching(exact_velocity(ref), event_shape=(2,), num_steps=10, eta=0.0)
    k, t, t_prev = 6, float(ode.times[6]), float(ode.times[5])
    v = exact_velocity(ref)(x, torch.full((6,), t))
    torch.testing.assert_close(ode.draw_transition(x, k), x + (t_prev - t) * v)  # η = 0 is Euler on the ODE


def test_smc_is_exact_on_the_flow_chain():
    """Weighted mean of SMC with the gradient proposal against the chain's tilted law: 2 means at z = 4."""
    process = FlowMatching(data=one_gaussian(2, 5), num_steps=10, shift=2.0)
    reward, alpha = Quadratic(A=-0.3 * torch.eye(2), b=[0.5, -0.5]), 0.7
    mean, _, log_z = LinearGaussianChain(process).tilted(reward, alpha)
    res = SMC(model_of(process, reward, alpha), 64, proposal="gradient", num_runs=64).run(seed=0)
    u = (res.log_evidence - res.log_evidence.max()).exp()
    phi = (res.log_weights.exp()[..., None] * res.particles["x"].double()).sum(1)
    est = (u[:, None] * phi).sum(0) / u.sum()
    se = (((u[:, None] * (phi - est)) ** 2).sum(0) * 64 / 63).sqrt() / u.sum()
    assert ((est - mean).abs() <= 4 * se).all(), (est, mean, se)
    ratio = (res.log_evidence - float(log_z)).exp()
    assert abs(float(ratio.mean()) - 1) <= 4 * float(ratio.std()) / math.sqrt(64)


def test_every_engine_family_runs_on_a_flow_unchanged():
    process = FlowMatching(data=one_gaussian(), num_steps=6)
    model = model_of(process, Quadratic(A=-0.2 * torch.eye(2), b=[1.0, 0.0]), 1.0)
    for engine in (
        Importance(model, 8),
        DPS(model, 4, scale=0.1),
        SVDD(model, 2, num_candidates=4),
        BeamSearch(model, 2, num_candidates=2),
    ):
        res = engine.run(seed=0)
        assert torch.isfinite(res.particles["x"]).all()


def test_bad_input_gets_a_clear_error():
    data = one_gaussian()
    with pytest.raises(ModelError, match="exactly one"):
        FlowMatching()
    with pytest.raises(ModelError, match="eta"):
        FlowMatching(data=data, eta=1.5)
    with pytest.raises(ModelError, match="shift"):
        FlowMatching(data=data, shift=0.0)
    with pytest.raises(ModelError, match="times"):
        FlowMatching(data=data, num_steps=2, times=[0.0, 0.6, 0.5])
    with pytest.raises(ModelError, match="event_shape"):
        FlowMatching(lambda x, t: x)
    with pytest.raises(ShapeError, match="velocity ε − x_0 per input"):
        FlowMatching(lambda x, t: x[:, :1], event_shape=(2,), num_steps=3).sample((4,))
    nan_late = FlowMatching(
        lambda x, t: x * torch.where(t[:, None] < 0.5, math.nan, 1.0), event_shape=(2,), num_steps=4
    )
    with pytest.raises(NonFiniteError, match="velocity at t = 0.25"):
        nan_late.sample((3,), generator=0)
    ode = FlowMatching(data=data, num_steps=4, eta=0.0)
    with pytest.raises(NoDensityError, match="deterministic"):
        SMC(model_of(ode, Quadratic.linear([1.0, 0.0]), 1.0), 4, proposal="gradient").run(seed=0)
    gsv = GaussianSoftValue(model_of(FlowMatching(data=data, num_steps=4), Quadratic.linear([1.0, 0.0]), 1.0))
    with pytest.raises(ModelError, match="pure noise"):
        SMC(model_of(FlowMatching(data=data, num_steps=4), Quadratic.linear([1.0, 0.0]), 1.0), 4, potential=gsv).run(
            seed=0
        )
