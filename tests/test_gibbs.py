"""Particle Gibbs: exact properties, the stationary law on closed-form targets, and budgets.

Statistical tolerance (derivation). R independent chains (``num_runs=R``) each run S sweeps; after
the burn-in each chain's retained states x^{(r)}_1…x^{(r)}_n give per-chain averages f̄_r of a
statistic f (the coordinates, and the products of deviations about the exact mean, whose exact
expectation is the covariance). The chains are independent and, once stationary, each f̄_r is
unbiased for E_π[f] whatever the autocorrelation inside a chain, so (mean_r f̄_r − E_π f)/(s_f/√R)
is approximately Student-t with R − 1 degrees of freedom (s_f the across-chain standard deviation).
We allow t = the two-sided quantile at a family-wise false-alarm rate of 10⁻³, Bonferroni-corrected
over the comparisons of a test (``t_for``). The burn-in leaves the initial (SIR) draw out; with
N ≥ 4 particles the chain forgets it within a few sweeps (the renewal rates below are ≥ 0.5), so
the residual bias is far below the s.e. For the masked target, the per-state frequencies play the
role of f and the TV bound of tests/test_discrete_smc.py (with its derivation) is used.

Power: importance sampling with the same N = 4 (one draw per sweep from its weights) is biased
towards the prior; the same check flags it (asserted below), as it flags particle Gibbs run
against the untilted law. Ancestor sampling is checked under a deliberately misleading twist (any
ψ leaves the stationary law exact): dropping its −ψ_k(x^i) term gave |t| = 6.3 and 8.1 there
(seeds 11, 12) against 3.3 and 2.0 for the correct weights (t = 4.4). Under the mild default
potentials that bug shifts nothing measurable, so only the misleading-twist test has power against it.
"""

import math

import pytest
import torch
from test_discrete_smc import make_model as masked_model
from test_discrete_smc import process as masked_process
from test_discrete_smc import table, tv_bound
from test_search import t_for
from test_smc import gaussian_process, make_model

from tilted.distributions import TableReward
from tilted.errors import ModelError, NoDensityError
from tilted.inference import SMC, Importance, ParticleGibbs, Twist
from tilted.inference.budget import BudgetError
from tilted.inference.discrete import masked_move, taylor_tilt
from tilted.inference.proposals import gaussian_move
from tilted.plan import read_plan
from tilted.reference import LinearGaussianChain, MaskedChain, total_variation, weighted_law
from tilted.rewards import Quadratic
from tilted.tempering import Adaptive, Exponential

F64 = torch.float64
LINEAR = Quadratic.linear([1.0, 0.5])


def chain_moments_ok(x, mean, cov, t):
    """Across-chain t-check of the mean and covariance of x (R, n, d) (module docstring); returns the worst |t|."""
    x = x.double()
    dev = x - mean
    worst = 0.0
    for f, exact in ((x, mean), (dev[..., :, None] * dev[..., None, :], cov)):
        per_chain = f.mean(1)
        R = per_chain.shape[0]
        se = per_chain.std(0) / math.sqrt(R)
        worst = max(worst, float(((per_chain.mean(0) - exact).abs() / se).max()))
    return worst <= t, worst


def problem():
    process = gaussian_process([1.0, -1.0], [[0.5, 0.2], [0.2, 0.4]], num_steps=8)
    mean, cov, _ = LinearGaussianChain(process).tilted(LINEAR, 0.5)
    return process, make_model(process, LINEAR, 0.5), mean, cov


