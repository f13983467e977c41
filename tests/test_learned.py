"""LearnedSoftValue: a soft value fitted by Monte-Carlo regression on pretrained chains.

Exact checks: the loss's minimiser over a constant is log mean exp(y) (its gradient vanishes there) and
its tangent continuation keeps gradients finite; level 0 is the exact reward; save/load reproduces the
values. Fit quality: on a linear-Gaussian chain, where the soft value is known in closed form
(`LinearGaussianChain.twist`), the fitted value explains nearly all of the exact value's variation
across states. Statistical check: SMC with the fitted value matches the chain's closed form (any
twist keeps SMC exact; a good one makes the weights nearly equal, which is checked too).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_smc import assert_moments_match, gaussian_process, make_model, z_for

from tilted.distributions import MaskedDiffusion, TabularSequences
from tilted.errors import ModelError
from tilted.inference import SMC, LearnedSoftValue, Twist
from tilted.inference.learned import CHECKS, U_MAX, soft_value_loss
from tilted.reference import LinearGaussianChain
from tilted.rewards import Quadratic

F64 = torch.float64
MEAN, COV = [1.0, -1.0], [[1.0, 0.4], [0.4, 0.6]]
REWARD, ALPHA = Quadratic(A=[[-0.4, 0.1], [0.1, -0.2]], b=[1.0, 0.5]), 0.8
FIT = {"num_chains": 4096, "steps": 1500, "minibatch": 1024, "hidden": 64}


@pytest.fixture(scope="module")
def fitted():
    process = gaussian_process(MEAN, COV, num_steps=10)
    model = make_model(process, REWARD, ALPHA)
    return process, model, LearnedSoftValue.fit(model, seed=0, progress=False, **FIT)


def test_loss_is_minimised_by_the_log_mean_exp():
    """d/df mean ℓ(f, y) = 1 − mean exp(y − f) vanishes at f = log mean exp(y), and only there."""
    y = 3 * torch.randn(1000, dtype=F64, generator=torch.Generator().manual_seed(0))
    best = float(torch.logsumexp(y, 0) - math.log(len(y)))
    for f0, sign in ((best, 0), (best - 0.5, -1), (best + 0.5, 1)):
        f = torch.tensor(f0, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(soft_value_loss(f, y), f)
        assert abs(float(g)) < 1e-12 if sign == 0 else float(g) * sign > 0.1


def test_loss_follows_its_tangent_beyond_u_max():
    """For u = y − f > U_MAX the loss is linear in u with slope e^U_MAX − 1: finite, no overflow, no cancellation."""
    f = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    y = torch.tensor([1.0, U_MAX + 10, 1000.0])
    loss = soft_value_loss(f, y)
    (g,) = torch.autograd.grad(loss, f)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    slope = -(math.exp(U_MAX) - 1) / 3
    assert g[1] == pytest.approx(slope, rel=1e-5) and g[2] == pytest.approx(slope, rel=1e-5)
    assert g[0] == pytest.approx(-(math.exp(1.0) - 1) / 3, rel=1e-5)


def test_fit_recovers_the_exact_soft_value(fitted):
    """Fresh pretrained states: learned − exact ψ_k, less its mean (a constant per level changes nothing), has a
    standard deviation of at most 0.1 nats at every level (measured: 0.01 to 0.06; a change of 0.1 in a
    log-potential moves a weight by 10 %). A fit that learned nothing (a constant) fails at levels 1 to 4,
    where the exact value varies by 0.38 to 0.88 nats across states."""
    process, model, value = fitted
    exact = LinearGaussianChain(process).twist(REWARD, ALPHA)
    gen = torch.Generator().manual_seed(1)
    x = process.draw_initial((1, 2000), gen)
    for k in process.levels:
        psi, ref = value(x, k), exact(x.double(), k)
        err = psi - ref
        assert float((err - err.mean()).std()) <= 0.1, k
        x = process.draw_transition(x, k, gen)
    assert value.training["validation_loss"] < value.training["constant_loss"]


def test_early_stopping_keeps_the_best_held_out_weights(fitted):
    """The kept weights are those of the lowest held-out loss among the CHECKS evaluations, and they give it."""
    process, model, value = fitted
    history = value.training["validation_history"]
    assert len(history) == CHECKS and history[-1][0] == FIT["steps"]
    best_step, best_loss = min(history, key=lambda h: h[1])
    assert value.training["best_step"] == best_step
    assert value.training["validation_loss"] == pytest.approx(best_loss, rel=1e-6)


class Stuck(torch.nn.Module):
    """A network that predicts 20 nats too much everywhere and barely learns (tiny lr): worse than a constant."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t):
        return 20 + self.w * z.flatten(1).sum(-1)


