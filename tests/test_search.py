"""SVDD, beam search, best-of-N and nested importance sampling: defining properties.

Exact checks use the generators: an engine with one candidate consumes randomness as the
pretrained sampler does, so draws are compared bit for bit; selections are re-derived from the same
generator stream. Statistical checks follow tests/test_smc.py: R independent runs, an estimate per
run, and a tolerance t·s.e. where s.e. is the across-run standard error (valid whatever the
correlation between particles of one run, e.g. beams sharing parents) and t the Student quantile with
R − 1 degrees of freedom at a Bonferroni-corrected family-wise false-alarm rate of 10⁻³.
"""

import math
import warnings

import pyro
import pytest
import torch
from scipy.stats import t as student
from test_discrete_smc import check_against_chain, table, tv_bound
from test_discrete_smc import make_model as masked_model
from test_discrete_smc import process as masked_process
from test_smc import gaussian_process, make_model, pooled, z_for

import tilted
from tilted.distributions import TableReward
from tilted.distributions.masked import draw_categorical
from tilted.distributions.tabular import sequence_index
from tilted.errors import ModelError
from tilted.inference import SMC, SVDD, BeamSearch, BestOfN, NestedIS
from tilted.reference import LinearGaussianChain, MaskedChain, total_variation, weighted_law
from tilted.rewards import Quadratic
from tilted.tempering import Adaptive, Exponential

ZERO = lambda x: 0.0 * x[..., 0]  # noqa: E731 - a reward that ignores x (differentiable, zero gradient)
LINEAR = Quadratic.linear([1.0, 0.5])


def t_for(num_comparisons: int, runs: int, family_rate: float = 1e-3) -> float:
    return float(student.isf(family_rate / (2 * num_comparisons), runs - 1))


def assert_law(x, mean, cov, tol):
    """Per-run mean and covariance (about the exact mean) of x (R, N, d) against the exact law, within tol·s.e.

    The run averages are independent and unbiased for the exact moments, so their mean is off by
    at most tol across-run standard errors (tol from :func:`t_for`).
    """
    x = x.double()
    dev = x - mean
    R = x.shape[0]
    for f, exact in ((x, mean), (dev[..., :, None] * dev[..., None, :], cov)):
        per_run = f.mean(1)
        est, se = per_run.mean(0), per_run.std(0) / math.sqrt(R)
        assert ((est - exact).abs() <= tol * se).all(), (est, exact, se)


def small_process(**kw):
    return gaussian_process([1.0, -1.0], [[1.0, 0.4], [0.4, 0.6]], num_steps=kw.pop("num_steps", 8), **kw)


SEARCH = {
    "svdd": lambda m, n, r, **kw: SVDD(m, n, num_candidates=4, num_runs=r, **kw),
    "svdd-greedy": lambda m, n, r, **kw: SVDD(m, n, num_candidates=4, temperature=0, num_runs=r, **kw),
    "beam": lambda m, n, r, **kw: BeamSearch(m, n, num_candidates=4, num_runs=r, **kw),
    "best-of-n": lambda m, n, r, **kw: BestOfN(m, n, num_candidates=4, num_runs=r, **kw),
    "nested-is": lambda m, n, r, **kw: NestedIS(m, n, num_candidates=4, num_runs=r, **kw),
}


# -- exact properties -----------------------------------------------------------------------------
@pytest.mark.parametrize("engine", [SVDD, BestOfN, NestedIS, BeamSearch])
def test_one_candidate_is_pretrained_sampling_draw_for_draw(engine):
    process = small_process()
    extra = {"ess_threshold": 0.0} if engine is NestedIS else {}  # nested IS: importance sampling, no resampling
    res = engine(make_model(process, LINEAR), 16, num_candidates=1, num_runs=3, **extra).run(seed=7)
    want = process.sample((3, 16), generator=7)
    x = res.particles["x"]
    if engine is BeamSearch:  # the last step orders the beams by value
        order = LINEAR(want).argsort(-1, descending=True)
        want = want[torch.arange(3)[:, None], order]
    assert torch.equal(x, want)
    assert torch.allclose(res.rewards["r"], LINEAR(res.particles["x"]))


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_zero_reward_samples_the_pretrained_law(name):
    process = small_process()
    mean, cov = LinearGaussianChain(process).marginal(0)
    R = 32
    res = SEARCH[name](make_model(process, ZERO), 64, R).run(seed=1)
    assert_law(res.particles["x"], mean, cov, t_for(5 * len(SEARCH) + 10, R))


