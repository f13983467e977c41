"""from_diffusers: our chain's kernels equal diffusers' DDPM/DDIM ``step`` at every inference timestep.

A tiny ``UNet2DModel`` with seeded random weights stands in for a pretrained model (no download).
Comparisons are one step at a time, from a standard-normal x_k, in float64 on both sides: the model
is cast to float64 and the scheduler's ᾱ tables (float32 numbers, the same ones our process reads)
are upcast, so both compute the same formulas in float64 and agree to rounding: rtol = atol = 1e-9.
(In float32, diffusers computes 1 − ᾱ_t/ᾱ_{t−1} by cancellation: its σ at the last step is off by up
to ~1e-3 relative, its mean by ~1e-5. We form the ratios in float64, so no float32 tolerance is
meaningful at the low-noise end; float64 makes the comparison exact.)
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, UNet2DModel
from diffusers.schedulers import scheduling_ddpm

from tilted.distributions import GaussianDiffusion, from_diffusers
from tilted.errors import ModelError, ShapeError

torch.set_num_threads(1)

NUM_STEPS = 5
RTOL = ATOL = 1e-9
EVENT = (1, 8, 8)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    # scale the random output up so that clipping of x̂_0 actually happens at low noise levels
    with torch.no_grad():
        model.conv_out.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def unet64(unet):
    return copy.deepcopy(unet).double()


def _float64(scheduler):
    """Upcast the scheduler's ᾱ tables so that ``step`` computes in float64 (values unchanged)."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    for name in ("final_alpha_cumprod", "one"):
        if hasattr(scheduler, name):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def _steps(process, scheduler):
    """(k, τ_k, x_k) for every level, x_k ~ N(0, I) (batch of 3), checking the timestep lists agree."""
    assert torch.equal(process.timesteps, scheduler.timesteps.to(torch.long))
    gen = torch.Generator().manual_seed(1)
    for i, t in enumerate(scheduler.timesteps):
        k = NUM_STEPS - i
        assert process.timestep(k) == int(t)
        yield k, t, torch.randn((3, *EVENT), generator=gen, dtype=torch.float64)


def _ddim(**config):
    return DDIMScheduler(num_train_timesteps=1000, **config)


# -- DDIM -------------------------------------------------------------------------------------------
# (spacing, steps_offset, set_alpha_to_one, η): each spacing and each offset/final-ᾱ rule meets each η
DDIM_LAYOUTS = [
    ("leading", 1, False, 0.5),
    ("leading", 0, True, 1.0),
    ("trailing", 0, True, 0.5),
    ("trailing", 1, False, 1.0),
]