# -- exact properties ------------------------------------------------------------------------------
def test_pinned_log_ratio_equals_the_move_s_own():
    """The reference's weight uses log p − log q at a given point; at a drawn point it equals the draw's."""
    process = gaussian_process([1.0, -1.0], 0.5, num_steps=5)
    kernel = process.kernel()
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    x0 = process.predict(x, 3)
    drift = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1))
    mean, sigma = process.transition_moments(x, 3, x0)
    x_new, ratio = gaussian_move(mean, sigma, drift, 1, torch.Generator().manual_seed(2))
    assert torch.allclose(kernel.pinned(x, x0, 3, drift, x_new), ratio, atol=1e-9)
    assert torch.equal(kernel.pinned(x, x0, 3, None, x_new), torch.zeros(3, 4, dtype=F64))

    proc = masked_process(3, 3, 4, 0)
    mk = proc.kernel()
    xm = torch.full((2, 5, 3), proc.mask_id)
    xm[:, :, 0] = 1
    p0 = proc.predict(xm, 3)
    g = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    probs = proc.transition_probs(xm, 3, p0)
    xn, r = masked_move(probs, taylor_tilt(g, p0, xm == proc.mask_id), torch.Generator().manual_seed(4))
    assert torch.allclose(mk.pinned(xm, p0, 3, g, xn), r, atol=1e-12)
    # the transition log-density is −∞ exactly where the kernel cannot go (a visible token changes)
    changed = xn.clone()
    changed[..., 0] = 2
    assert torch.isneginf(mk.log_transition(xm, p0, 3, changed)).all()
    assert torch.isfinite(mk.log_transition(xm, p0, 3, xn)).all()


def test_exact_twist_renews_the_whole_path_every_sweep():
    """ψ = the exact soft value with the gradient (= optimal) proposal: every weight is equal, nothing is
    resampled, and the Metropolised selection always leaves the reference: every level changes in every
    sweep. With Gibbs selection the reference is kept with probability 1/N (binomial check, 4.5 s.e.)."""
    process = gaussian_process([1.0, -2.0], [[0.5, 0.1], [0.1, 2.0]], num_steps=6)
    reward, alpha = Quadratic.linear([1.5, -0.5]), 0.7
    twist = Twist(LinearGaussianChain(process).twist(reward, alpha))
    model = make_model(process, reward, alpha)
    res = ParticleGibbs(model, 5, 12, proposal="gradient", potential=twist, num_runs=3).run(seed=0)
    assert res.sweeps.renewed.all() and res.sweeps.moved.all()
    assert torch.allclose(res.trace.ess, torch.full_like(res.trace.ess, 5.0))
    res = ParticleGibbs(model, 4, 201, proposal="gradient", potential=twist, num_runs=4, selection="gibbs").run(seed=1)
    kept = 1 - res.sweeps.moved[1:].to(F64).mean()
    n = 200 * 4
    assert abs(float(kept) - 0.25) <= 4.5 * math.sqrt(0.25 * 0.75 / n)
    # whole paths move together: a level changes exactly when the selection moved
    assert torch.equal(res.sweeps.renewed[1:], res.sweeps.moved[1:, None].expand_as(res.sweeps.renewed[1:]))


def test_result_shapes_trace_and_reproducibility():
    process, model, _, _ = problem()
    res = ParticleGibbs(model, 6, 9, burn_in=3, num_runs=2).run(seed=3)
    assert res.particles["x"].shape == (2, 6, 2)
    assert res.rewards["r"].shape == (2, 6)
    assert res.sweeps.renewed.shape == (9, 9, 2) and res.sweeps.rewards.shape == (9, 1, 2)
    assert res.sweeps.renewed[0].all()
    assert torch.equal(res.log_evidence, res.sweeps.log_evidence[0])
    assert torch.allclose(res.rewards["r"], res.sweeps.rewards[3:, 0].T.to(res.rewards["r"].dtype))
    rho = res.sweeps.autocorrelation()
    assert rho.shape == (6, 2) and torch.allclose(rho[0], torch.ones(2, dtype=F64))
    assert (res.sweeps.integrated_time() >= 1 - 1e-12).all()
    again = ParticleGibbs(model, 6, 9, burn_in=3, num_runs=2).run(seed=3)
    assert torch.equal(res.particles["x"], again.particles["x"])
    one = ParticleGibbs(model, 6, 4).run(seed=0)  # unbatched: the run dimension is dropped everywhere
    assert one.particles["x"].shape == (3, 2) and one.sweeps.renewed.shape == (4, 9)
    assert one.sample(5, seed=0)["x"].shape == (5, 2)


