"""Processes with groups (one chain per prompt): layout, per-group conditioning, exactness per group."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_smc import gaussian_process, make_model

import tilted
from tilted.distributions import GaussianDiffusion
from tilted.errors import ModelError, ShapeError
from tilted.inference import SMC, SVDD, Importance, Twist
from tilted.reference import LinearGaussianChain
from tilted.rewards import Quadratic

MEANS = torch.tensor([[1.0, -2.0], [-3.0, 0.5], [0.0, 4.0]], dtype=torch.float64)
S2 = 0.6


class GroupGaussians(torch.nn.Module):
    """Exact posterior mean of x_0 ~ N(mean, s²I) from x_t, the mean given per element as context."""

    def __init__(self, alphas_cumprod: torch.Tensor, s2: float):
        super().__init__()
        self.register_buffer("ac", alphas_cumprod.to(torch.float64))
        self.s2 = s2

    def forward(self, x, t, mean):
        a = self.ac[t].reshape((-1,) + (1,) * (x.ndim - 1)).to(x.dtype)
        return mean + self.s2 * a.sqrt() / (a * self.s2 + 1 - a) * (x - a.sqrt() * mean)


def grouped_process(num_steps=10, eta=1.0, means=MEANS):
    ref = gaussian_process(means[0], S2, num_steps=num_steps, eta=eta)
    denoiser = GroupGaussians(ref.scheduler.alphas_cumprod, S2)
    return GaussianDiffusion(
        denoiser,
        event_shape=(2,),
        num_steps=num_steps,
        eta=eta,
        prediction_type="sample",
        context={"mean": means},
        batch_shape=(means.shape[0],),
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans(), st.integers(0, 2))
def test_site_layout_round_trip_and_group_order(P, M, N, extra, grouped, lead):
    process = grouped_process(means=MEANS[:P].expand(P, 2)) if grouped else gaussian_process([0.0, 0.0], 1.0)
    plan = tilted.read_plan(make_model(process, None))
    R = M * plan.groups
    batch = (R, N) + (2,) * extra
    x = torch.randn((3,) * lead + batch + (2,))
    site = plan.to_site(x, len(batch), lead=lead)
    assert torch.equal(plan.from_site(site, batch, lead=lead), x)
    if grouped:  # run r = m·P + p sits in group p, right before the event
        assert site.shape == (3,) * lead + (M * N * 2**extra, P, 2)
        r = M * P - 1  # the last run: repetition M − 1 of group P − 1
        rows = site[(0,) * lead + (slice(None), r % P)].reshape(M, -1, 2)[r // P]
        assert torch.equal(rows, x[(0,) * lead + (r,)].reshape(-1, 2))
    else:
        assert site.shape == (3,) * lead + (R * N * 2**extra, 2)


def test_each_group_reads_its_own_context():
    process = grouped_process()
    x = torch.randn(5, 3, 2)
    for k in (1, 4, 10):
        pred = process.predict(x, k)
        for p in range(3):
            alone = gaussian_process(MEANS[p], S2).predict(x[:, p], k)
            assert torch.allclose(pred[:, p].double(), alone.double(), atol=1e-5)
    with pytest.raises(ShapeError, match="groups, then the event"):
        process.predict(torch.randn(5, 2, 2), 3)
    draws = process.sample((4,), generator=0)
    assert draws.shape == (4, 3, 2)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_exact_twist_per_group_gives_constant_weights_and_each_groups_evidence(eta, float64):
    """Each group is its own linear-Gaussian chain; with its exact soft value as the twist and the gradient
    proposal every increment is constant: ESS = N at every step and log Ẑ exact for every run."""
    process = grouped_process(num_steps=8, eta=eta)
    reward, alpha = Quadratic.linear([1.5, -0.5]), 0.7
    chains = [LinearGaussianChain(gaussian_process(m, S2, num_steps=8, eta=eta)) for m in MEANS]
    twists = [c.twist(reward, alpha) for c in chains]
    log_z = torch.stack([c.tilted(reward, alpha)[2] for c in chains])
    M, P = 2, 3

    def twist(x, k):  # engine layout (R, N, 2), run r = m·P + p holds group p
        return torch.stack([twists[r % P](x[r], k) for r in range(x.shape[0])])

    res = SMC(
        make_model(process, reward, alpha),
        5,
        proposal="gradient",
        potential=Twist(twist),
        num_runs=M,
        ess_threshold=1.0,
    ).run(seed=0)
    assert res.particles["x"].shape == (M * P, 5, 2) and res.log_evidence.shape == (M * P,)
    assert torch.allclose(res.trace.ess, torch.full_like(res.trace.ess, 5.0), rtol=1e-9)
    assert torch.allclose(res.log_evidence, log_z.repeat(M), atol=1e-8)


def test_groups_are_independent_targets_under_smc_and_search():
    """Per-group weighted means against each group's exact tilted mean (z·s.e. across runs, z = 4)."""
    process = grouped_process(num_steps=10)
    reward, alpha = Quadratic(A=-0.5 * torch.eye(2), b=[1.0, 0.0]), 1.0
    exact = torch.stack(
        [LinearGaussianChain(gaussian_process(m, S2, num_steps=10)).tilted(reward, alpha)[0] for m in MEANS]
    )
    M, P = 64, 3
    res = SMC(make_model(process, reward, alpha), 32, num_runs=M, proposal="gradient").run(seed=1)
    means = res.mean().reshape(M, P, 2)
    err = means.mean(0) - exact
    se = means.std(0) / math.sqrt(M)
    assert (err.abs() < 4 * se + 1e-3).all(), (err, se)
    # one call, no num_runs: the groups are the runs
    single = Importance(make_model(process, reward, alpha), 8).run(seed=2)
    assert single.particles["x"].shape == (P, 8, 2) and single.batched
    searched = SVDD(make_model(process, reward, alpha), 4, num_candidates=3).run(seed=3)
    assert searched.particles["x"].shape == (P, 4, 2)
    assert ((searched.particles["x"] - MEANS[:, None]).norm(dim=-1) < 6).all()


