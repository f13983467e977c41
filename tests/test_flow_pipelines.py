"""SD3 and FLUX pipelines as latent flow processes, on tiny pipelines assembled from configs (no download).

Checks: the deterministic chain (η = 0) reproduces each pipeline's own Euler sampler, latents and images
(SD3 under classifier-free guidance, FLUX with its embedded guidance, packed tokens and resolution
shift, and with true CFG); the time grid is the scheduler's; several prompts are independent groups;
SMC with the gradient proposal runs end to end against a tiny CLIP reward through the VAE decoder;
bad arguments get clear errors. The T5 tokenizer is the tiny character-level CLIP tokenizer (T5's needs
a sentencepiece model file); the T5 encoder is a real ``T5EncoderModel`` of a tiny config.
"""

import pyro
import pytest
import torch
from tiny_models import CONTEXT, TEXT_HIDDEN, tiny_clip, tiny_clip_text_config, tiny_tokenizer

import tilted
from tilted.distributions import FlowMatching, from_pipeline
from tilted.distributions.flow_pipelines import LatentFlow, pack, token_positions, unpack
from tilted.errors import ModelError, NoDensityError
from tilted.inference import SMC
from tilted.rewards import CLIPScore

PROMPTS = ["a red cat", "a blue sea"]
T5_LENGTH = 8  # max_sequence_length of the tiny pipelines' T5 embedding


def clip_encoder(tokenizer, seed, projection=False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if projection:
        return CLIPTextModelWithProjection(tiny_clip_text_config(len(tokenizer), projection_dim=TEXT_HIDDEN)).eval()
    return CLIPTextModel(tiny_clip_text_config(len(tokenizer))).eval()


def t5_encoder(tokenizer, d_model, seed):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, is_encoder_decoder=False,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def flow_vae(latent_channels, seed=1):
    """A tiny AutoencoderKL with SD3/FLUX's scaling and shift factors, 16×16 images, scale factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels, norm_num_groups=4,
        sample_size=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()  # fmt: skip


def tiny_sd3_pipeline(folder):
    """A StableDiffusion3Pipeline of tiny parts: two CLIP encoders and T5, 16×16 images, 4×8×8 latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = tiny_tokenizer(folder)
    tokenizer.model_max_length = CONTEXT
    torch.manual_seed(3)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=2 * TEXT_HIDDEN, pooled_projection_dim=2 * TEXT_HIDDEN,
        out_channels=4, pos_embed_max_size=8,
    ).eval()  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=flow_vae(4),
        text_encoder=clip_encoder(tokenizer, 4, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=clip_encoder(tokenizer, 5, projection=True),
        tokenizer_2=tokenizer,
        text_encoder_3=t5_encoder(tokenizer, 2 * TEXT_HIDDEN, 6),
        tokenizer_3=tokenizer,
    )


def tiny_flux_pipeline(folder, guidance_embeds=True):
    """A FluxPipeline of tiny parts: CLIP pooled text, T5 tokens, 16×16 images, 4×8×8 latents as 16 tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = tiny_tokenizer(folder)
    tokenizer.model_max_length = CONTEXT
    torch.manual_seed(7)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
    ).eval()  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=4,
        max_image_seq_len=64,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=flow_vae(4),
        text_encoder=clip_encoder(tokenizer, 8),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer, TEXT_HIDDEN, 9),
        tokenizer_2=tokenizer,
        transformer=transformer,
    )
    pipe.default_sample_size = 8  # 16×16 images with the tiny VAE (FLUX's is 128: 1024 px at f = 8)
    return pipe


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return tiny_flux_pipeline(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def ode_chain(prior, z):
    x = z
    with torch.no_grad():
        for k in prior.levels:
            x = prior.draw_transition(x, k)
        return x, prior.decode(x)


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_sd3_deterministic_chain_reproduces_the_pipeline(sd3, guidance_scale):
    prior = from_pipeline(
        sd3, PROMPTS, guidance_scale=guidance_scale, num_steps=5, eta=0.0, max_sequence_length=T5_LENGTH
    )
    assert isinstance(prior, LatentFlow) and isinstance(prior, FlowMatching)
    assert prior.batch_shape == (2,) and prior.event_shape == (4, 8, 8) and prior.time_scale == 1000
    z = prior.draw_initial((2,), torch.Generator().manual_seed(0))
    x, images = ode_chain(prior, z)
    kw = dict(
        latents=z, num_inference_steps=5, guidance_scale=guidance_scale, max_sequence_length=T5_LENGTH
    )  # fmt: skip
    out = sd3(PROMPTS, output_type="latent", **kw).images
    pics = sd3(PROMPTS, output_type="pt", **kw).images
    assert torch.allclose(x, out, atol=1e-4), (x - out).abs().max()
    assert images.shape == (2, 3, 16, 16) and torch.allclose(images, pics, atol=1e-4)


def test_the_time_grid_is_the_schedulers_with_its_shift(sd3, flux):
    """SD3: shift 3 on the scheduler's grid; FLUX: linspace(1, 1/K) shifted by e^μ, μ from 16 tokens."""
    prior = from_pipeline(sd3, "a cat", num_steps=4, max_sequence_length=T5_LENGTH)
    sd3.scheduler.set_timesteps(4)
    torch.testing.assert_close(prior.times, sd3.scheduler.sigmas.double().flip(0))
    assert prior.times[0] == 0 and prior.times[-1] == 1 and prior.shift == 3.0
    prior = from_pipeline(flux, "a cat", num_steps=4, max_sequence_length=T5_LENGTH)
    mu = 0.5 + (1.15 - 0.5) * (16 - 4) / (64 - 4)  # 16 tokens of 2×2 patches on an 8×8 latent
    u = torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    s = torch.tensor(mu, dtype=torch.float64).exp()
    torch.testing.assert_close(prior.times, s * u / (1 + (s - 1) * u), atol=1e-6, rtol=0)
    assert prior.time_scale == 1.0


