"""tilted.online: surrogates with uncertainty, the optimistic loop, failing oracles, interrupt and resume.

The prior is an exact-denoiser mixture with 10 steps (cheap); the black box is a bump at (2, 2),
away from the prior's bulk at the origin.
"""

from __future__ import annotations

import math

import pytest
import torch

from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.errors import ModelError, ShapeError
from tilted.inference import BestOfN
from tilted.online import Ensemble, History, NeuralLinear, OracleError, optimize
from tilted.online.loop import query, set_optimism

CENTRE = torch.tensor([2.0, 2.0], dtype=torch.float64)


def prior(num_steps: int = 10) -> GaussianDiffusion:
    means = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    return GaussianDiffusion(data=GaussianMixture(means, 0.25, weights=torch.tensor([0.9, 0.1])), num_steps=num_steps)


def bump(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-(x.double() - CENTRE).pow(2).sum(-1))


def smooth(n: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = spread * torch.randn(n, 2, generator=g)
    return x, torch.sin(2 * x[:, 0]) + x[:, 1].pow(2)


FAST = {"hidden": 32, "epochs": 200, "patience": 20}


# -- surrogates -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make", [lambda: Ensemble(**FAST), lambda: NeuralLinear(**FAST)], ids=["ensemble", "neural-linear"]
)
def test_surrogate_fits_held_out_and_is_less_sure_far_from_the_data(make):
    x, y = smooth(300, 0)
    sur = make().fit(x, y, event_dim=1, generator=torch.Generator().manual_seed(1))
    xt, yt = smooth(200, 2)
    mean, bonus = sur.predict(xt)
    assert mean.shape == bonus.shape == (200,)
    assert float((mean - yt).pow(2).mean()) < 0.1 * float(yt.var())  # explains > 90 % of the variance
    far = torch.tensor([[6.0, -6.0], [-6.0, 6.0], [7.0, 0.0]])
    assert float(sur.predict(far)[1].min()) > 2 * float(bonus.median())
    x0 = xt[:5].clone().requires_grad_(True)
    sur(x0).sum().backward()  # the optimistic value is differentiable in x
    assert torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0


def test_fit_leaves_out_failed_queries_and_records_the_split():
    x, y = smooth(100, 0)
    y[::10] = math.nan
    sur = Ensemble(**FAST).fit(x, y, event_dim=1, generator=torch.Generator().manual_seed(0))
    record = sur.history[-1]
    assert record["queries"] == 90 and record["val_size"] == 18  # 20 % of the 90 finite values
    assert len(sur.split["train"]) + len(sur.split["val"]) == 90
    assert not set(sur.split["train"].tolist()) & set(sur.split["val"].tolist())
    assert torch.isfinite(sur(x)).all()


def test_early_stopping_keeps_the_best_validation_weights():
    x = torch.randn(80, 2, generator=torch.Generator().manual_seed(0))
    y = torch.randn(80, generator=torch.Generator().manual_seed(1))  # pure noise: validation error can't improve long
    sur = NeuralLinear(hidden=32, epochs=2000, patience=10).fit(
        x, y, event_dim=1, generator=torch.Generator().manual_seed(2)
    )
    record = sur.history[-1]
    assert record["epochs"] < 2000
    z = (sur.embed(x) - sur.x_mean) / sur.x_std
    ys = (y - sur.y_mean) / sur.y_std
    val = sur.split["val"]
    with torch.no_grad():
        err = float((sur.net(z[val]).squeeze(-1) - ys[val]).pow(2).mean())
    assert err == pytest.approx(record["val_mse"], rel=1e-5)


def test_warm_start_continues_from_the_last_weights():
    x, y = smooth(200, 0)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    warm = Ensemble(**FAST).fit(x, y, event_dim=1, generator=gen())
    heads = warm.heads
    first = [h["epochs"] for h in warm.history[-1]["heads"]]
    warm.fit(x, y, event_dim=1, generator=gen())
    assert warm.heads is heads
    assert sum(h["epochs"] for h in warm.history[-1]["heads"]) < sum(first)  # starts near its optimum
    cold = Ensemble(**FAST, warm_start=False).fit(x, y, event_dim=1, generator=gen())
    heads = cold.heads
    cold.fit(x, y, event_dim=1, generator=gen())
    assert cold.heads is not heads


def test_surrogate_reads_features_and_optimism_settings():
    x, y = smooth(120, 0)
    sur = NeuralLinear(features=lambda x: torch.cat([x, x.pow(2)], -1), **FAST)
    sur.fit(x.reshape(120, 1, 2), y, event_dim=2, generator=torch.Generator().manual_seed(0))
    assert sur.x_mean.shape == (4,)
    mean, bonus = sur.predict(torch.zeros(3, 1, 2))
    assert mean.shape == (3,) and (bonus > 0).all() and (bonus <= sur.cap * sur.y_std + 1e-6).all()
    set_optimism(sur, "off")
    assert (sur.predict(torch.zeros(3, 1, 2))[1] == 0).all()
    ens = Ensemble(**FAST).fit(x, y, event_dim=1, generator=torch.Generator().manual_seed(0))
    set_optimism(ens, 2.0)
    assert ens.optimism == "ucb" and ens.kappa == 2.0
    ens.optimism = "max"
    mean, bonus = ens.predict(x[:10])
    assert (bonus >= 0).all()
    set_optimism(ens, 0)
    assert (ens.predict(x[:10])[1] == 0).all()


