"""Stable Diffusion pipelines as latent diffusion processes, on tiny pipelines assembled from configs.

Checks: the deterministic chain (η = 0) reproduces the pipeline's own latents and images; several
prompts are independent groups; SMC with the gradient proposal runs end to end against a tiny CLIP
reward through the VAE decoder; gradients reach the latents; micro-batches, gradient checkpointing and
bfloat16 change nothing beyond rounding.
"""

import pyro
import pytest
import torch
from tiny_models import CONTEXT, TEXT_HIDDEN, tiny_clip, tiny_clip_text_model, tiny_tokenizer

import tilted
from tilted.distributions import LatentDiffusion, from_pipeline
from tilted.errors import ModelError
from tilted.inference import SMC, Importance
from tilted.rewards import CLIPScore

PROMPTS = ["a red cat", "a blue sea"]
SD_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
)


def tiny_unet_conditional(seed=0, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = {"cross_attention_dim": TEXT_HIDDEN} | extra
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        norm_num_groups=4,
        **extra,
    ).eval()


def tiny_vae(seed=1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).eval()


def tiny_sd_pipeline(folder):
    """A StableDiffusionPipeline of tiny parts: 16×16 images, 4×8×8 latents, PNDM as SD 1.5 ships it."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = tiny_tokenizer(folder)
    tokenizer.model_max_length = CONTEXT
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_model(tokenizer),
        tokenizer=tokenizer,
        unet=tiny_unet_conditional(),
        scheduler=PNDMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def model_of(prior, reward, temperature=1.0):
    def model():
        z = pyro.sample("z", prior)
        tilted.factor("clip", reward.after(prior.decode), z, temperature=temperature)

    return model


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_deterministic_chain_reproduces_the_pipeline(pipe, guidance_scale):
    """η = 0: the process's chain from the same x_K is the pipeline's DDIM sampler, latents and images."""
    from diffusers import DDIMScheduler

    prior = from_pipeline(pipe, PROMPTS, guidance_scale=guidance_scale, num_steps=5, eta=0.0)
    assert isinstance(prior, LatentDiffusion) and prior.batch_shape == (2,) and prior.event_shape == (4, 8, 8)
    z = prior.draw_initial((2,), torch.Generator().manual_seed(0))
    x = z
    with torch.no_grad():
        for k in prior.levels:
            x = prior.draw_transition(x, k)
        images = prior.decode(x)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # (from_config would clip latents)
    original, pipe.scheduler = pipe.scheduler, ddim
    try:
        out = pipe(
            PROMPTS, latents=z, num_inference_steps=5, guidance_scale=guidance_scale, eta=0.0, output_type="latent"
        )
        pics = pipe(PROMPTS, latents=z, num_inference_steps=5, guidance_scale=guidance_scale, eta=0.0, output_type="pt")
    finally:
        pipe.scheduler = original
    assert torch.allclose(x, out.images, atol=1e-4), (x - out.images).abs().max()
    assert images.shape == (2, 3, 16, 16) and torch.allclose(images, pics.images, atol=1e-4)


def test_a_single_prompt_is_one_target_and_plain_pyro_samples(pipe):
    prior = from_pipeline(pipe, "a red cat", num_steps=3)
    assert prior.batch_shape == () and prior.prompts == "a red cat"
    z = prior.sample((3,), generator=0)
    assert z.shape == (3, 4, 8, 8) and torch.isfinite(z).all()
    grouped = pyro.infer.Predictive(
        lambda: pyro.sample("z", from_pipeline(pipe, PROMPTS, num_steps=3)), num_samples=2
    )()
    assert grouped["z"].shape == (2, 2, 4, 8, 8)


def test_smc_with_the_gradient_proposal_runs_per_prompt_against_a_clip_reward(pipe, clip_path):
    prior = from_pipeline(pipe, PROMPTS, num_steps=4)
    reward = CLIPScore.from_pretrained(clip_path, prompts=PROMPTS)
    res = SMC(model_of(prior, reward), 3, proposal="gradient", ess_threshold=1.0).run(seed=0)
    assert res.particles["z"].shape == (2, 3, 4, 8, 8) and res.log_evidence.shape == (2,)
    assert torch.isfinite(res.log_weights).all() and torch.isfinite(res.log_evidence).all()
    # the final rewards are the CLIP scores of each run's own prompt
    images = prior.decode(res.particles["z"].transpose(0, 1))  # (N, P, 3, H, W): site layout
    assert torch.allclose(res.rewards["clip"], reward(images).T, atol=1e-4)
    # a denoiser call is one guided prediction per particle (two UNet rows under guidance); x_K's drift
    # probes the origin once per prompt
    assert res.counts.denoiser_calls == 2 * 3 * 4 + 2 == res.counts.gradient_evaluations


def test_gradients_reach_the_latents_through_decoder_and_reward(pipe, clip_path):
    prior = from_pipeline(pipe, PROMPTS, num_steps=4)
    reward = CLIPScore.from_pretrained(clip_path, prompts=PROMPTS).after(prior.decode)
    z = torch.randn(3, 2, 4, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(reward(prior.predict(z, 2)).sum(), z)
    assert torch.isfinite(g).all() and (g.abs().sum((-3, -2, -1)) > 0).all()
    assert all(p.grad is None and not p.requires_grad for p in pipe.unet.parameters())


def test_micro_batches_and_gradient_checkpointing_change_nothing(tmp_path, clip_path):
    local = tiny_sd_pipeline(tmp_path)
    reward = CLIPScore.from_pretrained(clip_path, prompts=PROMPTS)
    runs = {}
    for name, kw, ckpt in (("whole", {}, False), ("chunks", {"batch_size": 3}, False), ("ckpt", {}, True)):
        prior = from_pipeline(local, PROMPTS, num_steps=3, gradient_checkpointing=ckpt)
        runs[name] = SMC(model_of(prior, reward), 4, proposal="gradient", num_runs=2, **kw).run(seed=5)
    for other in ("chunks", "ckpt"):
        assert torch.allclose(runs["whole"].particles["z"], runs[other].particles["z"], atol=1e-4)
        assert torch.allclose(runs["whole"].log_evidence, runs[other].log_evidence, atol=1e-4)
        assert runs["whole"].counts == runs[other].counts


def test_bfloat16_networks_keep_float32_latents(tmp_path, clip_path):
    local = tiny_sd_pipeline(tmp_path)
    full = from_pipeline(local, PROMPTS, num_steps=4)
    z = full.draw_initial((3, 2), torch.Generator().manual_seed(1))
    want = full.predict(z, 3)
    try:
        local.to(torch.bfloat16)
    except (RuntimeError, TypeError) as err:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"this CPU build cannot run bfloat16 modules: {err}")
    half = from_pipeline(local, PROMPTS, num_steps=4)
    got = half.predict(z, 3)
    assert got.dtype == torch.float32 and half.decode(got).dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: relative error about 2⁻⁸ per operation, a few % after the network
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    res = Importance(model_of(half, CLIPScore.from_pretrained(clip_path, prompts=PROMPTS)), 2).run(seed=0)
    assert res.particles["z"].dtype == torch.float32 and torch.isfinite(res.log_weights).all()


def test_other_samplers_are_read_as_ddim_with_their_own_settings(tmp_path):
    """A PNDM scheduler left at its defaults keeps them (set_alpha_to_one=False), not DDIM's."""
    from diffusers import PNDMScheduler

    local = tiny_sd_pipeline(tmp_path)
    local.scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, skip_prk_steps=True
    )
    prior = from_pipeline(local, "a cat", num_steps=4)
    assert not prior.scheduler.config.set_alpha_to_one and not prior.scheduler.config.clip_sample
    assert not prior.is_deterministic(1)
    assert torch.isclose(prior.alphas_cumprod[0], local.scheduler.alphas_cumprod[0].double())


