"""The demo, the digits demo, the command line that starts them and the presets run end to end.

The README's and docs' code blocks run in tests/test_doc_blocks.py.
"""

import pyro
import pytest

import tilted
from tilted.cli import main
from tilted.demo import das_target, run_demo
from tilted.demo_digits import run_digits_demo
from tilted.distributions import GaussianDiffusion
from tilted.errors import ModelError
from tilted.inference import das, fk_steering
from tilted.tempering import Exponential


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
    data, reward = das_target()
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
    # K is read from the model: forgetting num_steps on a 20-step model no longer gives 100 steps' γ
    assert das(model, 8).tempering.gamma == pytest.approx(0.04) and fk_steering(model, 8).resample_every == 4
    with pytest.raises(ModelError, match="num_steps=100 but the model's process has 20 steps"):
        das(model, 8, num_steps=100)

    def needs_args(scale):
        tilted.factor("r", reward, pyro.sample("x", prior), temperature=scale)

    with pytest.raises(ModelError, match="pass num_steps=K"):
        fk_steering(needs_args, 8)
    assert das(needs_args, 8, num_steps=20).tempering.gamma == pytest.approx(0.04)