def test_surrogate_bad_settings_are_clear_errors():
    with pytest.raises(ModelError, match="num_heads"):
        Ensemble(num_heads=1)
    with pytest.raises(ModelError, match="optimism"):
        Ensemble(optimism="greedy")
    with pytest.raises(ModelError, match="lam"):
        NeuralLinear(lam=0)
    with pytest.raises(ModelError, match="val_fraction"):
        Ensemble(val_fraction=1.0)
    with pytest.raises(ModelError, match="not fitted"):
        Ensemble().predict(torch.zeros(2, 2))
    with pytest.raises(ModelError, match="at least 2 finite"):
        Ensemble().fit(torch.zeros(3, 2), torch.tensor([1.0, math.nan, math.inf]), event_dim=1)
    with pytest.raises(ShapeError):
        Ensemble().fit(torch.zeros(3, 2), torch.zeros(4), event_dim=1)
    with pytest.raises(ModelError, match="optimism"):
        set_optimism(Ensemble(), -1)


# -- the loop -----------------------------------------------------------------------------------------
def run(**kwargs) -> History:
    options = dict(rounds=3, batch_size=8, temperature=0.2, seed=0, surrogate=Ensemble(**FAST), progress=False)
    return optimize(prior(), kwargs.pop("oracle", bump), **{**options, **kwargs})


def test_history_holds_every_round():
    seen = []
    h = run(initial=12, callback=lambda h: seen.append(h.num_rounds))
    assert seen == [1, 2, 3] and h.num_rounds == 3 and h.seed == 0
    assert [tuple(x.shape) for x in h.x] == [(12, 2), (8, 2), (8, 2)]
    assert [tuple(y.shape) for y in h.y] == [(12,), (8,), (8,)]
    assert h.queries.tolist() == [12, 20, 28]
    assert h.surrogates[0] is None and h.results[0] is None
    assert all(isinstance(s, Ensemble) for s in h.surrogates[1:])
    assert h.surrogates[1] is not h.surrogates[2]  # a snapshot per round, not the live surrogate
    assert h.surrogates[1].history[-1]["queries"] == 12 and h.surrogates[2].history[-1]["queries"] == 20
    assert all(r.batched and r.log_weights.shape == (8, 16) for r in h.results[1:])
    assert torch.equal(h.y[1], bump(h.x[1]))
    best = h.best()
    assert torch.all(best[1:] >= best[:-1]) and float(best[-1]) == float(torch.cat(h.y).max())
    assert float(bump(h.best_x()[None])) == float(best[-1])


def test_same_seed_same_run_and_any_engine():
    a, b = run(), run()
    assert all(torch.equal(u, v) for u, v in zip(a.x, b.x, strict=True))
    engine = lambda model: BestOfN(model, 1, num_candidates=4, num_runs=8)  # noqa: E731 — best-of-N against r̂⁺
    h = run(engine=engine, surrogate=NeuralLinear(**FAST), optimism="off")
    assert h.surrogates[1].beta == 0 and h.results[1].log_weights.shape == (8, 1)


def test_failed_queries_are_nan_kept_and_left_out_of_the_fit():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(x) > 1 and len(calls) % 2:  # every other batch call raises: retried
            raise RuntimeError("instrument busy")
        y = bump(x)
        y[x[:, 0] < 0] = math.nan  # the assay fails on part of the space
        return y

    h = run(oracle=flaky)
    y = torch.cat(h.y)
    assert y.isnan().any() and torch.isfinite(y).any() and len(y) == 24
    assert h.surrogates[2].history[-1]["queries"] == int(torch.isfinite(torch.cat(h.y[:2])).sum())


def test_an_oracle_failing_on_a_whole_round_is_an_error_after_the_retries():
    calls = []

    def broken(x):
        calls.append(len(x))
        raise ConnectionError("lab offline")

    with pytest.raises(OracleError, match="lab offline"):
        run(oracle=broken, retries=1)
    assert calls == [8, 8] + [1] * 8  # 1 + 1 retry of the batch, then each point once
    with pytest.raises(OracleError, match="no finite value"):
        run(oracle=lambda x: torch.full((len(x),), math.nan))
    with pytest.raises(ShapeError, match="one value per query"):
        run(oracle=lambda x: bump(x)[:-1])
    y = query(lambda x: bump(x) if len(x) == 1 else 1 / 0, torch.zeros(3, 2), retries=0)
    assert torch.allclose(y, bump(torch.zeros(3, 2)))  # per-point fallback