def test_bad_pipeline_arguments_are_refused(pipe):
    with pytest.raises(ModelError, match="one per prompt"):
        from_pipeline(pipe, PROMPTS, negative_prompt=["ugly"])
    with pytest.raises(ModelError, match="guidance_scale"):
        from_pipeline(pipe, PROMPTS, guidance_scale=0.5)
    with pytest.raises(ModelError, match="multiples"):
        from_pipeline(pipe, PROMPTS, height=15)
    with pytest.raises(ModelError, match="needs a Stable Diffusion, SDXL, SD3 or FLUX pipeline"):
        from_pipeline(object(), PROMPTS)
    guided = from_pipeline(pipe, PROMPTS, num_steps=2).denoiser
    with pytest.raises(ModelError, match="negative_prompt_embeds"):
        guided(torch.zeros(1, 4, 8, 8), torch.tensor([1]), prompt_embeds=torch.zeros(1, CONTEXT, TEXT_HIDDEN))


def tiny_sdxl_pipeline(folder):
    """A StableDiffusionXLPipeline of tiny parts (two text encoders, pooled text and size conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from tiny_models import tiny_clip_text_config
    from transformers import CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer(folder)
    tokenizer.model_max_length = CONTEXT
    torch.manual_seed(2)
    encoder_2 = CLIPTextModelWithProjection(tiny_clip_text_config(len(tokenizer), projection_dim=TEXT_HIDDEN)).eval()
    unet = tiny_unet_conditional(
        seed=3,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,
    )
    schedule = {k: v for k, v in SD_SCHEDULE.items() if k not in ("skip_prk_steps", "set_alpha_to_one")}
    schedule["timestep_spacing"] = "leading"  # as SDXL ships it (Euler's default is "linspace")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_model(tokenizer),
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**schedule),
    )


def test_sdxl_pipelines_run_with_pooled_text_and_size_conditioning(tmp_path, clip_path):
    """η = 0 reproduces SDXL's own DDIM sampler (added text_embeds and time_ids), and SMC runs per prompt."""
    from diffusers import DDIMScheduler

    xl = tiny_sdxl_pipeline(tmp_path)
    prior = from_pipeline(xl, PROMPTS, guidance_scale=4.0, num_steps=4, eta=0.0)
    z = prior.draw_initial((2,), torch.Generator().manual_seed(0))
    x = z
    with torch.no_grad():
        for k in prior.levels:
            x = prior.draw_transition(x, k)
    xl.scheduler = DDIMScheduler.from_config(prior.scheduler.config)  # Euler's schedule and spacing, read as DDIM
    out = xl(PROMPTS, latents=z, num_inference_steps=4, guidance_scale=4.0, eta=0.0, output_type="latent")
    assert torch.allclose(x, out.images, atol=1e-4), (x - out.images).abs().max()
    prior = from_pipeline(xl, PROMPTS, guidance_scale=4.0, num_steps=3)
    res = SMC(model_of(prior, CLIPScore.from_pretrained(clip_path, prompts=PROMPTS)), 2, proposal="gradient").run(
        seed=0
    )
    assert res.particles["z"].shape == (2, 2, 4, 8, 8) and torch.isfinite(res.log_evidence).all()
