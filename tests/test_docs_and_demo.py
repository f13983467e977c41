"""The README's and docs' examples run as written; the demo and the presets run end to end."""

import re
from pathlib import Path

import pyro
import pytest
import torch

import tilted
from tilted.cli import main
from tilted.demo import das_toy, run_demo
from tilted.demo_digits import run_digits_demo
from tilted.distributions import GaussianDiffusion
from tilted.inference import das, fk_steering
from tilted.tempering import Exponential

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", (ROOT / path).read_text(), flags=re.S)


def run_block(path, needle, replacements) -> dict:
    """Run the one Python block of ``path`` that contains ``needle``, each (old, new) of ``replacements``
    substituted (every old must occur); return its namespace."""
    (block,) = [b for b in python_blocks(path) if needle in b]
    for old, new in replacements:
        assert old in block, old
        block = block.replace(old, new)
    namespace = {}
    exec(compile(block, path, "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.parametrize(
    "path", ["README.md", "docs/modelling.md", "docs/pretrained.md", "docs/online.md", "docs/sequences.md"]
)
def test_examples_run_as_written(path):
    blocks = python_blocks(path)
    assert blocks
    for block in blocks:
        if "StableDiffusionPipeline" in block:  # needs weights: run on tiny ones in test_examples_sd.py
            continue
        if "esm2_t6_8M" in block:  # needs ESM-2's weights: run on a tiny saved ESM in test_masked_lm.py
            continue
        namespace = {}
        exec(compile(block, path, "exec"), namespace)  # noqa: S102
        if "result" in namespace:
            res = namespace["result"]
            assert res.particles["x"].shape == (1024, 2) and torch.isfinite(res.log_evidence)
        if path == "docs/pretrained.md":  # the two-factor digits model: 0s, more symmetric than real 0s
            images, classifier = namespace["images"], namespace["classifier"]
            assert (classifier(images).argmax(-1) == 0).all()
            assert float(namespace["Symmetry"]()(images).mean()) > -0.19
        if path == "docs/sequences.md":  # the steered peptides are more hydrophobic than the model's own
            steered, prior, hydrophobic = namespace["steered"], namespace["prior"], namespace["hydrophobic"]
            tilted_mean = float((steered.weights * hydrophobic(steered.particles["x"])).sum())
            assert tilted_mean > float(hydrophobic(prior.sample((512,), generator=5)).mean()) + 0.1
        if path == "docs/online.md":  # the last batch sits on the bump (prior mean value ≈ 0.067, see test_online)
            assert float(namespace["history"].mean()[-1]) > 0.4


def test_demo_writes_figure_and_beats_pretrained(tmp_path, capsys):
    out = run_demo(out=str(tmp_path), seed=0, runs=200, particles=8, steps=20)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    rows = {r["engine"]: r for r in out["rows"]}
    # the tilted engines move the samples towards the target: far below the pretrained EMD (≈ 2.5)
    for name in ("importance sampling", "SMC, bootstrap", "SMC, gradient (DAS)"):
        assert rows[name]["emd"] < 0.5 * rows["pretrained"]["emd"]
        assert rows[name]["mean_reward"] > rows["pretrained"]["mean_reward"]
    assert "exact log Z" in capsys.readouterr().out


def test_cli_parses(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr("tilted.demo.run_demo", lambda **kw: calls.update(kw))
    assert main(["demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert calls == {"out": str(tmp_path), "seed": 3}


def test_cli_runs_the_digits_demo(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr("tilted.demo_digits.run_digits_demo", lambda **kw: calls.update(kw))
    assert main(["demo", "digits", "--out", str(tmp_path), "--label", "7"]) == 0
    assert calls == {"out": str(tmp_path), "seed": 0, "label": 7}


def test_digits_demo_writes_the_grid_and_tilts_toward_the_class(tmp_path, capsys):
    out = run_digits_demo(out=str(tmp_path), seed=0, label=3, images=8, particles=4, steps=15)
    assert (tmp_path / "digits.png").stat().st_size > 10_000
    rows = {r["engine"]: r for r in out["rows"]}
    assert set(rows) >= {"pretrained (unguided)", "SMC, prior", "SMC, gradient", "best-of-N", "SVDD"}
    # every tilted engine raises log p(3 | x) far above the unguided draws' (≈ −11; a 3 is ≈ 0)
    for name, row in rows.items():
        if name not in ("pretrained (unguided)", "held-out real 3s"):
            assert row["reward"] > rows["pretrained (unguided)"]["reward"] + 3, name
    # equal compute: N·K denoiser calls per image for SMC and best-of-N
    assert rows["SMC, prior"]["calls"] == rows["best-of-N"]["calls"] == 4 * 15
    assert "cross" in capsys.readouterr().out


def test_presets_configure_published_samplers():
    data, reward = das_toy()
    prior = GaussianDiffusion(data=data, num_steps=20)

    def model():
        tilted.factor("r", reward, pyro.sample("x", prior), tempering=Exponential(0.5))

    d = das(model, 8, num_steps=20)
    assert d.proposal == "gradient" and d.resampler_name == "ssp" and d.ess_threshold == 0.5
    assert d.tempering.gamma == pytest.approx(0.04)
    f = fk_steering(model, 8, num_steps=20)
    assert f.resample_every == 4 and f.resample_window == (4, 16) and type(f.potential).__name__ == "Max"
    res = f.run(seed=0)
    resampled_steps = res.trace.resampled.nonzero().flatten().tolist()
    assert resampled_steps == [4, 8, 12, 16]
    res = das(model, 64, num_steps=20, num_runs=4).run(seed=0)
    assert res.log_evidence.isfinite().all() and res.counts.gradient_evaluations > 0


def test_search_page_runs_as_written():
    """docs/search.md's blocks, in order: the budget sizes N as the comments say, the chains have the stated
    shape, and every search stays within its budget and finds a reward near the maximum 0 of the toy."""
    namespace = {}
    for block in python_blocks("docs/search.md"):
        exec(compile(block, "docs/search.md", "exec"), namespace)  # noqa: S102
    assert namespace["result"].num_particles == 1000 and namespace["result"].counts.denoiser_calls <= 20_000
    assert namespace["capped"].num_particles == 25 and namespace["capped"].counts.reward_calls <= 500
    assert namespace["chains"].particles["x"].shape == (4, 15, 2)
    assert all(-0.5 < v <= 0 for v in namespace["best"].values()), namespace["best"]
    draws = namespace["draws"]
    assert draws.particles["x"].shape == (64, 2) and draws.counts.denoiser_calls <= 2_000