def test_flux_packing_is_a_permutation_matching_the_pipeline():
    from diffusers import FluxPipeline

    z = torch.randn(3, 4, 6, 8)
    tokens = pack(z)
    assert torch.equal(tokens, FluxPipeline._pack_latents(z, 3, 4, 6, 8))
    assert torch.equal(unpack(tokens, 6, 8), z)
    ids = FluxPipeline._prepare_latent_image_ids(3, 3, 4, "cpu", torch.float32)
    assert torch.equal(token_positions(6, 8), ids)


@pytest.mark.parametrize("true_cfg_scale", [1.0, 3.0])
def test_flux_deterministic_chain_reproduces_the_pipeline(flux, true_cfg_scale):
    negative = {"negative_prompt": ["blurry", "dark"]} if true_cfg_scale != 1 else {}
    prior = from_pipeline(
        flux, PROMPTS, guidance_scale=2.5, num_steps=4, eta=0.0, max_sequence_length=T5_LENGTH,
        true_cfg_scale=true_cfg_scale, **negative,
    )  # fmt: skip
    assert isinstance(prior, LatentFlow) and prior.event_shape == (4, 8, 8) and prior.denoiser.guidance == 2.5
    z = prior.draw_initial((2,), torch.Generator().manual_seed(1))
    x, images = ode_chain(prior, z)
    kw = dict(
        latents=pack(z), num_inference_steps=4, guidance_scale=2.5, max_sequence_length=T5_LENGTH,
        height=16, width=16, true_cfg_scale=true_cfg_scale, **negative,
    )  # fmt: skip
    out = flux(PROMPTS, output_type="latent", **kw).images  # FLUX returns packed latents
    pics = flux(PROMPTS, output_type="pt", **kw).images
    assert torch.allclose(pack(x), out, atol=1e-4), (pack(x) - out).abs().max()
    assert images.shape == (2, 3, 16, 16) and torch.allclose(images, pics, atol=1e-4)


def test_a_single_prompt_is_one_target_and_plain_pyro_samples(flux):
    prior = from_pipeline(flux, "a red cat", num_steps=3, max_sequence_length=T5_LENGTH)
    assert prior.batch_shape == () and prior.prompts == "a red cat" and prior.denoiser.guidance == 3.5
    z = prior.sample((3,), generator=0)
    assert z.shape == (3, 4, 8, 8) and torch.isfinite(z).all()
    assert "LatentFlow(event_shape=(4, 8, 8)" in repr(prior)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_smc_with_the_gradient_proposal_runs_per_prompt_against_a_clip_reward(family, sd3, flux, clip_path):
    pipe, guided = (sd3, True) if family == "sd3" else (flux, False)
    prior = from_pipeline(pipe, PROMPTS, num_steps=3, max_sequence_length=T5_LENGTH)
    reward = CLIPScore.from_pretrained(clip_path, prompts=PROMPTS)

    def model():
        z = pyro.sample("z", prior)
        tilted.factor("clip", reward.after(prior.decode), z, temperature=1.0)

    res = SMC(model, 3, proposal="gradient", ess_threshold=1.0).run(seed=0)
    assert res.particles["z"].shape == (2, 3, 4, 8, 8) and res.log_evidence.shape == (2,)
    assert torch.isfinite(res.log_weights).all() and torch.isfinite(res.log_evidence).all()
    images = prior.decode(res.particles["z"].transpose(0, 1))
    assert torch.allclose(res.rewards["clip"], reward(images).T, atol=1e-4)
    assert all(p.grad is None and not p.requires_grad for p in pipe.transformer.parameters())
    # one velocity call per particle per step (two transformer rows under SD3's guidance), and x_K's
    # drift probes the origin once per prompt
    assert res.counts.denoiser_calls == 2 * 3 * 3 + 2
    assert guided == prior.denoiser.guided