@pytest.mark.parametrize("spacing,offset,alpha_to_one,eta", DDIM_LAYOUTS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_kernels_match_step(unet64, spacing, offset, alpha_to_one, eta, prediction_type, clip):
    unet = unet64
    scheduler = _ddim(
        timestep_spacing=spacing,
        steps_offset=offset,
        set_alpha_to_one=alpha_to_one,
        prediction_type=prediction_type,
        clip_sample=clip,
        clip_sample_range=1.5,
    )
    process = from_diffusers(unet, scheduler, NUM_STEPS, eta=eta, event_shape=EVENT)
    assert scheduler.num_inference_steps is None  # the caller's scheduler is not modified
    scheduler.set_timesteps(NUM_STEPS)
    _float64(scheduler)
    final = 1.0 if alpha_to_one else float(scheduler.alphas_cumprod[0])
    assert float(process.alphas_cumprod[0]) == pytest.approx(final, rel=1e-12)
    clipped_any = False
    with torch.no_grad():
        for k, t, x in _steps(process, scheduler):
            out = unet(x, t).sample
            # with clipping, our ε̂ is recomputed from the clipped x̂_0 (see from_diffusers Notes)
            ref = scheduler.step(out, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=torch.zeros_like(x))
            x0 = process.predict(x, k)
            mean, sigma = process.transition_moments(x, k, prediction=x0)
            torch.testing.assert_close(x0, ref.pred_original_sample, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(mean, ref.prev_sample, rtol=RTOL, atol=ATOL)
            prev_t = int(t) - scheduler.config.num_train_timesteps // NUM_STEPS
            expected_sigma = eta * float(scheduler._get_variance(t, prev_t)) ** 0.5
            assert sigma == pytest.approx(expected_sigma, rel=RTOL, abs=ATOL)
            assert process.is_deterministic(k) == (sigma == 0)
            # a full noisy step agrees too: ours mean + σ z, theirs with variance_noise = z
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=x.dtype)
            noisy = scheduler.step(out, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=z)
            torch.testing.assert_close(mean + sigma * z, noisy.prev_sample, rtol=RTOL, atol=ATOL)
            if clip:
                raw = scheduler.step(out, t, x, eta=eta, variance_noise=torch.zeros_like(x)).pred_original_sample
                clipped_any |= bool((raw.abs() >= 1.5).any())
    assert not clip or clipped_any, "the test should exercise clipping"


def test_ddim_clipping_differs_from_the_raw_epsilon_default(unet64):
    """Documented difference: DDIM's default step (use_clipped_model_output=False) keeps the raw ε in the
    direction term; ours recomputes ε̂ from the clipped x̂_0 (as DDPM does). Equal where nothing is clipped."""
    scheduler = _ddim(timestep_spacing="trailing", clip_sample=True)
    process = from_diffusers(unet64, scheduler, NUM_STEPS, eta=1.0)
    scheduler.set_timesteps(NUM_STEPS)
    _float64(scheduler)
    tested = 0
    with torch.no_grad():
        for k, t, x in _steps(process, scheduler):
            out = unet64(x, t).sample
            raw = scheduler.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x))
            mean, _ = process.transition_moments(x, k)
            a = process.alphas_cumprod[k]
            inside = ((x - (1 - a).sqrt() * out) / a.sqrt()).abs() <= 1  # where x̂_0 was not clipped
            torch.testing.assert_close(mean[inside], raw.prev_sample[inside], rtol=RTOL, atol=ATOL)
            if k > 1 and (~inside).any():  # (the last step to ᾱ = 1 has no direction term)
                assert not torch.allclose(mean[~inside], raw.prev_sample[~inside], rtol=1e-3, atol=1e-3)
                tested += 1
    assert tested > 0


def test_ddim_eta_zero_is_deterministic(unet):
    process = from_diffusers(unet, _ddim(clip_sample=False), NUM_STEPS, eta=0.0, event_shape=EVENT)
    assert all(process.is_deterministic(k) for k in process.levels)
    assert (process.sigmas == 0).all()


def test_ddim_default_eta_is_one(unet):
    scheduler = _ddim(clip_sample=False)
    assert from_diffusers(unet, scheduler, NUM_STEPS).eta == 1.0


def test_ddim_linspace_follows_the_timestep_list(unet):
    """Our levels are ᾱ at the scheduler's own next inference timestep (diffusers' DDIM step uses τ − N//K)."""
    scheduler = _ddim(timestep_spacing="linspace", clip_sample=False)
    process = from_diffusers(unet, scheduler, NUM_STEPS, event_shape=EVENT)
    scheduler.set_timesteps(NUM_STEPS)
    expected = scheduler.alphas_cumprod[scheduler.timesteps.flip(0)].to(torch.float64)
    torch.testing.assert_close(process.alphas_cumprod[1:], expected)


