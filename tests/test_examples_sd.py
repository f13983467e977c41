"""The Stable Diffusion example and the SD cost benchmark, run as written on tiny stand-ins (no download).

The example script gets a saved tiny SD pipeline (``tiny_sd_pipeline``), a saved tiny CLIP and an
aesthetic head ``.pth`` of the tiny CLIP's projection dimension, through its command line; the
benchmark runs its smoke configuration (tiny networks, every engine configuration, in-process).
"""

import runpy
from pathlib import Path

import pytest
import torch
from test_pipelines import tiny_sd_pipeline
from tiny_models import tiny_clip

from tilted.diagnostics import load
from tilted.errors import MissingWeightsError
from tilted.rewards.aesthetic import AestheticHead

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sd15_aesthetic.py"
PROMPTS = ["a red cat", "a blue sea"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Folders of a tiny SD pipeline and a tiny CLIP, and an aesthetic head file, as a user has them."""
    root = tmp_path_factory.mktemp("weights")
    tiny_sd_pipeline(root / "tokenizer").save_pretrained(root / "sd")
    clip = tiny_clip(root / "clip", projection_dim=24)
    torch.manual_seed(0)
    torch.save(AestheticHead(24).state_dict(), root / "head.pth")
    return {"--model": str(root / "sd"), "--clip": clip, "--head": str(root / "head.pth")}


def test_the_readme_stable_diffusion_example_runs_on_tiny_weights(weights):
    """README's SD block as written, with its folders pointing at tiny weights, CPU and float32, 2 steps."""
    from test_doc_blocks import run_block

    namespace = run_block(
        "README.md",
        "StableDiffusionPipeline",
        (
            ("models/stable-diffusion-v1-5", weights["--model"]),
            ("models/clip-vit-large-patch14", weights["--clip"]),
            ("sac+logos+ava1-l14-linearMSE.pth", weights["--head"]),
            ('"cuda"', '"cpu"'),
            ("torch.float16", "torch.float32"),
            ("num_steps=100", "num_steps=2"),
        ),
    )
    assert namespace["result"].particles["z"].shape == (2, 4, 4, 8, 8)
    assert namespace["images"].shape == (2, 4, 3, 16, 16) and 0 <= namespace["images"].min()


def test_the_dtype_keyword_of_the_docs_is_honoured_by_diffusers(weights):
    """README and examples load pipelines with ``dtype=`` (diffusers ≥ 0.40); an older diffusers would ignore
    it and load float32 weights without a word, so check that the networks arrive in the dtype asked for."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(weights["--model"], dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16


def run_example(argv: list[str]):
    """The script's file as written, its ``main`` called with command-line arguments ``argv``."""
    return runpy.run_path(str(EXAMPLE), run_name="sd15_example")["main"](argv)


def test_the_example_writes_images_and_a_result_per_prompt(weights, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [x for kv in weights.items() for x in kv]
    argv += ["--prompts", *PROMPTS, "--steps", "2", "--particles", "2", "--dtype", "float32"]
    argv += ["--device", "cpu", "--out", str(out), "--batch-size", "1"]
    result = run_example(argv)
    printed = capsys.readouterr().out
    assert result.particles["z"].shape == (2, 2, 4, 8, 8) and torch.isfinite(result.log_evidence).all()
    # two runs (one per prompt) of 2 particles × 2 steps (DAS tempering starts at λ = 0: no drift probe at
    # x_K), each with a gradient; the exact reward of the final particles is one more reward call each
    counts = result.counts
    assert counts.denoiser_calls == 2 * 2 * 2 == counts.gradient_evaluations == counts.reward_calls - 2 * 2
    for p, folder in enumerate(("00-a-red-cat", "01-a-blue-sea")):
        pngs = sorted((out / folder).glob("*.png"))
        assert [f.name for f in pngs] == ["pretrained_00.png", "pretrained_01.png", "tilted_00.png", "tilted_01.png"]
        from PIL import Image

        assert Image.open(pngs[0]).size == (16, 16)
        assert f"{PROMPTS[p]!r}: ESS" in printed
    assert "DAS counts" in printed and "log Z" in printed and "pretrained" in printed
    dt = load(out / "result.nc")
    assert dt["particles"]["z"].shape == (2, 2, 4, 8, 8) and "prior" in dt.children
    assert dt.attrs["engine"] == "SMC"


def test_missing_weights_name_what_to_download(weights, tmp_path):
    with pytest.raises(MissingWeightsError, match="hf download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        run_example(["--model", str(tmp_path / "nowhere"), "--device", "cpu", "--out", str(tmp_path)])
    argv = ["--model", weights["--model"], "--clip", weights["--clip"], "--head", str(tmp_path / "none.pth")]
    with pytest.raises(MissingWeightsError, match="improved-aesthetic-predictor"):
        run_example([*argv, "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path)])


def test_the_sd_cost_benchmark_runs_every_configuration_on_tiny_networks(tmp_path):
    from benchmarks import sd_cost

    out = tmp_path / "benchmarks_sd.md"
    rows = sd_cost.main(["--tiny", "--particles", "2", "--steps", "3", "--micro", "1", "--out", str(out)])
    assert [r["config"] for r in rows] == list(sd_cost.CONFIGS)
    N, K = 2, 3
    for r in rows:  # the same chain everywhere: N·K denoiser calls; SMC scores x̂_0 at every level and x_0
        tilting = r["config"] != "plain"
        assert r["denoiser_calls"] == N * K and r["reward_calls"] == tilting * N * (K + 1)
        assert r["gradient_evaluations"] == r["config"].startswith("das") * N * K
        assert r["seconds"] > 0 and r["peak_mb"] >= 0
    text = out.read_text()
    assert "| (c) SMC, gradient proposal (DAS) | 3 | 4 | 3 |" in text and "No GPU was lent" in text


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_the_sd_cost_benchmark_builds_sd3_and_flux_through_the_flow_path(tmp_path, model):
    """``--model sd3|flux --tiny``: the same configurations through ``from_pipeline``'s LatentFlow, and a section
    that names the model and the GPU command that fills it."""
    from benchmarks import sd_cost

    out = tmp_path / "benchmarks_sd.md"
    rows = sd_cost.main(
        ["--model", model, "--tiny", "--particles", "2", "--steps", "2", "--configs", "das", "--out", str(out)]
    )
    assert [r["config"] for r in rows] == ["plain", "das"]
    assert all(r["denoiser_calls"] == 2 * 2 for r in rows) and rows[1]["gradient_evaluations"] == 2 * 2
    text = out.read_text()
    assert f"## {sd_cost.MODELS[model]}, cpu, latents 16×8×8" in text
    assert f"--model {model} --device cuda --dtype bfloat16 --latent 128 --append" in text


def test_the_documented_sd_batch_runs_on_tiny_weights_loading_the_networks_once(weights, tmp_path, capsys):
    """docs/batch.md's 1,000-prompt SD spec as written, its folders pointing at tiny weights, CPU, 2 steps:
    every task is done, and the pipeline and CLIP are loaded once for all tasks (one worker's process)."""
    import json
    import re
    import sys

    from tilted.cli import main

    text = (ROOT / "docs" / "batch.md").read_text()
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "sd15_aesthetic" in b]
    for old, new in (
        ("/data/models/stable-diffusion-v1-5", weights["--model"]),
        ("/data/models/clip-vit-large-patch14", weights["--clip"]),
        ("/data/models/sac+logos+ava1-l14-linearMSE.pth", weights["--head"]),
        ('"cuda"', '"cpu"'),
        ("steps = 100", "steps = 2"),
        ("examples/sd15_aesthetic.py", str(EXAMPLE)),
    ):
        assert old in block, old
        block = block.replace(old, new)
    spec = tmp_path / "sd.toml"
    spec.write_text(block.replace("num_particles = 4", "num_particles = 2").replace("baseline = 4", "baseline = 2"))
    assert main(["batch", str(spec), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    entries = json.loads((tmp_path / "runs" / "manifest.json").read_text())["tasks"]
    assert len(entries) == 6 and all(e["status"] == "done" for e in entries.values())
    (module,) = [m for n, m in sys.modules.items() if n.startswith("_tilted_spec_") and hasattr(m, "batch_model")]
    assert module.networks.cache_info().misses == 1  # six tasks (3 prompts × 2 seeds), one load
    dt = load(tmp_path / "runs" / f"{next(iter(entries))}.nc")
    assert dt["particles"]["z"].shape[-3:] == (4, 8, 8) and "prior" in dt.children
