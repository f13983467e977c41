"""DPS, FreeDoM and MPGD: defining properties.

On a linear-Gaussian chain with a linear reward r = bᵀx the guidance gradient is a constant per step
(∇_{x_k} bᵀx̂_0(x_k) = A_kᵀb with the affine denoiser x̂_0 = A_k x + c_k; ∇_{x̂_0} bᵀx̂_0 = b), so every
guided sampler is again a linear-Gaussian chain and its law is known exactly: the tests check the
update rules (step sizes, time travel) against that law, the zero-reward cases against the
pretrained chain, and ζ = 0 draw for draw against ``process.sample``. Tolerances as in
tests/test_search.py (Student t across independent runs, Bonferroni at 10⁻³).
"""

import math
import warnings

import pytest
import torch
from test_discrete_smc import make_model as masked_model
from test_discrete_smc import process as masked_process
from test_discrete_smc import table
from test_search import LINEAR, ZERO, assert_law, masked_law_check, small_process, t_for
from test_smc import make_model

from tilted.distributions import TableReward
from tilted.errors import ModelError
from tilted.inference import DPS, MPGD, FreeDoM, TaylorGuidance
from tilted.reference import LinearGaussianChain, MaskedChain, total_variation
from tilted.rewards import Quadratic

NO_TRAVEL = {"recurrence": 1}
TRAVEL = {"recurrence": 5, "travel_window": (0.3, 0.9), "stop": 0.2}