def test_the_ode_is_refused_by_engines_that_need_densities(flux, clip_path):
    prior = from_pipeline(flux, "a cat", num_steps=2, eta=0.0, max_sequence_length=T5_LENGTH)
    reward = CLIPScore.from_pretrained(clip_path, prompts="a cat").after(prior.decode)

    def model():
        tilted.factor("clip", reward, pyro.sample("z", prior), temperature=1.0)

    with pytest.raises(NoDensityError, match="deterministic"):
        SMC(model, 2, proposal="gradient").run(seed=0)


def test_bad_flow_pipeline_arguments_are_refused(sd3, tmp_path):
    from diffusers import FluxPipeline

    with pytest.raises(ModelError, match="multiples of 4"):
        from_pipeline(sd3, PROMPTS, height=18)
    with pytest.raises(ModelError, match="true_cfg_scale is FLUX"):
        from_pipeline(sd3, PROMPTS, true_cfg_scale=2.0)
    with pytest.raises(ModelError, match="guidance_scale must be"):
        from_pipeline(sd3, PROMPTS, guidance_scale=0.5)
    with pytest.raises(ModelError, match="scheduler="):
        from_pipeline(sd3, PROMPTS, scheduler=sd3.scheduler)
    with pytest.raises(ModelError, match="eta"):
        from_pipeline(sd3, PROMPTS, eta=1.5, max_sequence_length=T5_LENGTH)
    schnell = tiny_flux_pipeline(tmp_path, guidance_embeds=False)
    with pytest.raises(ModelError, match="no guidance embedding"):
        from_pipeline(schnell, PROMPTS, guidance_scale=3.5, max_sequence_length=T5_LENGTH)
    assert from_pipeline(schnell, PROMPTS, max_sequence_length=T5_LENGTH).denoiser.guidance is None
    with pytest.raises(ModelError, match="true_cfg_scale > 1"):
        from_pipeline(schnell, PROMPTS, negative_prompt="ugly", max_sequence_length=T5_LENGTH)
    with pytest.raises(ModelError, match="SD3 .* and FLUX"):
        from_pipeline(FluxPipeline.__new__(type("Other", (), {"transformer": object()})), PROMPTS)


def test_saved_pipelines_load_from_a_local_folder_as_real_weights_do(sd3, flux, tmp_path):
    """``from_pretrained(folder)`` then ``from_pipeline``: the code path of real SD3/FLUX weights on disk."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    for pipe, cls in ((sd3, StableDiffusion3Pipeline), (flux, FluxPipeline)):
        folder = tmp_path / cls.__name__
        pipe.save_pretrained(folder)
        loaded = cls.from_pretrained(folder)
        loaded.default_sample_size = pipe.default_sample_size
        a, b = (from_pipeline(p, PROMPTS, num_steps=3, max_sequence_length=T5_LENGTH) for p in (pipe, loaded))
        z = a.draw_initial((2,), torch.Generator().manual_seed(2))
        torch.testing.assert_close(a.predict(z, 2), b.predict(z, 2))
        torch.testing.assert_close(a.times, b.times)


def test_the_flux_block_of_the_pipelines_guide_runs_on_tiny_weights(flux, clip_path, tmp_path):
    """docs/pipelines.md's FLUX block as written, its folders pointing at tiny weights, CPU, float32, 2 steps."""
    from test_doc_blocks import run_block

    flux.save_pretrained(tmp_path / "flux")
    namespace = run_block(
        "docs/pipelines.md",
        "FluxPipeline",
        (
            ("models/FLUX.1-dev", str(tmp_path / "flux")),
            ("models/clip-vit-large-patch14", clip_path),
            ('"cuda"', '"cpu"'),
            ("torch.bfloat16", "torch.float32"),
            ("num_steps=28", "num_steps=2"),
            ("height=1024, width=1024", "height=16, width=16, max_sequence_length=8"),
        ),
    )
    assert namespace["result"].particles["z"].shape == (2, 4, 4, 8, 8)
    assert namespace["images"].shape == (4, 3, 16, 16) and torch.isfinite(namespace["images"]).all()