def test_bad_settings():
    process, model, _, _ = problem()
    with pytest.raises(ModelError, match="num_particles ≥ 2"):
        ParticleGibbs(model, 1, 5)
    with pytest.raises(ModelError, match="multinomial"):
        ParticleGibbs(model, 4, 5, resampler="systematic")
    with pytest.raises(ModelError, match="burn_in"):
        ParticleGibbs(model, 4, 3, burn_in=3)
    with pytest.raises(ModelError, match="selection"):
        ParticleGibbs(model, 4, 3, selection="best")
    with pytest.raises(ModelError, match="fixed tempering"):
        ParticleGibbs(model, 4, 3, tempering=Adaptive()).run(seed=0)
    ddim = gaussian_process([0.0, 0.0], 1.0, num_steps=4, eta=0.0)
    with pytest.raises(NoDensityError, match="eta > 0"):
        ParticleGibbs(make_model(ddim, LINEAR), 4, 3).run(seed=0)


# -- the stationary law ------------------------------------------------------------------------------
VARIANTS = {
    "prior": {"ess_threshold": 1.0},  # resampling at every step exercises ancestor sampling at every level
    "prior-adaptive-resampling": {},
    "gradient-exp": {"proposal": "gradient", "tempering": Exponential(0.5), "ess_threshold": 1.0},
    "no-ancestor-sampling": {"ancestor_sampling": False, "ess_threshold": 1.0},
    "gibbs-selection-max": {"selection": "gibbs", "potential": "max", "ess_threshold": 1.0},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stationary_law_is_the_tilted_target(name):
    """N = 4 particles, 32 chains × 40 sweeps (burn-in 5): mean and covariance within t s.e. (module docstring)."""
    process, model, mean, cov = problem()
    t = t_for(len(VARIANTS) * 5, 32)  # 2 means + 3 distinct covariance entries per variant
    res = ParticleGibbs(model, 4, 40, burn_in=5, num_runs=32, **VARIANTS[name]).run(seed=11)
    ok, worst = chain_moments_ok(res.particles["x"], mean, cov, t)
    assert ok, (name, worst, t)


@pytest.mark.slow
def test_a_misleading_twist_keeps_the_stationary_law_exact():
    """ψ_k = −1.5 bᵀx for k > 0 points away from the tilt; conditional SMC is exact for any ψ, but it mixes
    slowly from the badly biased first draw, hence 150 sweeps with burn-in 50 (40/5 fail on that bias)."""
    process, model, mean, cov = problem()
    b = torch.tensor([1.0, 0.5])

    def misleading(x, k):
        return -1.5 * (x * b.to(x)).sum(-1).double() if k > 0 else (x * b.to(x)).sum(-1).double() / 0.5

    res = ParticleGibbs(model, 4, 150, burn_in=50, num_runs=32, ess_threshold=1.0, potential=Twist(misleading))
    ok, worst = chain_moments_ok(res.run(seed=11).particles["x"], mean, cov, t_for(5, 32))
    assert ok, worst


@pytest.mark.slow
def test_the_check_has_power():
    """The same check flags importance sampling at N = 4 (one weighted draw per 'sweep') and PG against the prior."""
    process, model, mean, cov = problem()
    t = t_for(5, 32)
    draws = []
    for s in range(35):
        res = Importance(model, 4, num_runs=32).run(seed=100 + s)
        draws.append(res.sample(1, seed=s)["x"][:, 0])
    ok, worst = chain_moments_ok(torch.stack(draws, 1), mean, cov, t)
    assert not ok, worst
    pg = ParticleGibbs(model, 4, 40, burn_in=5, num_runs=32).run(seed=11)
    prior_mean, prior_cov, _ = LinearGaussianChain(process).tilted(Quadratic.linear([0.0, 0.0]), 1.0)
    assert not chain_moments_ok(pg.particles["x"], prior_mean, prior_cov, t)[0]


@pytest.mark.slow
@pytest.mark.parametrize("proposal", ["prior", "gradient"])
def test_masked_stationary_law_matches_the_enumerated_target(proposal):
    """Masked diffusion V = 3, L = 3: the chains' pooled state frequencies against the exact tilted law.

    Per state, the mean over chains of each chain's frequency, with the across-chain s.e., in the TV
    bound of tests/test_discrete_smc.py (floored at the i.i.d. s.e. for R·n draws)."""
    proc = masked_process(3, 3, 4, 8, schedule="cosine")
    reward = TableReward(table(3, 3, 9, -1, 1))
    exact, _ = MaskedChain(proc).tilted(reward, 0.5)
    R, S, burn = 32, 50, 5
    res = ParticleGibbs(masked_model(proc, reward, 0.5), 4, S, burn_in=burn, num_runs=R, proposal=proposal).run(seed=2)
    law = weighted_law(res.particles["x"], res.log_weights, proc.vocab_size)  # (R, states): chain frequencies
    est, se = law.mean(0), law.std(0) / math.sqrt(R)
    tv, bound = float(total_variation(est, exact)), tv_bound(exact, se, R * (S - burn))
    assert tv <= bound, (tv, bound)


# -- budgets ------------------------------------------------------------------------------------------
def test_particle_gibbs_budget_sizes_the_sweeps():
    _, model, _, _ = problem()
    plan = read_plan(model)
    pg = ParticleGibbs(model, 4, None, budget=1000, proposal="gradient", num_runs=2)
    res = pg.run(seed=0)
    per_sweep = pg.cost(plan).scaled(8) + pg.fixed_cost(plan)
    assert res.config["num_sweeps"] == 1000 // per_sweep.denoiser_calls
    assert res.counts == per_sweep.scaled(res.config["num_sweeps"]) and res.counts.denoiser_calls <= 1000
    with pytest.raises(BudgetError):
        ParticleGibbs(model, 4, None, budget=10).run(seed=0)
    with pytest.raises(ModelError, match="num_sweeps or a budget"):
        ParticleGibbs(model, 4, None)


def test_diagnostics_judge_the_chain(tmp_path):
    """The DataTree carries the sweeps (not the last sweep's conditional-SMC trace); the mixing verdict passes
    for a long chain, fails for a short one and for a chain without ancestor sampling at a level that never
    renews, and survives a save/load round trip; the HTML report renders."""
    from tilted.diagnostics import diagnose, load, save, to_datatree, write_report

    _, model, _, _ = problem()
    long = ParticleGibbs(model, 4, 60, burn_in=5, num_runs=3, ess_threshold=1.0).run(seed=0)
    dt = to_datatree(long)
    assert "sweeps" in dt.children and "steps" not in dt.children
    assert dt["sweeps"]["renewed"].shape == (3, 60, 9)
    verdict = diagnose(long).get("gibbs_mixing")
    assert verdict.passed, verdict.message
    assert diagnose(long).get("distinct_ancestors").passed is None
    save(long, tmp_path / "pg.nc")
    assert diagnose(load(tmp_path / "pg.nc")).get("gibbs_mixing").passed
    short = ParticleGibbs(model, 4, 4, num_runs=3).run(seed=0)
    assert diagnose(short).get("gibbs_mixing").passed is False
    # without ancestor sampling the top levels coalesce onto the reference: renewal of x_K ≈ 6 % (docs/search.md)
    stuck = ParticleGibbs(model, 2, 60, burn_in=5, num_runs=3, ess_threshold=1.0, ancestor_sampling=False)
    assert diagnose(stuck.run(seed=0)).get("gibbs_mixing").value < diagnose(long).get("gibbs_mixing").value
    assert diagnose(SMC(model, 16).run(seed=0)).get("gibbs_mixing").passed is None
    write_report(long, tmp_path / "pg.html")
    assert "gibbs_mixing" in (tmp_path / "pg.html").read_text()


def test_joined_seeds_keep_every_chain_s_sweeps():
    """tilted run with several seeds joins results as runs: the sweeps join along the chain dimension too."""
    from tilted.diagnostics import diagnose
    from tilted.diagnostics.spec import concat_results

    _, model, _, _ = problem()
    parts = [ParticleGibbs(model, 4, 30, burn_in=3, keep_paths=True).run(seed=s) for s in (0, 1)]
    joined = concat_results(parts)
    assert joined.particles["x"].shape == (2, 27, 2) and joined.sweeps.renewed.shape == (30, 9, 2)
    assert torch.equal(joined.sweeps.rewards[..., 1], parts[1].sweeps.rewards)
    assert joined.sweeps.paths.shape == (30, 9, 2, 2)
    assert diagnose(joined).get("gibbs_mixing").passed is not None