def guided_law(engine, process, b, alpha):
    """Exact (mean, cov) of x_0 under a guidance engine with reward bᵀx/α on a linear-Gaussian chain.

    Step k is x_{k-1} = M_k x_k + m_k + ρ_k g_k + σ_k ε (repeated with forward re-noising on FreeDoM's
    travel steps), g_k = A_kᵀb/α through the denoiser (read off the process by autograd) or b/α (MPGD).
    """
    chain = LinearGaussianChain(process)
    d = process.event_shape[0]
    b = torch.as_tensor(b, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    mu, cov = torch.zeros(d, dtype=torch.float64), eye.clone()
    for k in process.levels:
        M, m, s = chain.step(k)
        if engine.through_denoiser:
            x = torch.zeros(d, dtype=torch.float64, requires_grad=True)
            (g,) = torch.autograd.grad((b * process.predict(x, k)).sum() / alpha, x)
        else:
            g = b / alpha
        rho, times = engine.step_size(process, k), engine.repeats(process, k)
        a = float(process.alphas_cumprod[k] / process.alphas_cumprod[k - 1])
        for i in range(times):
            mu, cov = M @ mu + m + rho * g, M @ cov @ M.T + s**2 * eye
            if i + 1 < times:
                mu, cov = math.sqrt(a) * mu, a * cov + (1 - a) * eye
    return mu, cov


ENGINES = {
    "dps": lambda m, n, **kw: DPS(m, n, scale=0.3, **kw),
    "mpgd": lambda m, n, **kw: MPGD(m, n, scale=0.3, **kw),
    "freedom": lambda m, n, **kw: FreeDoM(m, n, scale=0.5, **NO_TRAVEL, **kw),
    "freedom-travel": lambda m, n, **kw: FreeDoM(m, n, scale=1.0, **TRAVEL, **kw),
}


# -- exact properties -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dps", "mpgd", "freedom"])
@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_no_guidance_is_pretrained_sampling_draw_for_draw(name, eta):
    """ζ = 0, or a reward that does not depend on x: exactly the draws of ``process.sample`` (same seed)."""
    process = small_process(eta=eta)
    want = process.sample((3, 16), generator=4)
    for reward, scale in ((LINEAR, 0.0), (ZERO, 1.0), (None, 1.0)):
        engine = ENGINES[name](make_model(process, reward), 16, num_runs=3)
        engine.scale = scale
        res = engine.run(seed=4)
        assert torch.equal(res.particles["x"], want)
        assert (res.counts.gradient_evaluations == 0) == (scale == 0 or reward is None)


@pytest.mark.parametrize("name", sorted(ENGINES))
@pytest.mark.parametrize("b", [[0.0, 0.0], [1.0, -0.5]], ids=["zero-reward", "linear-reward"])
def test_guided_law_is_the_exact_linear_gaussian_law(name, b):
    """Zero reward: the pretrained law (FreeDoM with time travel: the law of its re-noised chain, which is
    not the pretrained one); linear reward: the exactly shifted law of the update rule."""
    process = small_process()
    alpha, R = 0.7, 32
    model = make_model(process, Quadratic.linear(b) if any(b) else ZERO, alpha)
    engine = ENGINES[name](model, 64, num_runs=R)
    mean, cov = guided_law(engine, process, b, alpha)
    if not any(b) and name != "freedom-travel":
        chain_mean, chain_cov = LinearGaussianChain(process).marginal(0)
        assert torch.allclose(mean, chain_mean, atol=1e-6) and torch.allclose(cov, chain_cov, atol=1e-6)
    res = engine.run(seed=2)
    assert_law(res.particles["x"], mean, cov, t_for(5 * 2 * len(ENGINES), R))


def test_time_travel_changes_the_law():
    """Time travel is visible to the exact-law test above: with the linear reward its law is > 6 s.e. (of a
    mean over 32 × 64 draws) away from the law without it. With zero reward it does not leave the pretrained
    law invariant either, but on this chain only the covariance moves, by about 0.3 s.e.: too little to see."""
    process = small_process()
    b, alpha = [1.0, -0.5], 0.7
    travel, _ = guided_law(FreeDoM(None, 1, scale=1.0, **TRAVEL), process, b, alpha)
    plain, cov = guided_law(FreeDoM(None, 1, scale=1.0, **{**TRAVEL, "recurrence": 1}), process, b, alpha)
    assert ((travel - plain).abs() / (cov.diagonal() / (32 * 64)).sqrt()).max() > 6
    mean, cov = guided_law(FreeDoM(None, 1, **TRAVEL), process, [0.0, 0.0], 1.0)
    chain_mean, chain_cov = LinearGaussianChain(process).marginal(0)
    assert torch.allclose(mean, chain_mean, atol=1e-4) and not torch.allclose(cov, chain_cov, atol=1e-3)


def test_guidance_moves_towards_the_reward():
    process = small_process()
    pretrained = LINEAR(process.sample((256,), generator=0)).mean()
    for name in ("dps", "mpgd", "freedom", "freedom-travel"):
        res = ENGINES[name](make_model(process, LINEAR), 256).run(seed=0)
        assert res.rewards["r"].mean() > pretrained + 0.1


# -- results, counts and settings ------------------------------------------------------------------
def test_result_fields_and_counts():
    K, N = 8, 5
    process = small_process(num_steps=K)
    model = make_model(process, LINEAR)
    for engine in (DPS(model, N), MPGD(model, N)):
        res = engine.run(seed=0)
        assert res.counts.denoiser_calls == N * K and res.counts.gradient_evaluations == N * K
        assert res.counts.reward_calls == N * K + N  # one per guided step, and the exact final rewards
        assert torch.isnan(res.log_evidence) and torch.allclose(res.weights, torch.full((N,), 1 / N).double())
        assert res.trace.ess.shape == (K + 1,) and not res.trace.resampled.any()
        assert torch.allclose(res.rewards["r"], LINEAR(res.particles["x"]))
        assert res.config["scale"] == 1.0
    engine = FreeDoM(model, N, **TRAVEL)
    res = engine.run(seed=0)
    steps = sum(engine.repeats(process, k) for k in process.levels)
    guided = sum(engine.repeats(process, k) for k in process.levels if engine.step_size(process, k) > 0)
    assert 0 < len(engine.travel_levels(process)) < K and 0 < guided < steps
    assert res.counts.denoiser_calls == N * steps and res.counts.gradient_evaluations == N * guided
    assert res.config["recurrence"] == 5


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_same_seed_same_result_and_chunking_changes_nothing(name):
    model = make_model(small_process(), LINEAR)
    a = ENGINES[name](model, 12, num_runs=2).run(seed=11)
    b = ENGINES[name](model, 12, num_runs=2, batch_size=5).run(seed=11)
    assert torch.allclose(a.particles["x"], b.particles["x"], atol=1e-6) and a.counts == b.counts
    c = ENGINES[name](model, 12, num_runs=2).run(seed=12)
    assert not torch.allclose(a.particles["x"], c.particles["x"])


def test_bad_settings():
    model = make_model(small_process(), LINEAR)
    for engine in (DPS, MPGD, FreeDoM):
        for scale in (-0.1, math.nan, math.inf, "big"):
            with pytest.raises(ModelError, match="scale"):
                engine(model, 4, scale=scale)
        with pytest.raises(ValueError):
            engine(model, 0)
    for bad in ({"recurrence": 0}, {"recurrence": 1.5}):
        with pytest.raises(ModelError, match="recurrence"):
            FreeDoM(model, 4, **bad)
    for window in ((0.8, 0.5), (0.5, 1.5), (-0.1, 0.5)):
        with pytest.raises(ModelError, match="travel_window"):
            FreeDoM(model, 4, travel_window=window)
    with pytest.raises(ModelError, match="stop"):
        FreeDoM(model, 4, stop=-1)


def test_non_differentiable_reward_raises():
    model = make_model(small_process(), lambda x: (x[..., 0] > 0).double())
    for engine in (DPS, MPGD, FreeDoM):
        with pytest.raises(ModelError, match="differentiable"):
            engine(model, 4).run(seed=0)
        engine(model, 4, scale=0).run(seed=0)  # no guidance: no gradient asked


def test_deterministic_kernels_are_guided_silently():
    """DDIM (η = 0) has no transition density, and guidance needs none: the guided deterministic update."""
    process = small_process(eta=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("dps", "mpgd", "freedom-travel"):
            res = ENGINES[name](make_model(process, LINEAR), 8).run(seed=0)
            assert torch.isfinite(res.particles["x"]).all()


# -- masked (discrete) diffusion: the Taylor tilt ----------------------------------------------------
def test_taylor_guidance_without_guidance_is_pretrained_sampling_draw_for_draw():
    proc = masked_process(3, 3, 4, 0)
    want = proc.sample((2, 16), generator=3)
    for reward, scale in ((TableReward(table(3, 3, 1)), 0.0), (TableReward(torch.zeros(3, 3, 3)), 1.0)):
        res = TaylorGuidance(masked_model(proc, reward), 16, scale=scale, num_runs=2).run(seed=3)
        assert torch.equal(res.particles["x"], want)


@pytest.mark.parametrize("L", [1, 3])
def test_taylor_guidance_is_exact_for_one_step_and_additive_rewards(L):
    """K = 1 fills every position at once, independently; for r(s) = Σ_i f_i(s_i) the Taylor tilt is the
    exact per-position tilt, so the unweighted particles follow the chain's tilted law (TV bound as in
    test_discrete_smc, from the across-run spread)."""
    V, alpha = 3, 0.4
    f = torch.randn(L, V, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = sum(f[i].reshape((1,) * i + (V,) + (1,) * (L - 1 - i)) for i in range(L)).expand((V,) * L)
    proc = masked_process(V, L, 1, 2)
    exact, _ = MaskedChain(proc).tilted(r.reshape(-1), alpha)
    res = TaylorGuidance(masked_model(proc, TableReward(r), alpha), 256, num_runs=32).run(seed=0)
    masked_law_check(res, exact, V)
    pretrained = MaskedChain(proc).law()
    assert total_variation(exact, pretrained) > 0.2  # the tilt is far from the pretrained law


def test_taylor_guidance_moves_towards_the_reward_and_counts():
    proc = masked_process(3, 3, 4, 0)
    reward = TableReward(table(3, 3, 1))
    res = TaylorGuidance(masked_model(proc, reward, 0.2), 64, num_runs=2).run(seed=0)
    assert res.rewards["r"].mean() > reward(proc.sample((2, 64), generator=0)).mean() + 0.05
    n = 2 * 64
    assert res.counts.denoiser_calls == 4 * n and res.counts.gradient_evaluations == 4 * n
    assert res.counts.reward_calls == n and torch.isnan(res.log_evidence).all()


def test_taylor_guidance_bad_input():
    proc = masked_process(3, 3, 4, 0)
    with pytest.raises(ModelError, match="relaxed"):  # a reward on token ids only: no gradient at P
        TaylorGuidance(masked_model(proc, lambda x: (x == 0).sum(-1).double()), 4).run(seed=0)
    with pytest.raises(ModelError, match="masked"):
        TaylorGuidance(make_model(small_process(), LINEAR), 4).run(seed=0)
    with pytest.raises(ModelError, match="TaylorGuidance"):
        DPS(masked_model(proc, TableReward(table(3, 3, 1))), 4).run(seed=0)
    with pytest.raises(ModelError, match="scale"):
        TaylorGuidance(masked_model(proc, None), 4, scale=-1)