def test_nested_is_with_one_candidate_is_bootstrap_smc():
    process = small_process()
    model = make_model(process, Quadratic(A=-0.3 * torch.eye(2), b=[1.0, 0.5]), 0.7)
    settings = [
        {},
        {"potential": "max", "tempering": Adaptive(), "ess_threshold": 0.5, "resampler": "ssp"},
        {"potential": "sum", "tempering": Exponential(0.3)},
    ]
    for kw in settings:
        a = NestedIS(model, 32, num_candidates=1, num_runs=3, **kw).run(seed=4)
        b = SMC(model, 32, num_runs=3, **{"ess_threshold": 1.0, **kw}).run(seed=4)
        assert torch.equal(a.particles["x"], b.particles["x"])
        assert torch.equal(a.log_weights, b.log_weights) and torch.equal(a.log_evidence, b.log_evidence)
        assert torch.equal(a.trace.ancestors, b.trace.ancestors) and a.counts == b.counts


@pytest.mark.parametrize("c,alpha", [(0.0, 1.0), (2.5, 1.0), (-7.0, 0.3)])
def test_nested_is_constant_reward_gives_c_over_alpha(c, alpha):
    process = small_process(num_steps=5)
    res = NestedIS(make_model(process, lambda x: ZERO(x) + c, alpha), 16, num_candidates=3, num_runs=2).run(seed=1)
    assert torch.allclose(res.log_evidence, torch.full((2,), c / alpha, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(res.log_weights, torch.full((2, 16), -math.log(16), dtype=torch.float64), atol=1e-9)


def _replay_candidates(process, gen, x, k, M):
    """The candidates an engine draws at step k from states x (R, N, d), from the same generator."""
    mean, sigma = process.transition_moments(x, k)
    return mean[:, :, None] + sigma * torch.randn(mean.shape[:2] + (M,) + mean.shape[2:], generator=gen)


def test_beam_search_keeps_the_highest_value_candidates():
    """Two stochastic steps (ᾱ_0 < 1): the beams after each step are the N best of the N·M candidates,
    by r(x̂_0) after the first step and by the exact reward after the last; the trace names the parents."""
    process = small_process(num_steps=2, final_alpha_cumprod=0.99)
    N, M = 3, 4
    res = BeamSearch(make_model(process, LINEAR), N, num_candidates=M).run(seed=5)
    gen = torch.Generator().manual_seed(5)
    beams = torch.randn((1, N, 2), generator=gen)
    for k, score in ((2, lambda c: LINEAR(process.predict(c, 1))), (1, LINEAR)):
        cands = _replay_candidates(process, gen, beams, k, M).reshape(1, N * M, 2)
        values = score(cands)
        best = values.argsort(-1, descending=True)[:, :N]
        assert torch.equal(res.trace.ancestors[3 - k], best[0] // M)
        beams = cands[:, best[0]]
        kept = values[0, best[0]]
        assert (kept.min() >= values[0].sort(descending=True).values[N:]).all()
    assert torch.equal(res.particles["x"], beams[0])
    assert torch.equal(res.rewards["r"], LINEAR(beams[0]))
    assert (res.rewards["r"].diff() <= 0).all()  # best first


def test_greedy_svdd_selects_the_argmax_candidate_and_returns_x0():
    process = small_process(num_steps=2, final_alpha_cumprod=0.99)
    N, M = 4, 5
    res = SVDD(make_model(process, LINEAR), N, num_candidates=M, temperature=0).run(seed=2)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((1, N, 2), generator=gen)
    for k, score in ((2, lambda c: LINEAR(process.predict(c, 1))), (1, LINEAR)):
        cands = _replay_candidates(process, gen, x, k, M)
        x = cands[0, torch.arange(N), score(cands)[0].argmax(-1)][None]
    assert torch.equal(res.particles["x"], x[0])


def test_svdd_returns_x0_not_the_penultimate_state():
    """Data with almost no variance in y: x_0 has y ≈ −1 while x_1 is still noisy (the reference SVDD code
    returns x_1); the rewards are the exact rewards of the returned x_0."""
    process = gaussian_process([1.0, -1.0], torch.diag(torch.tensor([1.0, 1e-6])), num_steps=10)
    res = SVDD(make_model(process, LINEAR), 64, num_candidates=4).run(seed=0)
    assert ((res.particles["x"][:, 1] + 1).abs() < 0.01).all()
    assert torch.equal(res.rewards["r"], LINEAR(res.particles["x"]))


def test_best_of_n_keeps_the_best_of_its_chains():
    process = small_process()
    N, M = 3, 5
    res = BestOfN(make_model(process, LINEAR, 0.5), N, num_candidates=M).run(seed=3)
    chains = process.sample((1, N * M), generator=3).reshape(N, M, 2)
    want = chains[torch.arange(N), LINEAR(chains).argmax(-1)]
    assert torch.equal(res.particles["x"], want)


def test_search_raises_the_reward():
    """Not a property of a target (these engines have none): a sanity check that selection by value works."""
    process = small_process()
    pretrained = LINEAR(process.sample((4, 64), generator=0)).mean()
    for name in ("svdd", "beam", "best-of-n", "nested-is"):
        res = SEARCH[name](make_model(process, LINEAR), 64, 4).run(seed=0)
        assert res.rewards["r"].mean() > pretrained + 0.3


# -- statistical exactness of nested IS ----------------------------------------------------------
NESTED = {
    "M2-tweedie": {"num_candidates": 2},
    "M8-tweedie-adaptive-resampling": {"num_candidates": 8, "ess_threshold": 0.5, "resampler": "stratified"},
    "M4-max-exponential": {"num_candidates": 4, "potential": "max", "tempering": Exponential(0.3)},
    "M4-tweedie-adaptive-tempering": {"num_candidates": 4, "tempering": Adaptive(), "resampler": "ssp"},
}


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_is_matches_the_closed_form(name):
    process = gaussian_process([1.0, -1.0], [[1.0, 0.4], [0.4, 0.6]], num_steps=10)
    reward, alpha = Quadratic(A=[[-0.4, 0.1], [0.1, -0.2]], b=[1.0, 0.5]), 0.8
    mean, cov, log_z = LinearGaussianChain(process).tilted(reward, alpha)
    res = NestedIS(make_model(process, reward, alpha), 128, num_runs=32, **NESTED[name]).run(seed=0)
    z = z_for(len(NESTED) * 6)  # 2 means + 3 distinct covariances + 1 evidence per setting
    x = res.particles["x"].double()
    dev = x - mean
    for f, exact in ((x, mean), (dev[..., :, None] * dev[..., None, :], cov)):
        est, se = pooled(res, f)
        assert ((est - exact).abs() <= z * se).all(), (est, exact, se)
    ratio = (res.log_evidence - log_z).exp()
    if "adaptive-tempering" not in name:  # Ẑ is unbiased for fixed schedules only
        assert abs(float(ratio.mean()) - 1) <= z * float(ratio.std()) / math.sqrt(ratio.numel())


def test_more_candidates_adapt_nested_is_particles():
    """The local choice moves particles towards the target before weighting: the weights spread less."""
    process = gaussian_process([1.0, -1.0], [[1.0, 0.4], [0.4, 0.6]], num_steps=10)
    model = make_model(process, Quadratic(A=[[-0.4, 0.1], [0.1, -0.2]], b=[1.0, 0.5]), 0.3)
    ess = [NestedIS(model, 64, num_candidates=m, num_runs=8, ess_threshold=0.0).run(seed=0).ess.mean() for m in (1, 8)]
    assert ess[1] > 2 * ess[0]  # final ESS ≈ 14 of 64 with M = 1, ≈ 44 with M = 8 (seeds 0–2)


# -- results, counts and settings ------------------------------------------------------------------
def test_result_fields_and_counts():
    K, N, M = 6, 5, 3
    process = small_process(num_steps=K)  # ᾱ_0 = 1: the last step is deterministic (one candidate)
    model = make_model(process, LINEAR)
    for name in ("svdd", "beam"):
        res = {"svdd": SVDD, "beam": BeamSearch}[name](model, N, num_candidates=M).run(seed=0)
        # x̂_0(x_K), then M candidates per particle at levels K−1..1; the last step's x_0 = x̂_0(x_1) is known
        assert res.counts.denoiser_calls == N + N * M * (K - 1)
        assert res.counts.reward_calls == N * M * (K - 1) + N and res.counts.gradient_evaluations == 0
        assert torch.isnan(res.log_evidence) and torch.allclose(res.weights, torch.full((N,), 1 / N).double())
        assert res.trace.ess.shape == (K + 1,) and (res.trace.ess == N).all()
        assert res.trace.lambdas.shape == (K + 1, 1) and (res.trace.lambdas == 0).all()
        assert torch.isnan(res.trace.log_evidence_increments).all()
    assert not res.trace.resampled[0] and res.trace.resampled[1:-1].any()  # beams change parents
    res = BestOfN(model, N, num_candidates=M, num_runs=2).run(seed=0)
    assert res.particles["x"].shape == (2, N, 2) and res.counts.denoiser_calls == 2 * N * M * K
    assert res.counts.reward_calls == 2 * N * M
    res = NestedIS(model, N, num_candidates=M).run(seed=0)
    assert res.counts.denoiser_calls == N + N * M * (K - 1) and res.counts.reward_calls == N + N * M * (K - 1)
    assert res.config["num_candidates"] == M and res.config["engine"] == "NestedIS"


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_same_seed_same_result_and_chunking_changes_nothing(name):
    model = make_model(small_process(), LINEAR)
    a = SEARCH[name](model, 12, 2).run(seed=11)
    b = SEARCH[name](model, 12, 2, batch_size=5).run(seed=11)
    assert torch.equal(a.particles["x"], b.particles["x"]) and a.counts == b.counts
    assert torch.equal(a.log_weights, b.log_weights)
    c = SEARCH[name](model, 12, 2).run(seed=12)
    assert not torch.equal(a.particles["x"], c.particles["x"])


def test_bad_settings():
    model = make_model(small_process(), LINEAR)
    for engine in (SVDD, BeamSearch, BestOfN, NestedIS):
        for m in (0, -1, 2.5, True):
            with pytest.raises(ModelError, match="num_candidates"):
                engine(model, 4, num_candidates=m)
        with pytest.raises(ValueError):
            engine(model, 0)
        with pytest.raises(ValueError):
            engine(model, 4, num_runs=0)
        with pytest.raises(ValueError):
            engine(model, 4, batch_size=0)
    for temperature in (-1.0, math.nan, math.inf, "hot"):
        with pytest.raises(ModelError, match="temperature"):
            SVDD(model, 4, temperature=temperature)


def test_deterministic_kernels():
    """η = 0: one candidate per particle, so SVDD and beam search are the pretrained DDIM sampler (with a
    warning); best-of-N searches the initial noise, silently."""
    process = small_process(eta=0.0)
    model = make_model(process, LINEAR)
    want = process.sample((8,), generator=0)
    for engine in (SVDD, BeamSearch):
        with pytest.warns(UserWarning, match="deterministic"):
            res = engine(model, 8, num_candidates=4).run(seed=0)
        assert torch.allclose(res.particles["x"].sort(0).values, want.sort(0).values)
        assert res.counts.denoiser_calls == 8 * process.num_steps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = BestOfN(model, 1, num_candidates=8).run(seed=0)
    assert torch.equal(res.particles["x"][0], want[LINEAR(want).argmax()])


def test_non_differentiable_rewards_are_fine():
    model = make_model(small_process(), lambda x: (x[..., 0] > 1).double())
    for name in sorted(SEARCH):
        assert SEARCH[name](model, 8, 1).run(seed=0).rewards["r"].shape == (1, 8)  # num_runs=1: batched


def test_multiple_factors_use_their_temperatures():
    process = small_process(num_steps=2, final_alpha_cumprod=0.99)

    def model():
        x = pyro.sample("x", process)
        tilted.factor("a", lambda x: x[..., 0], x, temperature=0.1)
        tilted.factor("b", lambda x: -x[..., 0], x, temperature=1.0)

    res = BestOfN(model, 1, num_candidates=16).run(seed=0)
    chains = process.sample((16,), generator=0)
    assert torch.equal(res.particles["x"][0], chains[chains[:, 0].argmax()])  # Σ r_j/α_j = 9 x
    res = SVDD(model, 4, num_candidates=4, temperature=0).run(seed=0)  # argmax of Σ r_j = 0: the first candidate
    assert res.rewards["a"].shape == (4,)


# -- masked (discrete) diffusion -------------------------------------------------------------------
def masked_law_check(res, exact, V):
    """The law of unweighted particles over V^L against ``exact``, with the TV bound of test_discrete_smc
    computed from the across-run standard error of the per-run empirical laws."""
    law = weighted_law(res.particles["x"], res.log_weights, V)  # (R, S)
    R, N = res.log_weights.shape
    est, se = law.mean(0), law.std(0) / math.sqrt(R)
    tv, bound = float(total_variation(est, exact)), tv_bound(exact, se, R * N)
    assert tv <= bound, (tv, bound)


@pytest.mark.parametrize("engine", [SVDD, BestOfN, BeamSearch])
def test_masked_one_candidate_is_pretrained_sampling_draw_for_draw(engine):
    proc = masked_process(3, 3, 4, 0)
    reward = TableReward(table(3, 3, 1))
    res = engine(masked_model(proc, reward, 0.5), 16, num_candidates=1, num_runs=2).run(seed=3)
    want = proc.sample((2, 16), generator=3)
    x = res.particles["x"]
    if engine is BeamSearch:  # reordered by value at the last step: compare the multisets
        x, want = (sequence_index(v, 3).sort(-1).values for v in (x, want))
    assert torch.equal(x, want)


@pytest.mark.parametrize("fill", ["soft", "argmax"])
def test_masked_nested_is_with_one_candidate_is_bootstrap_smc(fill):
    proc = masked_process(3, 3, 4, 0)
    model = masked_model(proc, TableReward(table(3, 3, 1)), 0.5)
    a = NestedIS(model, 32, num_candidates=1, num_runs=3, fill=fill).run(seed=4)
    b = SMC(model, 32, num_runs=3, ess_threshold=1.0, fill=fill).run(seed=4)
    assert torch.equal(a.particles["x"], b.particles["x"]) and torch.equal(a.log_evidence, b.log_evidence)
    assert a.counts == b.counts


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_masked_zero_reward_samples_the_pretrained_law(name):
    proc = masked_process(3, 3, 4, 0)
    res = SEARCH[name](masked_model(proc, TableReward(torch.zeros(3, 3, 3))), 64, 32).run(seed=0)
    masked_law_check(res, MaskedChain(proc).law(), 3)


@pytest.mark.parametrize("fill", ["soft", "argmax"])
def test_masked_nested_is_matches_the_exact_tilted_law(fill):
    proc = masked_process(3, 3, 4, 0)
    engine = lambda m, n, r: NestedIS(m, n, num_candidates=4, num_runs=r, fill=fill)  # noqa: E731
    check_against_chain(engine, proc, TableReward(table(3, 3, 1)), 0.5)


@pytest.mark.parametrize("engine", [SVDD, BeamSearch])
def test_masked_greedy_selection_by_the_argmax_fill_value(engine):
    """Two steps, fill="argmax": candidates are scored by r(argmax x̂_0(c)) and, at the last step, by r(c);
    re-derived from the same generator stream (the argmax fill draws nothing)."""
    proc = masked_process(3, 3, 2, 0)
    reward = TableReward(table(3, 3, 1))
    N, M = 3, 4
    extra = {"temperature": 0} if engine is SVDD else {}
    res = engine(masked_model(proc, reward), N, num_candidates=M, fill="argmax", **extra).run(seed=1)
    gen = torch.Generator().manual_seed(1)
    x = proc.draw_initial((1, N))
    for k, score in ((2, lambda c: reward(proc.predict(c, 1).argmax(-1))), (1, reward)):
        probs = proc.transition_probs(x, k).unsqueeze(2)
        cands = draw_categorical(probs.expand(1, N, M, 3, 4), gen)
        if engine is SVDD:
            x = cands[0, torch.arange(N), score(cands)[0].argmax(-1)][None]
        else:
            flat = cands.reshape(1, N * M, 3)
            x = flat[:, score(flat)[0].double().topk(N).indices]  # (ties broken as the engine breaks them)
    assert torch.equal(res.particles["x"], x[0])