def test_chunked_grouped_runs_equal_unchunked():
    process = grouped_process(num_steps=6)
    model = make_model(process, Quadratic(A=-0.3 * torch.eye(2), b=[0.5, 1.0]), 0.5)
    a = SMC(model, 6, num_runs=2, proposal="gradient").run(seed=4)
    b = SMC(model, 6, num_runs=2, proposal="gradient", batch_size=4).run(seed=4)
    assert torch.allclose(a.particles["x"], b.particles["x"], atol=1e-5)
    assert torch.allclose(a.log_evidence, b.log_evidence, atol=1e-5)
    assert a.counts == b.counts


def test_bad_group_shapes_are_refused():
    with pytest.raises(ShapeError, match=r"\(P,\)"):
        GaussianDiffusion(lambda x, t: x, event_shape=(2,), batch_shape=(2, 3))
    plan = tilted.read_plan(make_model(grouped_process(), None))
    with pytest.raises(ShapeError, match="multiple of the process's 3 groups"):
        plan.to_site(torch.zeros(4, 2, 2), 2)


def test_diagnostics_compare_log_evidence_within_groups_not_across(float64):
    """Groups have different evidences (here log Z spans several units): the variance check is per group."""
    from tilted.diagnostics import diagnose, to_datatree

    process = grouped_process(num_steps=6)
    reward, alpha = Quadratic.linear([1.5, -0.5]), 0.7
    res = SMC(make_model(process, reward, alpha), 64, num_runs=4, proposal="gradient").run(seed=0)
    lz = res.log_evidence.reshape(4, 3)
    assert lz.mean(0).max() - lz.mean(0).min() > 3  # pooled across groups the variance would be large
    verdict = diagnose(to_datatree(res)).get("log_evidence_variance")
    assert verdict.passed and abs(verdict.value - float(lz.var(0).max())) < 1e-9 and "group" in verdict.message
    one = diagnose(to_datatree(SMC(make_model(process, reward, alpha), 8).run(seed=1)))
    assert one.get("log_evidence_variance").passed is None


def test_gaussian_soft_value_refuses_groups():
    from tilted.inference import GaussianSoftValue

    with pytest.raises(ModelError, match="without groups"):
        GaussianSoftValue(make_model(grouped_process(), Quadratic.linear([1.0, 0.0])))


def test_learned_soft_value_refuses_groups():
    from tilted.inference import LearnedSoftValue

    with pytest.raises(ModelError, match="one value per prompt"):
        LearnedSoftValue.fit(make_model(grouped_process(), Quadratic.linear([1.0, 0.0])), progress=False)
