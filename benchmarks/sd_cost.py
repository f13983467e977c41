"""Cost of tilted sampling with a Stable-Diffusion-1.5-sized model: calls, seconds and peak memory per image.

``python -m benchmarks.sd_cost [--device cpu|cuda] [--latent 8] [--particles 4] [--steps 4] [--dtype ...]``
writes ``docs/benchmarks_sd.md``. Networks are built from configurations with random weights (nothing is
downloaded): SD 1.5's UNet (859 M parameters), its VAE (84 M; the decoder runs) and text encoder (123 M),
and the LAION aesthetic reward on a CLIP ViT-L/14 (428 M; the vision tower runs) with a random head.
Weights do not change the cost; latents of ``--latent``² (SD 1.5 samples 64² latents, 512² images).
``--model sd3`` / ``--model flux`` build SD3-medium's or FLUX.1-dev's transformer and 16-channel VAE instead
(text encoders at full width, one layer: they run once per prompt) and go through ``from_pipeline``'s flow path.

Configurations (one prompt, N particles, K steps, guidance 7.5, DDPM kernels η = 1; every one ends
with its N output images decoded):

(a) ``plain``: ancestral sampling of the same chain, ``prior.sample((N,))`` under ``no_grad`` (no reward);
(b) ``smc-prior``: ``das(..., proposal="prior")``: DAS's tempering and resampling, bootstrap proposal
    (a reward call per particle and step through decoder and CLIP, no gradients);
(c) ``das``: the DAS preset, gradient proposal (a gradient of r(D(x̂_0(x_k))) per particle and step);
(d) ``das-ckpt``: (c) with ``from_pipeline(..., gradient_checkpointing=True)`` (UNet and VAE);
(e) ``das-micro``: (c) with ``batch_size`` particles per network call (``--micro``, default 1).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the run (models
and prompt embeddings), all configurations in one process. On CPU each configuration runs in its
own forked process (the models, built and warmed up once in the parent, are shared copy-on-write):
peak RSS (``resource.getrusage``'s ``ru_maxrss``) minus the child's RSS at its start. Times are one
run per configuration (one thread on CPU); counts are the engines' own (a denoiser call is one guided
prediction for one particle: two UNet rows).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyro  # noqa: E402
import torch  # noqa: E402

import tilted  # noqa: E402
from tilted.distributions import from_pipeline  # noqa: E402
from tilted.inference import das  # noqa: E402

CONFIGS = ("plain", "smc-prior", "das", "das-ckpt", "das-micro")
LABELS = {
    "plain": "(a) plain ancestral sampling",
    "smc-prior": "(b) SMC, prior proposal",
    "das": "(c) SMC, gradient proposal (DAS)",
    "das-ckpt": "(d) (c) + gradient checkpointing",
    "das-micro": "(e) (c) + micro-batches",
}
PROMPT = "a photograph of a cat"

#: SD 1.5's configurations (stable-diffusion-v1-5 unet/, vae/, text_encoder/ and scheduler/ config.json)
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
#: SD 1.5's scheduler/scheduler_config.json (PNDM, read as DDIM with η = 1). Every value is passed explicitly:
#: ``from_config`` replaces values left at PNDM's defaults by DDIM's (set_alpha_to_one would become True).
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SCHEDULE |= dict(steps_offset=1, set_alpha_to_one=False, skip_prk_steps=True)
#: CLIP ViT-L/14 (openai/clip-vit-large-patch14): the vision tower the aesthetic reward runs
VISION = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, patch_size=14)
PROJECTION = 768

#: ``--tiny``: the same architectures, a few channels wide (a smoke test that runs in seconds)
TINY = {
    "unet": dict(block_out_channels=(8, 8, 16, 16), attention_head_dim=2, norm_num_groups=4, cross_attention_dim=16),
    "vae": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1),
    "text": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1),
    "vision": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, patch_size=14),
    "projection": 8,
}


#: ``--model``: what is built. SD3-medium's and FLUX.1-dev's transformer/ and vae/ config.json (the VAE is SD's
#: with 16 latent channels and no quant convs); their text encoders at full width but one layer each
#: (CLIP-L, CLIP-G, T5-XXL's d_model): they run once per prompt, and only their output widths matter here
MODELS = {"sd15": "Stable Diffusion 1.5", "sd3": "SD3-medium", "flux": "FLUX.1-dev"}
SD3 = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=192,
)  # fmt: skip
FLUX = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
FLOW_VAE = VAE | dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
FLOW_VAE_FACTORS = {
    "sd3": dict(scaling_factor=1.5305, shift_factor=0.0609),
    "flux": dict(scaling_factor=0.3611, shift_factor=0.1159),
}
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, projection_dim=1280)
T5 = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64)
FLOW_SCHEDULES = {
    "sd3": dict(shift=3.0),
    "flux": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096),
}  # fmt: skip
TINY_FLOW = {
    "sd3": dict(num_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16),
    "flux": dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(4, 4, 8)),
    "clip": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, projection_dim=16),
    "t5": dict(d_model=32, d_kv=8, d_ff=32, num_heads=4),
}  # fmt: skip


def tokenizer():
    """A CLIP tokenizer over single characters (prompt text only sets the embeddings' values, not the cost)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.update({c: len(vocab), c + "</w>": len(vocab) + 1})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def flow_pipeline(model: str, tiny: bool, tok, text: dict):
    """(SD3 or FLUX pipeline, its networks by name) from configurations, seeded random weights (float32, CPU)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    small = TINY if tiny else {}

    def clip(widths, projection=True):
        config = CLIPTextConfig(**(text | widths | (TINY_FLOW["clip"] if tiny else {}) | dict(num_hidden_layers=1)))
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), num_layers=1, **(TINY_FLOW["t5"] if tiny else T5)))
    vae = AutoencoderKL(**(FLOW_VAE | FLOW_VAE_FACTORS[model] | small.get("vae", {})))
    scheduler = FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULES[model])
    config = (SD3 if model == "sd3" else FLUX) | (TINY_FLOW[model] if tiny else {})
    if model == "sd3":
        transformer = SD3Transformer2DModel(**config)
        encoders = {"text_encoder": clip(CLIP_L), "text_encoder_2": clip(CLIP_G), "text_encoder_3": t5}
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, tokenizer=tok, tokenizer_2=tok, tokenizer_3=tok,
            **encoders,
        )  # fmt: skip
    else:
        transformer = FluxTransformer2DModel(**config)
        encoders = {"text_encoder": clip(CLIP_L, projection=False), "text_encoder_2": t5}
        pipe = FluxPipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, tokenizer=tok, tokenizer_2=tok, **encoders
        )  # fmt: skip
    text_params = sum(p.numel() for m in encoders.values() for p in m.parameters())
    return pipe, {"transformer": transformer, "VAE decoder": vae.decoder}, text_params


def build(tiny: bool, device: str, dtype: torch.dtype, model: str = "sd15"):
    """(pipeline, aesthetic reward, parameter counts) from configurations, seeded random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel

    from tilted.rewards import LAIONAesthetic
    from tilted.rewards.aesthetic import AestheticHead

    small = TINY if tiny else {}
    tok = tokenizer()
    text = TEXT | small.get("text", {}) | dict(vocab_size=len(tok), max_position_embeddings=77)
    text |= dict(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    if model == "sd15":
        unet = UNet2DConditionModel(**(UNET | small.get("unet", {})))
        vae = AutoencoderKL(**(VAE | small.get("vae", {})))
        encoder = CLIPTextModel(CLIPTextConfig(**text))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=encoder,
            tokenizer=tok,
            unet=unet,
            scheduler=PNDMScheduler(**SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        networks = {"UNet": unet, "VAE decoder": vae.decoder, "text encoder": encoder}
    else:
        pipe, networks, text_params = flow_pipeline(model, tiny, tok, text)
    pipe = pipe.to(device, dtype)
    projection = small.get("projection", PROJECTION)
    vision = VISION | small.get("vision", {}) | dict(image_size=224)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    clip.text_model = clip.text_projection = None  # the aesthetic reward reads images only
    reward = LAIONAesthetic(clip.to(device, dtype), CLIPImageProcessor(), AestheticHead(projection))
    params = {
        k: sum(p.numel() for p in m.parameters())
        for k, m in (networks | {"CLIP vision tower": clip.vision_model}).items()
    }
    if model != "sd15":
        params["text encoders (1 layer each)"] = text_params
    return pipe, reward, params


def run_config(name: str, pipe, reward, args) -> dict:
    """Run one configuration; return its counts, seconds and images (N, 3, H, W)."""
    N, K = args.particles, args.steps
    size = args.latent * pipe.vae_scale_factor
    prior = from_pipeline(
        pipe, PROMPT, guidance_scale=7.5 if args.model == "sd15" else None, num_steps=K, eta=1.0, height=size,
        width=size, gradient_checkpointing=name == "das-ckpt",
    )  # fmt: skip

    def model():
        z = pyro.sample("z", prior)
        tilted.factor("aesthetic", reward.after(prior.decode), z, temperature=0.005)

    start = time.perf_counter()
    if name == "plain":
        z = prior.sample((N,), generator=0)
        counts = {"denoiser_calls": N * K, "reward_calls": 0, "gradient_evaluations": 0}
    else:
        settings = {"smc-prior": {"proposal": "prior"}, "das-micro": {"batch_size": args.micro}}.get(name, {})
        result = das(model, N, num_steps=K, progress=False, **settings).run(seed=0)
        z = result.sample(N, seed=0)["z"]
        counts = result.counts.as_dict()
    with torch.no_grad():
        images = torch.stack([prior.decode(zi) for zi in z])  # the N output images, one decoder call each
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if name == "das-ckpt":  # leave the shared networks as they were
        (getattr(pipe, "unet", None) or pipe.transformer).disable_gradient_checkpointing()
        pipe.vae.disable_gradient_checkpointing()
    assert images.shape == (N, 3, size, size) and torch.isfinite(images).all()
    return {"config": name, "seconds": seconds, **counts}


def measured(name: str, pipe, reward, args) -> dict:
    """``run_config`` with its peak memory above the state before it (CUDA allocator, or peak RSS)."""
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        row = run_config(name, pipe, reward, args)
        return row | {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux: the child's RSS at fork
    row = run_config(name, pipe, reward, args)
    return row | {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}


def _child(conn, name, pipe, reward, args):
    try:
        conn.send(measured(name, pipe, reward, args))
    except BaseException as error:  # report, so the parent can say which configuration failed
        conn.send({"config": name, "error": f"{type(error).__name__}: {error}"})
    finally:
        conn.close()


def in_fork(name: str, pipe, reward, args) -> dict:
    """``measured`` in a forked process (CPU): its peak RSS is this configuration's alone."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, name, pipe, reward, args))
    proc.start()
    child.close()
    row = parent.recv()
    proc.join()
    if "error" in row:
        raise RuntimeError(f"configuration {name!r} failed: {row['error']}")
    return row


def warm_up(pipe, reward, args) -> None:
    """One guided prediction and one reward call, so lazy initialisation is not timed."""
    args_small = argparse.Namespace(**(vars(args) | {"particles": 1, "steps": 1}))
    run_config("plain", pipe, reward, args_small)
    with torch.no_grad():
        size = args.latent * pipe.vae_scale_factor
        reward(torch.rand(1, 3, size, size, device=args.device))


def flops(latent: int) -> dict[str, tuple[float, float]]:
    """(forward, backward to the input) FLOPs of one call for one particle, counted by torch's
    ``FlopCounterMode`` on the meta device (no memory, no time): the guided UNet prediction (2 rows), the
    VAE decoder and the CLIP vision tower with its projection. Weights are frozen: no weight gradients."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def count(fn, x):
        with FlopCounterMode(display=False) as fwd:
            y = fn(x.requires_grad_(True))
        with FlopCounterMode(display=False) as bwd:
            y.float().sum().backward()
        return fwd.get_total_flops(), bwd.get_total_flops()

    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET).requires_grad_(False)
        vae = AutoencoderKL(**VAE).requires_grad_(False)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, image_size=224, projection_dim=PROJECTION))
        clip.requires_grad_(False)
        ctx, t = torch.zeros(2, 77, TEXT["hidden_size"]), torch.full((2,), 500)
        return {
            "UNet, guided (2 rows)": count(
                lambda z: unet(z, t, encoder_hidden_states=ctx).sample, torch.zeros(2, 4, latent, latent)
            ),
            "VAE decoder": count(lambda z: vae.decode(z).sample, torch.zeros(1, 4, latent, latent)),
            "CLIP ViT-L/14 vision": count(lambda x: clip(pixel_values=x).image_embeds, torch.zeros(1, 3, 224, 224)),
        }


def flop_model(latent: int = 64, K: int = 100) -> list[str]:
    """Per-image FLOPs of (a)–(d) at ``latent``² latents and K steps, from the per-call counts."""
    f = flops(latent)
    (uf, ub), (df, db), (cf, cb) = f.values()
    per_image = {
        "(a) plain": K * uf + df,
        "(b) SMC, prior proposal": K * uf + (K + 1) * (df + cf) + df,
        "(c) DAS": K * (uf + ub + df + db + cf + cb) + (df + cf) + df,
        "(d) DAS + checkpointing": K * (2 * uf + ub + 2 * df + db + cf + cb) + (df + cf) + df,
    }
    lines = [
        f"**FLOP model at SD 1.5's size (an extrapolation, not a measurement).** FLOPs of one call for one "
        f"particle at 4×{latent}×{latent} latents, counted by `torch.utils.flop_counter` on the meta device "
        "(backward: the gradient to the input only; the weights are frozen):",
        "",
        "| network call | forward TFLOP | backward TFLOP |",
        "|---|---:|---:|",
        *(f"| {name} | {a / 1e12:.3f} | {b / 1e12:.3f} |" for name, (a, b) in f.items()),
        "",
        f"Per output image with K = {K} (K denoiser calls, K + 1 reward calls, K gradients for DAS; one decode "
        "of the output): "
        + "; ".join(
            f"{name} {v / 1e12:,.0f} TFLOP ({v / per_image['(a) plain']:.2f}× (a))" for name, v in per_image.items()
        )
        + ". Where the GPU runs these networks at similar utilisation, times scale like these ratios.",
        "",
    ]
    return lines


def machine(args) -> str:
    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"


def table(rows: list[dict], N: int) -> list[str]:
    base = next(r for r in rows if r["config"] == "plain")
    lines = [
        "| configuration | denoiser calls / image | reward calls / image | gradients / image | seconds / image "
        "| peak memory (MB, run of N) | time × (a) | memory × (a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        lines.append(
            f"| {LABELS[r['config']]} | {r['denoiser_calls'] / N:g} | {r['reward_calls'] / N:g} | "
            f"{r['gradient_evaluations'] / N:g} | {r['seconds'] / N:.2f} | {r['peak_mb']:,.0f} | "
            f"{r['seconds'] / base['seconds']:.2f} | {mem:.2f} |"
        )
    return lines


def interpret(rows: list[dict], net: str = "UNet") -> str:
    by = {r["config"]: r for r in rows}
    t = {k: r["seconds"] / by["plain"]["seconds"] for k, r in by.items()}
    m = {k: r["peak_mb"] for k, r in by.items()}
    parts = []
    if "smc-prior" in t:
        parts.append(
            f"With the same chain, SMC with the prior proposal costs {t['smc-prior']:.1f}× plain sampling: the "
            "extra is a reward call per particle and step, a VAE decode plus a CLIP ViT-L/14 forward."
        )
    if "das" in t:
        parts.append(
            f"The gradient proposal (DAS) costs {t['das']:.1f}× plain: every step adds the backward pass through "
            f"CLIP, the decoder and the {net} rows of the guided prediction (about a forward's FLOPs each: the "
            "weights are frozen, so only input gradients are computed)."
        )
    parts.append(
        f"DAS's extra memory is the autograd graph of the particles of one network call through the {net} rows, "
        "the decoder and CLIP, held from the forward pass to the gradient."
    )
    if "das-ckpt" in by and "das" in by:
        parts.append(
            f"Gradient checkpointing takes DAS's extra peak memory from {m['das']:,.0f} to {m['das-ckpt']:,.0f} MB "
            f"for {by['das-ckpt']['seconds'] / by['das']['seconds']:.2f}× its time: {net} and decoder activations are "
            "recomputed in the backward pass, CLIP's are kept."
        )
    if "das-micro" in by and "das" in by:
        parts.append(
            f"Micro-batches bound the activations held at once by the batch instead of N: {m['das-micro']:,.0f} "
            f"against {m['das']:,.0f} MB, at {by['das-micro']['seconds'] / by['das']['seconds']:.2f}× the time."
        )
    return " ".join(parts)


def report(rows: list[dict], params: dict, args, command: str, total: float) -> str:
    """The page's header (unless ``--append``) and this run's section: settings, table, interpretation."""
    N, K = args.particles, args.steps
    size = args.latent * 8
    cpu = not args.device.startswith("cuda")
    memory = (
        "peak RSS (`resource.getrusage`, `ru_maxrss`) of a forked process per configuration, minus its RSS at "
        "the fork (the models, built and warmed up in the parent)"
        if cpu
        else "`torch.cuda.max_memory_allocated` minus the allocation before the configuration (models resident)"
    )
    nets = ", ".join(f"{k} {v / 1e6:.3g} M" for k, v in params.items())
    header = [
        "# Cost of tilted sampling with a Stable-Diffusion-1.5-sized model",
        "",
        "Generated by `benchmarks/sd_cost.py` (one section per run); do not edit by hand.",
        "",
        "**What runs.** Networks built from SD 1.5's and CLIP ViT-L/14's configurations with random weights "
        "(the weights do not change the cost; the text encoder has a character vocabulary of 54 tokens instead "
        "of 49,408, 38 M fewer parameters, and runs once per prompt); one prompt, N particles, K steps, guidance 7.5, η = 1, the "
        "LAION aesthetic reward through the VAE decoder at α = 0.005, DAS tempering (the `das` preset). CLIP "
        "resizes every image to 224×224, so the reward's cost does not depend on the latent size. Every "
        "configuration ends with its N output images decoded. (a) is `prior.sample((N,))` under `no_grad`, "
        "the chain an SD user samples without tilting (not `Importance`, which adds a reward call per particle).",
        "",
        "**What is measured.** Per output image (a run's total divided by N): the engines' counts (a denoiser "
        "call is one guided prediction for one particle, two UNet rows under guidance; (a) makes N·K), and "
        "wall-clock seconds of one run; peak memory is that of the whole run of N particles. Ratios are "
        "against (a) in the same run.",
        "",
        *([] if args.tiny else flop_model()),
        "## SD3-medium and FLUX.1-dev (filled on a GPU)",
        "",
        "`--model sd3` and `--model flux` build SD3-medium's (2.0 B) and FLUX.1-dev's (11.9 B) "
        "transformers and 16-channel VAEs from their configurations, through `from_pipeline`'s flow path "
        "(docs/pipelines.md); their sections are appended by `python -m benchmarks.sd_cost --model sd3 --device "
        "cuda --dtype bfloat16 --latent 128 --append` (and `--model flux`) on a GPU (FLUX.1-dev's transformer is "
        "24 GB in bfloat16 and does not fit this CPU machine in float32). Until such a run, this page has no "
        "SD3 or FLUX section.",
        "",
    ]
    flow = args.model != "sd15"
    shape = f"16×{args.latent}×{args.latent}" if flow else f"4×{args.latent}×{args.latent}"
    full = "16×128×128 latents, 1024×1024 images" if flow else "4×64×64 latents, 512×512 images"
    section = [
        f"## {MODELS[args.model] + ', ' if flow else ''}{args.device}, latents {shape}, N = {N}, K = {K}, {args.dtype}",
        "",
        f"Command: `{command}`. Machine: {machine(args)}; torch {torch.__version__}; "
        f"{datetime.date.today().isoformat()}; whole run {total:.0f} s. Images {size}×{size} "
        f"({MODELS[args.model]}: {full}). Parameters{' (tiny smoke version)' if args.tiny else ''}: {nets}. "
        f"Peak memory: {memory}."
        + (
            " Guidance: the pipeline's default (SD3: classifier-free w = 7, two transformer rows per call; FLUX: "
            "embedded w = 3.5, one row), the reward as for SD 1.5."
            if flow
            else ""
        ),
        "",
        *table(rows, N),
        "",
        interpret(rows, "transformer" if flow else "UNet"),
        "",
    ]
    if cpu and flow:
        section += [
            f"**No GPU was lent to this run**: run `python -m benchmarks.sd_cost --model {args.model} --device cuda "
            "--dtype bfloat16 --latent 128 --append` on one for the figures at 1024².",
            "",
        ]
    elif cpu:
        section += [
            "**No GPU was lent to this run.** The 64×64-latent figures on a GPU need one: run "
            "`python -m benchmarks.sd_cost --device cuda --latent 64` there (`--append` adds its section to "
            "this page). On CPU the UNet and VAE at small latents are cheap next to CLIP ViT-L/14, so the time "
            "ratios at 8×8 latents overstate what the reward adds at 64×64, where the UNet and the decoder "
            "dominate; the counts per image do not depend on the device or the latent size.",
            "",
        ]
    return "\n".join(section if args.append else header + section)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sd_cost", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:1, …)")
    p.add_argument("--model", choices=list(MODELS), default="sd15", help="the architecture built (default sd15)")
    p.add_argument("--latent", type=int, default=8, help="latent side (SD 1.5: 64; SD3 and FLUX at 1024²: 128)")
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--micro", type=int, default=1, help="batch_size of (e)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="float16 on CUDA")
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--tiny", action="store_true", help="tiny networks of the same architectures (smoke test)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks_sd.md"))
    p.add_argument("--append", action="store_true", help="add this run's section to --out instead of rewriting it")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    if "plain" not in args.configs:
        args.configs.insert(0, "plain")  # every ratio is against (a)
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    command = " ".join(["python -m benchmarks.sd_cost", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe, reward, params = build(args.tiny, args.device, getattr(torch, args.dtype), args.model)
    warm_up(pipe, reward, args)
    run = measured if args.device.startswith("cuda") else in_fork
    rows = []
    for name in args.configs:
        rows.append(run(name, pipe, reward, args))
        print(json.dumps(rows[-1]), flush=True)
    text = report(rows, params, args, command, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a" if args.append else "w") as f:
        f.write(text)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