def test_interrupt_and_resume_keeps_every_query(tmp_path):
    settings = dict(surrogate=Ensemble(**FAST, warm_start=False), chunk=2, rounds=4)
    full = run(**settings | {"surrogate": Ensemble(**FAST, warm_start=False)})
    asked = []

    def interrupted(x):
        asked.append(x.clone())
        if len(asked) == 10:  # round 2, second chunk: the user presses Ctrl-C
            raise KeyboardInterrupt
        return bump(x)

    with pytest.raises(KeyboardInterrupt):
        run(oracle=interrupted, store=tmp_path, **settings)
    _, y2, answered = _load(tmp_path, 2)
    assert answered.tolist() == [True, True] + [False] * 6 and torch.isfinite(y2[:2]).all()
    before = len(asked)
    resumed = run(
        oracle=interrupted, store=tmp_path, seed=None, **settings | {"surrogate": Ensemble(**FAST, warm_start=False)}
    )
    assert resumed.resumed == 2 and resumed.num_rounds == 4 and resumed.seed == 0
    again = torch.cat(asked[before:])
    assert not any(torch.equal(a, b) for a in again for b in torch.cat(asked[: before - 1]))  # nothing asked twice
    assert all(torch.equal(u, v) for u, v in zip(full.x, resumed.x, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(full.y, resumed.y, strict=True))
    assert resumed.surrogates[:3] == [None, None, None] and resumed.surrogates[3] is not None


def _load(path, r):
    from safetensors.torch import load_file

    data = load_file(path / f"round_{r:03d}.safetensors")
    return data["x"], data["y"], data["answered"].bool()


def test_a_store_refuses_other_settings(tmp_path):
    run(store=tmp_path, rounds=1)
    with pytest.raises(ModelError, match="other settings"):
        run(store=tmp_path, rounds=1, temperature=0.5)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"rounds": 0}, "rounds"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"initial": 1}, "initial"),
        ({"chunk": 0}, "chunk"),
        ({"surrogate": lambda x: x.sum(-1)}, "Surrogate"),
        ({"optimism": "lots"}, "optimism"),
    ],
)
def test_bad_arguments_are_clear_errors(bad, match):
    with pytest.raises(ModelError, match=match):
        run(**bad)


def test_an_engine_with_the_wrong_number_of_runs_is_named():
    from tilted.inference import SMC

    with pytest.raises(ShapeError, match="num_runs=8"):
        run(engine=lambda model: SMC(model, 4, num_runs=3))


@pytest.mark.slow
def test_the_loop_concentrates_queries_on_the_bump():
    """Mean true value of the last round's batch, 4 seeds × 16 queries, against the prior's mean value.

    Under the prior, E[bump] = 0.1·E[bump | far mode] + 0.9·E[bump | origin] ≈ 0.1·0.67 + 0.9·0.0006
    ≈ 0.067 (computed below from 2^16 draws; s.e. < 0.001). The tilt at α = 0.05 puts nearly all
    its mass on the far mode, so a working loop's last batch has a mean near 0.67; random search from
    the prior stays at 0.067. The test asks for > 0.4: a loop that fails to find the mode (mean ≈
    0.067, spread of a 64-draw mean ≈ 0.2/√64 = 0.03) cannot pass.
    """
    p = prior(20)
    with torch.no_grad():
        reference = float(bump(p.sample((2**16,), generator=torch.Generator().manual_seed(0))).mean())
    assert 0.05 < reference < 0.09
    last = torch.cat(
        [
            optimize(
                p, bump, rounds=4, batch_size=16, temperature=0.05, seed=s, surrogate=Ensemble(**FAST), progress=False
            ).y[-1]
            for s in range(4)
        ]
    )
    assert float(last.mean()) > 0.4


def test_the_digits_example_runs_and_resumes(tmp_path, capsys):
    """examples/online_digits.py as a user runs it (tiny settings), then continued for one more round."""
    import importlib.util
    from pathlib import Path

    file = Path(__file__).parents[1] / "examples" / "online_digits.py"
    spec = importlib.util.spec_from_file_location("online_digits", file)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    args = ["--batch-size", "4", "--steps", "5", "--out", str(tmp_path)]
    first = example.main(["--rounds", "2", *args])
    assert first.num_rounds == 2 and first.resumed == 0
    assert (tmp_path / "progress.png").stat().st_size > 5_000 and (tmp_path / "best.png").exists()
    again = example.main(["--rounds", "3", *args])
    assert again.num_rounds == 3 and again.resumed == 2
    assert all(
        torch.equal(u.nan_to_num(-1e9), v.nan_to_num(-1e9)) for u, v in zip(first.y, again.y[:2], strict=True)
    )  # NaN: failed assays, kept
    assert "12 queries" in capsys.readouterr().out