def test_a_fit_no_better_than_a_constant_warns():
    model = make_model(gaussian_process(MEAN, COV, num_steps=3), REWARD, ALPHA)
    with pytest.warns(UserWarning, match="no better than a constant"):
        value = LearnedSoftValue.fit(model, num_chains=64, steps=5, lr=1e-9, net=Stuck(), progress=False)
    assert value.training["validation_loss"] > value.training["constant_loss"]


def test_level_zero_is_the_exact_reward_and_levels_are_checked(fitted):
    process, model, value = fitted
    x = torch.randn(2, 3, 2, dtype=F64)
    assert torch.equal(value(x, 0), REWARD(x) / ALPHA)
    with pytest.raises(ModelError, match="outside"):
        value(x, process.num_steps + 1)


def test_counts_and_training_record(fitted):
    process, model, value = fitted
    t = value.training
    assert t["denoiser_calls"] == FIT["num_chains"] * process.num_steps
    assert t["reward_calls"] == FIT["num_chains"] and t["held_out"] == round(0.1 * FIT["num_chains"])


def test_save_and_load_reproduce_the_values(fitted, tmp_path):
    process, model, value = fitted
    value.save(tmp_path / "value.pt")
    again = LearnedSoftValue.load(tmp_path / "value.pt", model)
    x = torch.randn(3, 5, 2)
    for k in (1, 5, 10):
        assert torch.equal(again(x, k), value(x, k))
    assert again.training == value.training
    other = make_model(gaussian_process(MEAN, COV, num_steps=7), REWARD, ALPHA)
    with pytest.raises(ModelError, match="fitted for K and event shape"):
        LearnedSoftValue.load(tmp_path / "value.pt", other)


def test_batch_size_changes_nothing(fitted):
    process, model, value = fitted
    x = torch.randn(4, 5, 2)
    chunked = LearnedSoftValue(value.plan, value.net, value.mean, value.std, value.shift, batch_size=3)
    assert torch.allclose(chunked(x, 4), value(x, 4), atol=1e-6)


def test_twist_values_carry_no_autograd_graph(fitted):
    """A differentiable twist's values are detached (each step's graph would otherwise stay alive)."""
    process, model, value = fitted
    assert not value(torch.randn(2, 3, 2), 3).requires_grad
    assert not Twist(lambda x, k: (x * torch.ones(2, requires_grad=True)).sum(-1))(
        torch.randn(2, 3, 2), 1
    ).requires_grad


def test_bad_settings_raise():
    model = make_model(gaussian_process(MEAN, COV, num_steps=3), REWARD, ALPHA)
    for bad in ({"num_chains": 1}, {"steps": 0}, {"minibatch": 2.5}, {"lr": 0.0}, {"validation": 1.0}):
        with pytest.raises(ModelError):
            LearnedSoftValue.fit(model, progress=False, **bad)
    masked = MaskedDiffusion(data=TabularSequences(torch.full((2, 2), 0.25)), num_steps=2)
    with pytest.raises(ModelError, match="GaussianDiffusion"):
        LearnedSoftValue.fit(make_model(masked, lambda x: x.sum(-1).double()), progress=False)
    # a process with groups is refused too: tests/test_groups.py


@pytest.mark.slow
def test_smc_with_the_learned_value_is_exact_and_efficient(fitted):
    """Weighted moments within z s.e. of the closed form and E[Ẑ]/Z = 1 within z s.e. (pooled over runs, as in
    test_smc). Efficiency: over 1,024 runs of 16 particles the variance of log Ẑ with the fitted twist is below
    0.9× that of the Tweedie potential and 1.4× that of the exact twist. Measured: 0.69× and 1.07×; a ratio of
    two variances of 1,024 roughly Gaussian log Ẑ has a relative s.e. of about √(2·2/1023) = 6 %, i.e. 0.043
    and 0.066, and each bound is 5 s.e. above its measurement. A twist that learned nothing (a constant) has
    no drift: the prior proposal, with about 20× the Tweedie potential's variance here."""
    process, model, value = fitted
    mean, cov, log_z = LinearGaussianChain(process).tilted(REWARD, ALPHA)
    z = z_for(6)  # 2 means + 3 covariances + 1 evidence
    res = SMC(model, 256, proposal="gradient", potential=value, num_runs=32).run(seed=0)
    assert_moments_match(res, mean, cov, z)
    ratio = (res.log_evidence - float(log_z)).exp()
    assert abs(float(ratio.mean()) - 1) <= z * float(ratio.std()) / math.sqrt(ratio.numel())
    exact = Twist(LinearGaussianChain(process).twist(REWARD, ALPHA))
    var = {
        name: float(SMC(model, 16, proposal="gradient", potential=p, num_runs=1024).run(seed=1).log_evidence.var())
        for name, p in (("learned", value), ("tweedie", "tweedie"), ("exact", exact))
    }
    assert var["learned"] < 0.9 * var["tweedie"] and var["learned"] < 1.4 * var["exact"], var
