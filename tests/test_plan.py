"""The modelling surface: factor statements under plain Pyro, plans, reward checks, tempering schedules."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Predictive

import tilted
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.errors import ModelError, NonFiniteError, ShapeError
from tilted.tempering import Adaptive, Constant, Exponential, Linear, as_tempering

torch.set_num_threads(1)

DATA = GaussianMixture(torch.tensor([[1.0, 0.0], [-1.0, 0.5]]), 0.1)
PRIOR = GaussianDiffusion(data=DATA, num_steps=4)


def r1(x):
    return -(x**2).sum(-1)


def r2(x):
    return x[..., 0]


def model(n=None, alpha=0.5):
    if n is None:
        x = pyro.sample("x", PRIOR)
    else:
        with pyro.plate("particles", n):
            x = pyro.sample("x", PRIOR)
    tilted.factor("r", r1, x, temperature=alpha)
    return x


# -- plain Pyro ---------------------------------------------------------------------------------------
def test_factor_under_trace_adds_reward_over_alpha():
    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace()
    x = trace.nodes["x"]["value"]
    assert x.shape == (2,)
    assert trace.nodes["r"]["type"] == "sample"
    torch.testing.assert_close(trace.nodes["r"]["fn"].log_factor, r1(x) / 0.5)


def test_factor_under_plate():
    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace(7, alpha=2.0)
    x = trace.nodes["x"]["value"]
    assert x.shape == (7, 2)
    log_factor = trace.nodes["r"]["fn"].log_factor
    assert log_factor.shape == (7,)
    torch.testing.assert_close(log_factor, r1(x) / 2.0)
    assert x.unique(dim=0).shape[0] == 7  # independent particles


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_runs(parallel):
    pyro.set_rng_seed(0)
    out = Predictive(model, num_samples=4, parallel=parallel, return_sites=["x", "_RETURN"])(3)
    assert out["x"].shape == (4, 3, 2)
    torch.testing.assert_close(out["_RETURN"], out["x"])
    assert torch.isfinite(out["x"]).all()


# -- plans --------------------------------------------------------------------------------------------
def multi(n=None):
    with pyro.plate("particles", n or 1):
        x = pyro.sample("x", PRIOR)
    tilted.factor("near", r1, x, temperature=0.5, tempering=Exponential(0.1))
    tilted.factor("right", r2, x, temperature=2.0, tempering="linear")
    tilted.factor("plain", lambda x: torch.ones(x.shape[:-1]), x, temperature=4.0)
    pyro.deterministic("y", x.sum(-1))
    return x


def test_several_factors_are_read_with_temperatures_and_schedules():
    plan = tilted.read_plan(multi, 5)
    assert plan.site == "x" and plan.process is PRIOR and plan.event_dim == 1
    assert [f.name for f in plan.factors] == ["near", "right", "plain"]
    assert all(f.site == "x" for f in plan.factors)
    torch.testing.assert_close(plan.temperatures, torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64))
    near, right, plain = (f.tempering for f in plan.factors)
    assert isinstance(near, Exponential) and near.gamma == 0.1
    assert isinstance(right, Linear) and right.until == 1.0
    assert isinstance(plain, Constant)
    assert plan.args == (5,)

    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    rewards = plan.rewards(x)
    assert rewards.shape == (3, 6)
    torch.testing.assert_close(rewards, torch.stack([r1(x), r2(x), torch.ones(6)]))
    torch.testing.assert_close(plan.log_factor(rewards), r1(x) / 0.5 + r2(x) / 2.0 + 1 / 4.0)
    # also with extra leading batch dimensions (independent runs)
    assert plan.rewards(x.reshape(2, 3, 2)).shape == (3, 2, 3)


def test_plan_without_factors():
    plan = tilted.read_plan(lambda: pyro.sample("x", PRIOR))
    assert plan.factors == ()
    x = torch.zeros(4, 2)
    assert plan.rewards(x).shape == (0, 4)
    torch.testing.assert_close(plan.log_factor(plan.rewards(x)), torch.zeros(4))


def test_read_plan_does_not_evaluate_rewards():
    calls = []

    def reward(x):
        calls.append(x)
        return r1(x)

    def m():
        tilted.factor("r", reward, pyro.sample("x", PRIOR))

    tilted.read_plan(m)
    assert calls == []


# -- read_plan errors -------------------------------------------------------------------------------
def _one_factor(**kwargs):
    def m():
        x = pyro.sample("x", PRIOR)
        tilted.factor("r", r1, x, **kwargs)

    return m


def _transformed():
    x = pyro.sample("x", PRIOR)
    tilted.factor("r", r1, 2 * x)


def _two_values():
    x = pyro.sample("x", PRIOR)
    tilted.factor("r", lambda a, b: r1(a) + r1(b), x, x)


def _two_sites():
    x = pyro.sample("x", PRIOR)
    y = pyro.sample("y", PRIOR)
    tilted.factor("r", r1, x + y)


def _normal_site():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    x = pyro.sample("x", PRIOR)
    tilted.factor("r", lambda x: r1(x) * scale, x)


def _no_site():
    pyro.sample("z", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))


def _duplicate():
    x = pyro.sample("x", PRIOR)
    tilted.factor("r", r1, x)
    tilted.factor("r", r2, x)


@pytest.mark.parametrize(
    "bad_model,fragment",
    [
        (_one_factor(temperature=0.0), "temperature must be a finite number > 0"),
        (_one_factor(temperature=-1.0), "temperature must be a finite number > 0"),
        (_one_factor(temperature=float("nan")), "temperature must be a finite number > 0"),
        (_one_factor(temperature=float("inf")), "temperature must be a finite number > 0"),
        (_one_factor(temperature="hot"), "temperature must be a positive number"),
        (_one_factor(tempering="cosine"), "tempering must be a tilted.tempering.Tempering or one of"),
        (_transformed, "not the value of a sequential site"),
        (_two_values, "names 2 values"),
        (_two_sites, "two sequential sites"),
        (_normal_site, "samples a LogNormal"),
        (_no_site, "no sequential site"),
        (_duplicate, "two factors are named 'r'"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if callable(v) else None,
)
def test_read_plan_errors(bad_model, fragment):
    with pytest.raises(ModelError, match=fragment):
        tilted.read_plan(bad_model)


def test_factor_statement_errors():
    x = torch.zeros(2)
    with pytest.raises(ModelError, match="non-empty string"):
        tilted.factor("", r1, x)
    with pytest.raises(ModelError, match="must be callable"):
        tilted.factor("r", 3.0, x)
    with pytest.raises(ModelError, match="name at least one site value"):
        tilted.factor("r", r1)


# -- reward errors ----------------------------------------------------------------------------------
def _plan_with(reward):
    def m():
        tilted.factor("bad", reward, pyro.sample("x", PRIOR))

    return tilted.read_plan(m)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_reward(value):
    def reward(x):
        r = r1(x).clone()
        r[1] = value
        return r

    plan = _plan_with(reward)
    with pytest.raises(NonFiniteError, match="reward 'bad' returned 1 non-finite"):
        plan.rewards(torch.zeros(3, 2))
    with pytest.raises(NonFiniteError):  # and under plain Pyro
        with pyro.plate("p", 3):
            tilted.factor("bad", reward, torch.zeros(3, 2))


@pytest.mark.parametrize(
    "reward", [lambda x: x, lambda x: r1(x).sum(), lambda x: r1(x)[:-1], lambda x: r1(x)[..., None]]
)
def test_wrong_reward_shape(reward):
    plan = _plan_with(reward)
    with pytest.raises(ShapeError, match="reward 'bad' returned shape"):
        plan.rewards(torch.zeros(3, 2))


# -- replay -----------------------------------------------------------------------------------------
def test_replay_returns_every_site_and_reuses_rewards():
    calls = {"n": 0}

    def reward(x):
        calls["n"] += 1
        return r1(x)

    def m(n):
        with pyro.plate("particles", n):
            x = pyro.sample("x", PRIOR)
            pyro.sample("obs", dist.Normal(x[..., 0], 1.0), obs=torch.zeros(n))
        tilted.factor("r", reward, x, temperature=0.5)
        pyro.deterministic("norm", x.norm(dim=-1))
        return x

    plan = tilted.read_plan(m, 5)
    assert calls["n"] == 0
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    rewards = plan.rewards(x)
    assert calls["n"] == 1

    sites = plan.replay(x, rewards)
    assert calls["n"] == 1  # rewards given: not called again
    assert set(sites) == {"x", "obs", "norm"}
    torch.testing.assert_close(sites["x"], x)
    torch.testing.assert_close(sites["norm"], x.norm(dim=-1))
    torch.testing.assert_close(sites["obs"], torch.zeros(5))

    again = plan.replay(x)  # no rewards: evaluated once, by the factor statement
    assert calls["n"] == 2
    torch.testing.assert_close(again["x"], x)

    # the replayed trace carries the cached reward / α
    cached = {"r": rewards[0]}
    from tilted.plan import _Replayer

    with _Replayer(cached):
        trace = poutine.trace(poutine.condition(m, data={"x": x})).get_trace(5)
    assert calls["n"] == 2
    torch.testing.assert_close(trace.nodes["r"]["fn"].log_factor, rewards[0] / 0.5)


# -- tempering schedules -------------------------------------------------------------------------------
@pytest.mark.parametrize("num_steps", [1, 5, 100])
def test_constant(num_steps):
    lam = Constant().lambdas(num_steps)
    assert lam.dtype == torch.float64 and lam.shape == (num_steps + 1,)
    assert (lam == 1).all()
    assert isinstance(as_tempering(None), Constant) and isinstance(as_tempering("none"), Constant)


@pytest.mark.parametrize("until", [1.0, 0.5, 0.3])
def test_linear(until):
    k = 10
    lam = Linear(until).lambdas(k)
    expected = torch.tensor([min(i / (until * k), 1.0) for i in range(k + 1)], dtype=torch.float64)
    expected[-1] = 1.0
    torch.testing.assert_close(lam, expected)
    assert lam[0] == 0 and (lam.diff() >= 0).all()


@pytest.mark.parametrize("gamma,num_steps", [(0.008, 100), (0.1, 10), (0.5, 20), (0.001, 50)])
def test_exponential(gamma, num_steps):
    lam = Exponential(gamma).lambdas(num_steps)
    expected = [min((1 + gamma) ** i - 1, 1.0) for i in range(num_steps + 1)]
    expected[-1] = 1.0
    torch.testing.assert_close(lam, torch.tensor(expected, dtype=torch.float64))
    assert lam[0] == 0 and lam[-1] == 1 and (lam.diff() >= 0).all()


def test_exponential_das_default_reaches_one_only_at_the_end():
    lam = Exponential().lambdas(100)  # (1.008)^99 − 1 ≈ 1.20 ≥ 1: capped at 1 from i = 87
    first_one = int((lam == 1).nonzero()[0])
    assert first_one == math.ceil(math.log(2) / math.log(1.008))


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: Linear(0.0), "Linear"),
        (lambda: Linear(1.5), "Linear"),
        (lambda: Linear(float("nan")), "Linear"),
        (lambda: Exponential(0.0), "Exponential"),
        (lambda: Exponential(-0.1), "Exponential"),
        (lambda: Exponential(float("inf")), "Exponential"),
        (lambda: Exponential(float("nan")), "Exponential"),
        (lambda: Adaptive(0.0), "Adaptive"),
        (lambda: Adaptive(1.0), "Adaptive"),
        (lambda: Adaptive(1.5), "Adaptive"),
        (lambda: Adaptive().lambdas(10), "no fixed λ"),
        (lambda: as_tempering(3), "tempering must be"),
    ],
)
def test_bad_schedule_parameters(make, fragment):
    with pytest.raises(ModelError, match=fragment):
        make()


def test_names_give_default_instances():
    assert isinstance(as_tempering("exponential"), Exponential) and as_tempering("exponential").gamma == 0.008
    assert isinstance(as_tempering("adaptive"), Adaptive) and as_tempering("adaptive").adaptive
    schedule = Linear(0.5)
    assert as_tempering(schedule) is schedule


def _kish(lw: torch.Tensor) -> torch.Tensor:
    """Kish ESS written out independently of tilted: (Σ w)² / Σ w²."""
    w = (lw - lw.max(-1, keepdim=True).values).exp()
    return w.sum(-1) ** 2 / (w**2).sum(-1)


def test_adaptive_solve_matches_brute_force():
    pytest.importorskip("tilted.inference.weights")
    gen = torch.Generator().manual_seed(0)
    n = 200
    # two runs: different rewards and previous weights; log w(λ) = log W_prev + (λ − λ_prev) r
    r = torch.stack(
        [torch.randn(n, generator=gen, dtype=torch.float64) * 3, torch.rand(n, generator=gen, dtype=torch.float64) * 20]
    )
    prev_lw = torch.stack(
        [torch.zeros(n, dtype=torch.float64), 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)]
    )
    lam_prev = torch.tensor([0.0, 0.2], dtype=torch.float64)

    def log_weights(lam):
        return prev_lw + (lam - lam_prev)[:, None] * r

    schedule = Adaptive(target_ess=0.5, tol=1e-6)
    lam = schedule.solve(log_weights, lam_prev)
    assert lam.shape == (2,)

    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    for run in range(2):
        lw = prev_lw[run] + (grid[:, None] - lam_prev[run]) * r[run]  # (G, N)
        ess = _kish(lw)
        floor = 0.5 * _kish(prev_lw[run])
        ok = (ess >= floor) & (grid >= lam_prev[run])
        best = float(grid[ok].max())
        assert best < 1, "the case must not be trivially λ = 1"
        assert float(lam[run]) == pytest.approx(best, abs=1e-5)
        # the returned λ keeps the ESS fraction; a step of the grid further does not
        assert float(_kish(log_weights(lam)[run])) >= float(floor) * (1 - 1e-9)


def test_adaptive_solve_known_answer_and_full_step():
    pytest.importorskip("tilted.inference.weights")
    # half the particles have r = 0, half r = c: ESS(λ)/N = (1 + e^{λc})² / (2 (1 + e^{2λc})).
    # ESS/N = 0.9 ⇔ (1 + u)² = 1.8 (1 + u²) with u = e^{λc} ⇔ 0.8u² − 2u + 0.8 = 0 ⇒ u = 2 (the root > 1).
    c = 10.0
    r = torch.tensor([[0.0] * 50 + [c] * 50], dtype=torch.float64)
    schedule = Adaptive(target_ess=0.9, tol=1e-10)
    lam = schedule.solve(lambda lam: lam[:, None] * r, torch.zeros(1, dtype=torch.float64))
    assert float(lam) == pytest.approx(math.log(2.0) / c, abs=1e-9)
    # a constant reward never lowers the ESS: jump straight to λ = 1
    flat = torch.full((1, 100), 3.0, dtype=torch.float64)
    lam = schedule.solve(lambda lam: lam[:, None] * flat, torch.tensor([0.4], dtype=torch.float64))
    assert float(lam) == 1.0
