"""Tests of the Gaussian diffusion process (DDPM/DDIM) and the exact mixture denoiser.

Statistical checks use fixed generators and k × Monte-Carlo standard errors (see the comment at each
assertion); P(|z| > 5) = 5.7e-7 for a standard normal z.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

import tilted
from tilted.distributions import GaussianDiffusion, GaussianMixture, PointMass
from tilted.errors import ModelError, NoDensityError, ShapeError

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture() -> GaussianMixture:
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]], dtype=F64)
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[0.3, 0.0], [0.0, 0.8]], [[1.0, -0.3], [-0.3, 0.6]]], dtype=F64)
    return GaussianMixture(means, covs, [0.5, 0.3, 0.2])


# -- the exact denoiser -----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha_cumprod", [0.2, 0.5, 0.9])
def test_mixture_denoiser_matches_monte_carlo(alpha_cumprod):
    data, a, n = mixture(), alpha_cumprod, 400_000
    x0 = data.sample(n, gen(0))
    points = torch.tensor([[0.0, 0.0], [1.5, 0.5], [-1.0, -1.5]], dtype=F64)
    exact = data.posterior_mean(points, a)
    for x, mean in zip(points, exact, strict=True):
        # self-normalised weights ∝ p(x_t = x | x_0) = N(x; √ᾱ x_0, (1−ᾱ) I)
        logw = -0.5 * ((x - math.sqrt(a) * x0) ** 2).sum(-1) / (1 - a)
        w = torch.softmax(logw, 0)
        est = w @ x0
        # SNIS delta-method s.e.² = Σ w̄_i² (x0_i − est)²; 3 ᾱ × 3 points × 2 coordinates = 18 comparisons
        # at 5 s.e.: family-wise false-alarm rate ≈ 1e-5
        se = ((w[:, None] ** 2) * (x0 - est) ** 2).sum(0).sqrt()
        assert ((est - mean).abs() <= 5 * se).all(), (est, mean, se)


def test_process_prediction_is_the_mixture_denoiser():
    data = mixture()
    process = GaussianDiffusion(data=data, num_steps=10)
    x = torch.randn(4, 2, dtype=F64, generator=gen(1))
    for k in process.levels:
        torch.testing.assert_close(process.predict(x, k), data.posterior_mean(x, float(process.alphas_cumprod[k])))
    assert process.predict(x.float(), 3).dtype == torch.float32


# -- sampling ---------------------------------------------------------------------------------------
def test_sample_shape_and_reproducibility():
    process = GaussianDiffusion(data=mixture(), num_steps=8)
    x = process.sample((5,), generator=3)
    assert x.shape == (5, 2) and torch.isfinite(x).all()
    assert process.sample().shape == (2,)
    assert process.sample((2, 3)).shape == (2, 3, 2)
    torch.testing.assert_close(x, process.sample((5,), generator=3))
    torch.testing.assert_close(x, process.sample((5,), generator=gen(3)))
    assert not torch.equal(x, process.sample((5,), generator=4))


def test_transition_log_prob_is_a_diagonal_normal():
    process = GaussianDiffusion(data=mixture(), num_steps=6, eta=0.8)
    g = gen(5)
    x = torch.randn(3, 2, dtype=F64, generator=g)
    for k in range(process.num_steps, 1, -1):
        mean, sigma = process.transition_moments(x, k)
        assert sigma == pytest.approx(float(process.sigmas[k])) and sigma > 0
        y = torch.randn(3, 2, dtype=F64, generator=g)
        lp = process.transition(x, k).log_prob(y)
        manual = (-0.5 * ((y - mean) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)
        torch.testing.assert_close(lp, manual)
        mvn = torch.distributions.MultivariateNormal(mean, sigma**2 * torch.eye(2, dtype=F64))
        torch.testing.assert_close(lp, mvn.log_prob(y))


def test_last_step_is_deterministic():
    process = GaussianDiffusion(data=mixture(), num_steps=6)
    assert float(process.alphas_cumprod[0]) == 1.0 and process.is_deterministic(1)
    assert not any(process.is_deterministic(k) for k in range(2, 7))
    x = torch.randn(3, 2, dtype=F64, generator=gen(6))
    kernel = process.transition(x, 1)
    assert isinstance(kernel, PointMass)
    torch.testing.assert_close(kernel.sample(), process.predict(x, 1))
    torch.testing.assert_close(process.draw_transition(x, 1, gen(0)), process.predict(x, 1))
    with pytest.raises(NoDensityError, match="deterministic"):
        kernel.log_prob(x)


def test_eta_zero_is_deterministic_ddim():
    process = GaussianDiffusion(data=mixture(), num_steps=12, eta=0.0)
    assert all(process.is_deterministic(k) for k in process.levels)
    assert float(process.sigmas.abs().max()) == 0.0
    x = process.sample((50,), generator=0)
    assert x.shape == (50, 2) and torch.isfinite(x).all()
    # x_0 is a function of x_K: two runs from the same x_K agree whatever the generator
    xk = process.draw_initial((4,), gen(1))
    a, b = xk, xk.clone()
    for k in process.levels:
        a, b = process.draw_transition(a, k, gen(2)), process.draw_transition(b, k, gen(3))
    torch.testing.assert_close(a, b)


def test_log_prob_of_the_process_raises():
    process = GaussianDiffusion(data=mixture(), num_steps=4)
    with pytest.raises(NoDensityError, match="no closed form"):
        process.log_prob(torch.zeros(2))


# -- bad inputs -------------------------------------------------------------------------------------
def test_denoiser_output_of_the_wrong_shape_raises():
    process = GaussianDiffusion(lambda x, t: x[..., :1], event_shape=(2,), num_steps=4)
    with pytest.raises(ShapeError, match="same shape"):
        process.sample((3,), generator=0)
    process = GaussianDiffusion(lambda x, t: x.tolist(), event_shape=(2,), num_steps=4)
    with pytest.raises(ShapeError, match="list"):
        process.predict(torch.zeros(3, 2), 2)
    process = GaussianDiffusion(data=mixture(), num_steps=4)
    with pytest.raises(ShapeError, match="trailing shape"):
        process.predict(torch.zeros(3, 3), 2)


@pytest.mark.parametrize(
    "schedule",
    [
        torch.tensor([0.9, math.nan, 0.1]),
        torch.tensor([0.9, math.inf, 0.1]),
        torch.tensor([0.9, 0.95, 0.1]),  # increasing
        torch.tensor([0.9, 0.5, 0.5]),  # not strictly decreasing
        torch.tensor([0.9, 0.5, 0.0]),  # ᾱ = 0
        torch.tensor([[0.9, 0.5]]),  # not 1-D
        "quadratic",
    ],
)
def test_bad_schedules_raise(schedule):
    with pytest.raises(ModelError):
        GaussianDiffusion(data=mixture(), num_steps=2, schedule=schedule)


def test_a_schedule_tensor_is_read_at_the_inference_timesteps():
    ac = torch.linspace(0.999, 0.01, 50, dtype=F64)
    process = GaussianDiffusion(data=mixture(), num_steps=5, schedule=ac)
    torch.testing.assert_close(process.alphas_cumprod[1:], ac[process.timesteps.flip(0)])
    assert float(process.alphas_cumprod[0]) == 1.0


def test_bad_arguments_raise():
    data = mixture()
    for eta in (-0.1, math.nan, math.inf):
        with pytest.raises(ModelError, match="eta"):
            GaussianDiffusion(data=data, eta=eta)
    with pytest.raises(ModelError, match="exceeds"):
        GaussianDiffusion(data=data, num_steps=1001)
    with pytest.raises(ModelError, match="exactly one"):
        GaussianDiffusion(lambda x, t: x, data=data)
    with pytest.raises(ModelError, match="exactly one"):
        GaussianDiffusion(event_shape=(2,))
    with pytest.raises(ModelError, match="event_shape"):
        GaussianDiffusion(lambda x, t: x)
    with pytest.raises(ShapeError, match="event_shape"):
        GaussianDiffusion(data=data, event_shape=(3,))
    with pytest.raises(ModelError, match="prediction_type"):
        GaussianDiffusion(lambda x, t: x, event_shape=(2,), prediction_type="score")
    with pytest.raises(ModelError, match="clip_sample"):
        GaussianDiffusion(data=data, clip_sample=0.0)
    for num_steps in (0, -3, 2.5):  # 0 used to reach diffusers and fail with ZeroDivisionError
        with pytest.raises(ModelError, match="num_steps"):
            GaussianDiffusion(data=data, num_steps=num_steps)


# -- prediction types and clipping -----------------------------------------------------------------
def wrapped_denoiser(data: GaussianMixture, train_ac: torch.Tensor, kind: str):
    """The exact mixture denoiser as a network that predicts ε, x_0 or v at training timestep t."""

    def denoiser(x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and (t == t[0]).all()
        a = float(train_ac[t[0]])
        x0 = data.posterior_mean(x, a)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return {"sample": x0, "epsilon": eps, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[kind]

    return denoiser


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_prediction_types_agree_with_the_exact_denoiser(kind, schedule):
    data = mixture()
    exact = GaussianDiffusion(data=data, num_steps=10, schedule=schedule, timestep_spacing="leading")
    train_ac = exact.scheduler.alphas_cumprod.to(F64)
    net = GaussianDiffusion(
        wrapped_denoiser(data, train_ac, kind),
        event_shape=(2,),
        num_steps=10,
        schedule=schedule,
        timestep_spacing="leading",
        prediction_type=kind,
    )
    torch.testing.assert_close(net.alphas_cumprod, exact.alphas_cumprod)
    x = torch.randn(2, 3, 2, dtype=F64, generator=gen(7))  # extra batch dims are flattened for the network
    for k in exact.levels:
        # ε-prediction divides by √ᾱ_k, which amplifies rounding at the noisiest level
        torch.testing.assert_close(net.predict(x, k), exact.predict(x, k), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(net.sample((6,), generator=8), exact.sample((6,), generator=8), rtol=1e-4, atol=1e-4)


def test_clip_sample_clamps_the_prediction():
    data = GaussianMixture(torch.tensor([5.0, -5.0]), 0.1)
    process = GaussianDiffusion(data=data, num_steps=5, clip_sample=1.0)
    x = torch.randn(100, 2, dtype=F64, generator=gen(9)) * 3
    for k in process.levels:
        out = process.predict(x, k)
        assert out.abs().max() <= 1.0
        torch.testing.assert_close(out, data.posterior_mean(x, float(process.alphas_cumprod[k])).clamp(-1.0, 1.0))
    assert process.sample((20,), generator=0).abs().max() <= 1.0 + 1e-6  # last step returns x̂_0


# -- plain Pyro -------------------------------------------------------------------------------------
def model(prior):
    x = pyro.sample("x", prior)
    tilted.factor("r", lambda x: -(x**2).sum(-1), x, temperature=2.0)
    return x


def test_poutine_trace_and_predictive_run_the_process():
    prior = GaussianDiffusion(data=mixture(), num_steps=5)
    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace(prior)
    x = trace.nodes["x"]["value"]
    assert x.shape == (2,) and trace.nodes["x"]["fn"] is prior
    assert float(trace.nodes["r"]["fn"].log_factor) == pytest.approx(float(-(x**2).sum() / 2.0))
    with pytest.raises(NoDensityError):
        trace.log_prob_sum()
    samples = Predictive(model, num_samples=4)(prior)
    assert samples["x"].shape == (4, 2) and torch.isfinite(samples["x"]).all()
