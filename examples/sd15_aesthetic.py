"""Stable Diffusion 1.5 tilted towards the LAION aesthetic score, sampled with DAS (SMC, gradient proposal).

Target, per prompt c: p_tar(z | c) ∝ p_SD1.5(z | c) · exp(r(D(z)) / α), z the 4×64×64 latents, D the VAE
decoder, r the LAION aesthetic predictor v2 on CLIP ViT-L/14. Defaults are DAS's for SD 1.5 and the
aesthetic reward (Kim, Kim & Ye, ICLR 2025; `config/sd.py` of github.com/krafton-ai/DAS): α = 0.005
(``kl_coeff``), 100 steps with η = 1, 4 particles, tempering γ = 0.008, SSP resampling when ESS < N/2,
and guidance scale 5 (the DDPO base configuration DAS builds on). The ``das`` preset fixes the
proposal, tempering and resampling; this script sets the rest.

Weights (a GPU machine with network; nothing is downloaded at run time if you pass folders):

    hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "*.json" --include "*.txt" \\
        --include "*/diffusion_pytorch_model.safetensors" --include "text_encoder/model.safetensors" \\
        --local-dir models/stable-diffusion-v1-5
    hf download openai/clip-vit-large-patch14 --exclude "*.h5" --exclude "*.msgpack" --local-dir models/clip-vit-large-patch14
    curl -L -O https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth

Run:

    python examples/sd15_aesthetic.py --model models/stable-diffusion-v1-5 --clip models/clip-vit-large-patch14 \\
        --head sac+logos+ava1-l14-linearMSE.pth --prompts cat dog --device cuda --dtype float16 --out outputs/sd15

Cost with the defaults (P prompts, N = 4 particles, K = 100 steps): P·(N·K + 1) guided denoiser calls (two
UNet rows each) with as many gradients through UNet, VAE decoder and CLIP, plus P·N·K calls for the
pretrained baseline; see docs/pipelines.md for time and memory. Missing weights raise
``MissingWeightsError`` with the download command.
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

import pyro
import torch

import tilted
from tilted.diagnostics import save
from tilted.distributions import from_pipeline
from tilted.inference import Importance, das
from tilted.rewards import LAIONAesthetic
from tilted.rewards.loading import from_pretrained

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=SD15, help="SD 1.5 folder or hub id")
    p.add_argument("--clip", default="openai/clip-vit-large-patch14", help="CLIP ViT-L/14 folder or hub id")
    p.add_argument("--head", default="sac+logos+ava1-l14-linearMSE.pth", help="the aesthetic head's .pth")
    p.add_argument("--prompts", nargs="+", default=["cat", "dog"], help="one target (group) per prompt")
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.005, help="α (DAS's kl_coeff)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--eta", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=None, help="particles per network call (memory)")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default: float16 on CUDA")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("outputs/sd15_aesthetic"))
    return p.parse_args(argv)


def save_images(prior, latents: torch.Tensor, folder: Path, stem: str) -> None:
    """Decode latents (n, 4, h, w) one at a time and write ``stem_00.png``, …"""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(latents):
        with torch.no_grad():
            img = (prior.decode(z) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        Image.fromarray(img).save(folder / f"{stem}_{i:02d}.png")


@functools.lru_cache(maxsize=1)
def networks(model: str, clip: str, head: str, device: str, dtype: str | None):
    """The SD pipeline and the aesthetic reward, loaded once per process (a batch worker keeps them)."""
    from diffusers import StableDiffusionPipeline

    dtype = getattr(torch, dtype or ("float16" if str(device).startswith("cuda") else "float32"))
    pipe = from_pretrained(
        StableDiffusionPipeline, model, what="Stable Diffusion 1.5", default_id=SD15,
        usage="python examples/sd15_aesthetic.py --model {folder}",
        dtype=dtype, safety_checker=None, requires_safety_checker=False,
    ).to(device)  # fmt: skip
    return pipe, LAIONAesthetic.from_pretrained(clip, head=head, device=device, dtype=dtype)


def tilted_model(prompts, *, model=SD15, clip="openai/clip-vit-large-patch14", head="sac+logos+ava1-l14-linearMSE.pth",
                 temperature=0.005, guidance=5.0, steps=100, eta=1.0, device="cuda", dtype=None,
                 gradient_checkpointing=False):  # fmt: skip
    """The Pyro model of p_tar(z | c) for each prompt c (one group per prompt), and its SD prior."""
    pipe, aesthetic = networks(model, clip, head, device, dtype)
    prior = from_pipeline(
        pipe, list(prompts), guidance_scale=guidance, num_steps=steps, eta=eta,
        gradient_checkpointing=gradient_checkpointing,
    )  # fmt: skip

    def tilted_sd():
        z = pyro.sample("z", prior)
        tilted.factor("aesthetic", aesthetic.after(prior.decode), z, temperature=temperature)

    return tilted_sd, prior


def batch_model(prompt: str, **options):
    """A ``tilted batch`` model factory: one prompt per task, the networks loaded once per worker
    (``model = "examples/sd15_aesthetic.py:batch_model"``, options as :func:`tilted_model`; docs/batch.md)."""
    return tilted_model([prompt], **options)[0]


def main(argv=None) -> tilted.inference.Result:
    args = parse(argv)
    model, prior = tilted_model(
        args.prompts, model=args.model, clip=args.clip, head=args.head, temperature=args.temperature,
        guidance=args.guidance, steps=args.steps, eta=args.eta, device=args.device, dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip
    N = args.particles
    result = das(model, N, num_steps=args.steps, batch_size=args.batch_size).run(seed=args.seed)
    pretrained = Importance(model, N, batch_size=args.batch_size).run(seed=args.seed + 1)  # rewards before

    draws = result.sample(N, seed=args.seed)["z"]  # (P, N, 4, h, w): equally weighted draws per prompt
    for p, prompt in enumerate(args.prompts):
        folder = args.out / f"{p:02d}-{re.sub('[^a-z0-9]+', '-', prompt.lower()).strip('-')[:40]}"
        save_images(prior, draws[p], folder, "tilted")
        save_images(prior, pretrained.particles["z"][p], folder, "pretrained")
        before, after = pretrained.rewards["aesthetic"][p], result.rewards["aesthetic"][p]
        print(
            f"{prompt!r}: ESS {float(result.ess[p]):.2f}/{N}, log Z {float(result.log_evidence[p]):.2f}; aesthetic "
            f"pretrained {float(before.mean()):.3f} ± {float(before.std()):.3f}, "
            f"tilted (weighted) {float((result.weights[p] * after).sum()):.3f}"
        )
    print(f"DAS counts: {result.counts.as_dict()}; pretrained baseline: {pretrained.counts.as_dict()}")
    path = save(result, args.out / "result.nc", baseline=pretrained, metadata={"prompts": args.prompts})
    print(f"images and {path} written to {args.out}")
    return result


if __name__ == "__main__":
    main()