# -- DDPM -------------------------------------------------------------------------------------------
@pytest.fixture
def zero_noise(monkeypatch):
    """Make DDPMScheduler.step add exactly zero noise, so its prev_sample is the transition mean."""

    def zeros(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.zeros(shape, device=device, dtype=dtype)

    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", zeros)


@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_kernels_match_step(
    unet64, zero_noise, spacing, offset, prediction_type, clip, variance_type="fixed_small"
):
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        timestep_spacing=spacing,
        steps_offset=offset,
        prediction_type=prediction_type,
        clip_sample=clip,
        variance_type=variance_type,
    )
    unet = unet64
    process = from_diffusers(unet, scheduler, NUM_STEPS, event_shape=EVENT)
    assert process.eta == 1.0 and float(process.alphas_cumprod[0]) == 1.0
    scheduler.set_timesteps(NUM_STEPS)
    _float64(scheduler)
    with torch.no_grad():
        for k, t, x in _steps(process, scheduler):
            ref = scheduler.step(unet(x, t).sample, t, x)
            x0 = process.predict(x, k)
            mean, sigma = process.transition_moments(x, k, prediction=x0)
            torch.testing.assert_close(x0, ref.pred_original_sample, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(mean, ref.prev_sample, rtol=RTOL, atol=ATOL)
            # diffusers adds no noise at t = 0 and clamps a zero variance to 1e-20
            var = float(scheduler._get_variance(t, variance_type="fixed_small"))
            expected_sigma = 0.0 if int(t) == 0 else var**0.5
            assert sigma == pytest.approx(expected_sigma, rel=RTOL, abs=ATOL)
    assert process.is_deterministic(1)  # the last step goes to ᾱ = 1


def test_ddpm_fixed_small_log_is_the_same_law(unet64, zero_noise):
    """ "fixed_small_log" stores the posterior std instead of the variance: the same kernels."""
    test_ddpm_kernels_match_step(unet64, None, "trailing", 0, "epsilon", True, variance_type="fixed_small_log")


# -- whole chain, shapes, errors ---------------------------------------------------------------------
def test_sample_runs_with_seed(unet):
    process = from_diffusers(unet, DDPMScheduler(num_train_timesteps=1000), NUM_STEPS)
    assert process.event_shape == torch.Size(EVENT)  # inferred from the model's config
    a = process.sample((2,), generator=3)
    b = process.sample((2,), generator=3)
    assert a.shape == (2, *EVENT) and torch.isfinite(a).all()
    assert a.abs().max() <= 1.0  # DDPMScheduler clips x̂_0 to ±1 by default, and the last step is x̂_0
    torch.testing.assert_close(a, b)


def test_classmethod_alias(unet):
    process = GaussianDiffusion.from_diffusers(unet, _ddim(), NUM_STEPS, eta=0.5, event_shape=EVENT)
    assert isinstance(process, GaussianDiffusion) and process.eta == 0.5 and process.clip_sample == 1.0


def test_plain_callable_denoiser():
    process = from_diffusers(lambda x, t: torch.zeros_like(x), _ddim(clip_sample=False), NUM_STEPS, event_shape=(2,))
    assert process.sample((4,), generator=0).shape == (4, 2)
    with pytest.raises(ModelError, match="event_shape is required"):
        from_diffusers(lambda x, t: x, _ddim(), NUM_STEPS)


def test_event_shape_mismatch(unet):
    with pytest.raises(ShapeError, match="1 input channels"):
        from_diffusers(unet, _ddim(), NUM_STEPS, event_shape=(3, 8, 8))
    bad = from_diffusers(lambda x, t: x[..., :1], _ddim(), NUM_STEPS, event_shape=(2,))
    with pytest.raises(ShapeError, match="denoiser returned"):
        bad.predict(torch.zeros(4, 2), NUM_STEPS)
    process = from_diffusers(unet, _ddim(), NUM_STEPS)
    with pytest.raises(ShapeError, match="trailing shape"):
        process.predict(torch.zeros(2, 3, 8, 8), NUM_STEPS)


@pytest.mark.parametrize(
    "scheduler,kwargs,fragment",
    [
        (EulerDiscreteScheduler(), {}, "DDPMScheduler, DDIMScheduler"),
        (DDIMScheduler, {}, "scheduler instance"),
        (DDPMScheduler(variance_type="fixed_large"), {}, "variance_type='fixed_large'"),
        (DDPMScheduler(variance_type="learned_range"), {}, "variance_type='learned_range'"),
        (DDPMScheduler(thresholding=True), {}, "thresholding"),
        (DDIMScheduler(thresholding=True), {}, "thresholding"),
        (DDPMScheduler(), {"eta": 0.5}, "η = 1"),
        (DDIMScheduler(), {"eta": -1.0}, "eta must be"),
        (DDIMScheduler(), {"eta": float("nan")}, "eta must be"),
        (DDIMScheduler(set_alpha_to_one=False), {}, "steps_offset=1"),
    ],
)
def test_refused(unet, scheduler, kwargs, fragment):
    with pytest.raises(ModelError, match=fragment):
        from_diffusers(unet, scheduler, NUM_STEPS, event_shape=EVENT, **kwargs)


def test_refused_step_counts(unet):
    with pytest.raises(ModelError, match="positive integer"):
        from_diffusers(unet, _ddim(), 0)
    with pytest.raises(ModelError, match="exceeds"):
        from_diffusers(unet, _ddim(), 1001)
