"""Smoke test of the benchmark machinery (benchmarks/): tiny settings, sane metrics, a rendered page.

No timing assertions: wall times are reported by ``./run bench``, never tested.
"""

import math
from pathlib import Path

import pytest
import torch

from benchmarks import engines, metrics, report, suite
from benchmarks.report.summary import verdict
from benchmarks.tasks import AffineGaussian, build
from tilted.distributions import GaussianMixture

RUN = {"command": "test", "date": "-", "seconds": 1.0, "cpus": 1}
TINY = suite.Settings(
    points=300,
    repeats=2,
    particles=16,
    num_steps=10,
    lg_steps=10,
    jobs=1,
    plot_points=300,
    learned_chains=256,
    learned_steps=50,
    verdict_repeats=3,
)


def test_exact_draws_score_the_floor_and_importance_with_large_n_beats_pretrained():
    task = build("grid", TINY.num_steps)
    a, b = suite.target_draws(task, TINY, 0, "A"), suite.target_draws(task, TINY, 0, "B")
    floor = metrics.emd(a, b)
    assert metrics.emd(a, a) < 1e-9 < floor
    big = engines.run(engines.get("importance"), task, 512, TINY.points, seed=1, keep_particles=False)
    pre = engines.run(engines.get("pretrained"), task, 16, TINY.points, seed=1, keep_particles=False)
    e_is = metrics.emd(big.points, a)
    e_pre = metrics.emd(pre.points, a)
    assert floor < e_is < e_pre
    h = metrics.median_bandwidth(a)
    assert abs(metrics.mmd2(a, b, h)) < metrics.mmd2(pre.points, a, h)
    assert big.counts["denoiser_calls"] == 512 * TINY.points * TINY.num_steps


def test_suite_metrics_and_page(tmp_path):
    names = [
        "pretrained",
        "importance",
        "smc-bootstrap",
        "smc-adaptive",
        "smc-gauss",
        "smc-learned",
        "oracle-twist",
        "svdd",
    ]
    results = suite.run(["ring", "lg2"], names, TINY, log=lambda msg: None)
    ring, lg = results["ring"], results["lg2"]
    assert set(ring["outputs"]) == set(names)
    # the declared verdict engine and the floors get more repetitions on the toys, and only there
    assert len(ring["reference"]["emd"]) == ring["outputs"]["smc-learned"]["repeats"] == TINY.verdict_repeats
    assert len(lg["reference"]["emd"]) == lg["outputs"]["smc-learned"]["repeats"] == TINY.repeats
    assert ring["outputs"]["smc-bootstrap"]["repeats"] == TINY.repeats
    for res in (ring, lg):
        for m in res["outputs"].values():
            assert all(math.isfinite(v) and v > 0 for v in m["emd_values"])
            assert m["counts"]["denoiser_calls"] > 0
    assert ring["outputs"]["smc-bootstrap"]["counts"]["denoiser_calls"] == 16 * TINY.num_steps
    assert ring["outputs"]["pretrained"]["emd"][0] > ring["outputs"]["smc-bootstrap"]["emd"][0]
    assert ring["outputs"]["smc-adaptive"]["lambdas"][-1] == 1.0
    # the Gaussian potential's own evaluations are counted: a second denoiser call and d = 2 Jacobian rows
    # per particle and level K, …, 1, and M = 8 reward calls each, on top of the engine's
    gauss = ring["outputs"]["smc-gauss"]["counts"]
    assert gauss == {
        "denoiser_calls": 32 * TINY.num_steps,
        "reward_calls": 16 * (8 * TINY.num_steps + 1),  # + the exact final reward
        "gradient_evaluations": 32 * TINY.num_steps,
    }
    # the learned value's fit (256 chains of K steps, one reward each) is shared by the 3 × 300 points
    learned = ring["outputs"]["smc-learned"]
    assert learned["setup"]["chains"] == TINY.learned_chains
    shared = TINY.learned_chains / (TINY.points * TINY.verdict_repeats)
    assert learned["counts"]["denoiser_calls"] == 16 * TINY.num_steps + shared * TINY.num_steps
    assert learned["counts"]["reward_calls"] == 16 + shared
    assert "log_z_abs" not in ring["outputs"]["svdd"]  # approximate: no evidence
    # linear-Gaussian: exact log Z and moments are compared; the exact twist with the gradient proposal
    # (its locally optimal proposal) estimates log Z better than bootstrap SMC
    boot, oracle = lg["outputs"]["smc-bootstrap"], lg["outputs"]["oracle-twist"]
    assert 0 < oracle["log_z_abs"][0] < boot["log_z_abs"][0]
    assert lg["reference"]["mean_error"][0] > 0 and "cov_error" in boot
    path = report.write(results, None, suite.settings_dict(TINY), RUN, tmp_path)
    text = path.read_text()
    assert "| `smc-bootstrap` |" in text and "floor" in text
    assert "`verdict_engine` = `smc-learned`" in text and "On both toys:" in text
    assert (tmp_path / "figures" / "bench_toys.png").exists()
    assert (tmp_path / "figures" / "bench_ring_value.png").exists()


def test_verdict_pairs_each_repetition_with_its_floor_and_reads_the_upper_bound():
    """Gaps are paired by repetition (an engine with fewer repetitions uses the first floors); the verdict
    is "no" above the margin, "clearly" when mean + 1.645 s.e. is within it, else "within noise"."""
    floors = [0.20, 0.21, 0.19, 0.20]
    ref = {"emd": floors}

    def out(gaps):
        return {"emd_values": [f + g for f, g in zip(floors, gaps, strict=False)]}

    g, upper, word = verdict(out([0.01, 0.01, 0.01, 0.01]), ref)
    assert math.isclose(g[0], 0.01) and g[1] < 1e-12 and word == "**yes**, clearly"
    g, upper, word = verdict(out([0.0, 0.05]), ref)  # two repetitions: the first two floors
    assert math.isclose(g[0], 0.025) and math.isclose(upper, 0.025 + 1.645 * 0.025) and word == "**yes**, within noise"
    assert verdict(out([0.04, 0.03, 0.05]), ref)[2] == "**no**"


def test_settings_refuse_an_ineligible_verdict_engine_and_non_positive_repetitions():
    with pytest.raises(ValueError, match="not an eligible SMC engine"):
        suite.Settings(verdict_engine="smc-magic")
    with pytest.raises(ValueError, match="not an eligible SMC engine"):  # an engine, but not N = 16 SMC
        suite.Settings(verdict_engine="oracle-twist")
    with pytest.raises(ValueError, match="verdict_repeats must be a positive integer"):
        suite.Settings(verdict_repeats=0)


def test_discrete_task_total_variation_and_page(tmp_path):
    """Exact draws' TV is the floor; every applicable engine runs; the Gaussian-only engines do not."""
    task = build("discrete", 4)
    assert torch.allclose(task.law.sum(), torch.tensor(1.0, dtype=torch.float64))
    names = ["pretrained", "smc-bootstrap", "smc-gradient-argmax", "oracle-twist", "beam", "taylor-guidance", "dps"]
    assert not suite.applicable(task, "dps") and not suite.applicable(task, "smc-gauss")
    settings = suite.Settings(points=200, repeats=2, jobs=1, discrete_steps=4)
    res = suite.run(["discrete"], names, settings, log=lambda msg: None)["discrete"]
    assert set(res["outputs"]) == set(names) - {"dps"}
    floor = res["reference"]["tv"]
    assert all(0 < f < 1 for f in floor)
    smc, pre = res["outputs"]["smc-bootstrap"], res["outputs"]["pretrained"]
    assert smc["tv"][0] < pre["tv"][0]  # the tilt moves the law towards the target (TV of order 0.7 vs 0.3)
    assert smc["counts"]["denoiser_calls"] == 16 * 4
    path = report.write(res and {"discrete": res}, None, suite.settings_dict(settings), RUN, tmp_path)
    assert "| `taylor-guidance` |" in path.read_text() and "TV − floor" in path.read_text()


def test_affine_gaussian_denoiser_matches_the_library_mixture():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    cov = q @ torch.diag(torch.linspace(0.3, 2.0, 5, dtype=torch.float64)) @ q.mT
    cov = 0.5 * (cov + cov.mT)
    mean = torch.randn(5, generator=gen, dtype=torch.float64)
    fast, ref = AffineGaussian(mean, cov), GaussianMixture(mean[None], cov)
    x = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    for a in (1e-4, 0.3, 0.999):
        assert torch.allclose(fast.posterior_mean(x, a), ref.posterior_mean(x, a), atol=1e-10)


def test_trained_network_tasks_cache_reference_and_page(tmp_path, monkeypatch):
    """The trained-network family on a few training steps: cached weights reload identically, the
    diffusers reference loop draws the same chain as GaussianDiffusion (means within 5 s.e.), the
    reference's log Ẑ is log mean exp(r/α) of its pool, and the page reports the goals."""
    from benchmarks import trained

    monkeypatch.setenv("TILTED_CACHE", str(tmp_path))
    monkeypatch.setattr(trained, "TRAIN_STEPS", 30)
    monkeypatch.setattr(trained, "REFERENCE_CHAINS", 4096)
    task = trained.trained_task("grid", "eps", num_steps=10)
    toy = build("grid", 10)
    again = trained.network(toy, "epsilon")
    for a, b in zip(task.process.denoiser.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    n = 4000
    ours = trained.ancestral(again, "epsilon", 10, n, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lib = task.process.sample((n,), generator=1).double()
    se = (ours.var(0) / n + lib.var(0) / n).sqrt()
    assert ((ours.mean(0) - lib.mean(0)).abs() <= 5 * se).all()
    assert abs(ours.std(0) / lib.std(0) - 1).max() < 0.1  # s.e. of a ratio of sds ≈ √(1/n) ≈ 0.016
    ref = trained.reference(toy.reward, toy.temperature, again, "epsilon", 10, "grid-eps")
    logw = toy.reward(ref["points"]).double()
    assert math.isclose(ref["log_z"], float(torch.logsumexp(logw, 0) - math.log(4096)), rel_tol=1e-9)
    assert 1 <= ref["ess"] <= 4096 and math.isclose(task.log_z, ref["log_z"])
    rep = trained.run_engine(task, {}, points=50, rep=0)
    assert rep["non_finite"] == 0 and math.isfinite(rep["emd"]) and len(rep["log_z_errors"]) == 50
    row = {"floor": [0.1], **{e: {"reps": [dict(rep)], "seconds": 1.0} for e in trained.ENGINES}}
    row["reference"] = {"ess": ref["ess"]}
    page = trained.report({"grid-eps": row}, "test")
    assert "`smc-gradient`" in page and ("all met" in page or "missed" in page)


def test_trained_digits_row_draws_the_unet_chain_and_exact_disjoint_reference_sets(tmp_path, monkeypatch):
    """The digits row: the diffusers loop on the shipped UNet draws the library's chain (pixel means within
    5 s.e.), the rejection draws are the pool's accepted chains, comparison and floor sets are disjoint,
    too few exact draws is a clear error, and a repetition of the default engine is finite."""
    from benchmarks import trained

    monkeypatch.setenv("TILTED_CACHE", str(tmp_path))
    monkeypatch.setitem(trained.DIGITS, "steps", 5)
    task = trained.digits_task(chains=1024)
    n = 512
    ours = trained.ancestral(task.process.denoiser, "epsilon", 5, n, torch.Generator().manual_seed(0), shape=(1, 8, 8))
    with torch.no_grad():
        lib = task.process.sample((n,), generator=1).double()
    se = (ours.var(0) / n + lib.var(0) / n).sqrt()
    assert ((ours.mean(0) - lib.mean(0)).abs() <= 5 * se).all()
    assert task.draws.shape[1] == 64 and 0 < len(task.draws) < 1024
    assert task.reference["exact_draws"] == len(task.draws) and math.isfinite(task.log_z)
    with torch.no_grad():
        accepted_reward = task.reward(task.draws.view(-1, 1, 8, 8).float())
    assert accepted_reward.mean() > math.log(0.5)  # accepted with probability p(3 | x): mostly 3s
    points = len(task.draws) // 4
    a, b = trained.reference_sets(task, points, 1)
    assert torch.cdist(a, b).min() > 0  # disjoint slices, no shared chain
    with pytest.raises(ValueError, match="exact draws"):
        trained.reference_sets(task, len(task.draws), 0)
    rep = trained.run_engine(task, {}, points=8, rep=0)
    assert rep["non_finite"] == 0 and len(rep["log_z_errors"]) == 8 and len(rep["reward_errors"]) == 8


def test_flow_rows_run_every_engine_on_the_exact_flow_and_write_the_page():
    """benchmarks.flows on a short chain: the toy's process becomes FlowMatching over the same data law, every
    engine of the trained family runs finite on it, and the page has a row per engine."""
    from benchmarks import flows, trained
    from tilted.distributions import FlowMatching

    task = flows.flow_task("grid", 0.5, num_steps=10)
    assert isinstance(task.process, FlowMatching) and task.process.eta == 0.5
    assert torch.equal(task.process.data.means, build("grid", 10).process.data.means)
    row = trained._row(task, 40, 1, lambda msg: None)
    assert all(row[e]["reps"][0]["non_finite"] == 0 for e in trained.ENGINES)
    page = flows.report({"grid-flow-eta0.5": row}, "test")
    assert page.count("| grid-flow-eta0.5 |") == len(trained.ENGINES)


def test_trained_velocity_rows_draw_the_flow_chain_through_an_independent_diffusers_loop(tmp_path, monkeypatch):
    """The trained flow rows: the reference loop (diffusers' DDIMScheduler on the VP rescaling of the path) is
    FlowMatching's ODE at η = 0 (same x_K, to float32 rounding) and its η = 1 chain in law (means within
    5 s.e., sds within 10 %: s.e. of a ratio of sds ≈ √(1/n) ≈ 0.016); the flow task runs at its own η."""
    from benchmarks import flows, trained
    from tilted.distributions import FlowMatching

    monkeypatch.setenv("TILTED_CACHE", str(tmp_path))
    monkeypatch.setattr(trained, "TRAIN_STEPS", 30)
    monkeypatch.setattr(trained, "REFERENCE_CHAINS", 4096)
    net = trained.network(build("grid", 10), "velocity")
    n = 4000
    ode = FlowMatching(net, event_shape=(2,), num_steps=10, eta=0.0, time_scale=trained.TRAIN_T)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for k in ode.levels:
            x = ode.draw_transition(x, k)
    loop = trained.ancestral(net, "velocity", 10, n, torch.Generator().manual_seed(0), eta=0.0)
    assert torch.allclose(x.double(), loop, atol=1e-4), (x.double() - loop).abs().max()
    sde = FlowMatching(net, event_shape=(2,), num_steps=10, time_scale=trained.TRAIN_T)
    loop = trained.ancestral(net, "velocity", 10, n, torch.Generator().manual_seed(1), eta=1.0)
    with torch.no_grad():
        lib = sde.sample((n,), generator=2).double()
    se = (loop.var(0) / n + lib.var(0) / n).sqrt()
    assert ((loop.mean(0) - lib.mean(0)).abs() <= 5 * se).all()
    assert abs(loop.std(0) / lib.std(0) - 1).max() < 0.1
    tasks = {t.name: t for t in flows.tasks("grid", num_steps=10)}
    assert set(tasks) == {
        "grid-flow-eta1", "grid-flow-eta0.5", "grid-ddpm", "grid-velocity-eta1", "grid-velocity-eta0.5", "grid-eps"
    }  # fmt: skip
    task = tasks["grid-velocity-eta0.5"]
    assert isinstance(task.process, FlowMatching) and task.process.eta == 0.5 and not task.log_z_exact
    rep = trained.run_engine(task, {"proposal": "gradient"}, points=40, rep=0)
    assert rep["non_finite"] == 0 and len(rep["log_z_errors"]) == 40


def test_digits_benchmark_runs_every_engine_and_writes_its_page(tmp_path):
    """``./run bench digits --quick``: every engine on both rewards, finite rows, a page and a figure."""
    import json

    from benchmarks import __main__ as bench
    from benchmarks import digits

    path = bench.main(["digits", "--quick", "--out", str(tmp_path), "--json", str(tmp_path / "d.json")])
    assert path == tmp_path / "benchmarks_digits.md"
    text = path.read_text()
    assert (tmp_path / "figures" / "bench_digits.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "d.json").read_text())["results"]
    assert {r["engine"] for r in res["class"]} == {"reference", *digits.ENGINES}
    assert {r["engine"] for r in res["symmetry"]} == {"reference", *digits.SYMMETRY_ENGINES}
    for row in res["class"]:
        assert "error" not in row and f"`{row['engine']}`" in text
        assert row["calls_per_image"] > 0 or row["engine"] == "reference"
    # the reference is the weighted pool: its ESS is between 1 and the pool size
    ref = next(r for r in res["class"] if r["engine"] == "reference")
    assert 1 <= ref["ess"] <= digits.Settings.quick().pool
    # equal compute: N·K denoiser calls per image for SMC, importance sampling and best-of-N
    settings = digits.Settings.quick()
    n, k = settings.budgets[0], settings.steps
    calls = {r["engine"]: r["calls_per_image"] for r in res["class"]}
    assert calls["smc-prior"] == calls["importance"] == calls["best-of-N"] == n * k
    # the references: real 3s are 3s to both classifiers; unguided draws are mostly not
    assert res["real_class"]["class_rate"] > 0.9 and res["real_class"]["cross_rate"] > 0.8
    assert res["pretrained"]["class_rate"] < 0.5


def test_digits_benchmark_weighted_metrics():
    """The weighted pool's metrics: integer weights are repeated images; coverage is exp(entropy)."""
    from benchmarks.digits import coverage, mean_pairwise

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g)
    w = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    repeated = torch.cat([x[i : i + 1].expand(int(c), 1, 8, 8) for i, c in enumerate(w)])
    # Σ_{i≠j} w_i w_j d_ij / Σ_{i≠j} w_i w_j equals the plain mean over pairs of the repeated set, with
    # the pairs of copies of one image (distance 0) counted in the repeated set and not in the weighted one
    flat = repeated.reshape(len(repeated), -1).double()
    d = torch.cdist(flat, flat) / 8.0
    same = torch.tensor([i for i, c in enumerate(w) for _ in range(int(c))])
    distinct = same[:, None] != same[None, :]
    assert mean_pairwise(x, w) == pytest.approx(float(d[distinct].mean()), rel=1e-12)
    assert coverage(torch.arange(10), torch.ones(10, dtype=torch.float64)) == pytest.approx(10.0)
    assert coverage(torch.zeros(7, dtype=torch.long), torch.ones(7, dtype=torch.float64)) == pytest.approx(1.0)


def test_online_benchmark_runs_every_method_and_writes_its_page(tmp_path):
    """``./run bench online --quick``: every method on both black boxes, a curve per round, page and figure."""
    import json

    from benchmarks import __main__ as bench
    from benchmarks import online

    path = bench.main(["online", "--quick", "--out", str(tmp_path), "--json", str(tmp_path / "o.json")])
    assert path == tmp_path / "benchmarks_online.md"
    assert (tmp_path / "figures" / "bench_online.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "o.json").read_text())
    settings = online.Settings.quick()
    text = path.read_text()
    for task in settings.tasks:
        assert set(saved["results"][task]["methods"]) == set(online.METHODS)
        for method, data in saved["results"][task]["methods"].items():
            y = torch.tensor(data["values"], dtype=torch.float64)
            assert y.shape == (settings.seeds, settings.rounds, settings.batch_size)
            assert torch.isfinite(y).all() and f"| {method} |" in text
    # the best-so-far curve never decreases and ends at the largest value queried
    c = online._curves(saved["results"]["grid"]["methods"]["ensemble"]["values"])
    assert torch.all(c["best_runs"][:, 1:] >= c["best_runs"][:, :-1])
    assert float(c["best_runs"][0, -1]) == max(
        max(r) for r in saved["results"]["grid"]["methods"]["ensemble"]["values"][0]
    )
    rendered = bench.main(["online", "--render", str(tmp_path / "o.json"), "--out", str(tmp_path / "again")])
    assert rendered.read_text().split("\n", 6)[6] == text.split("\n", 6)[6]


def test_masked_defaults_benchmark_runs_a_configuration_and_writes_its_page(monkeypatch):
    """benchmarks.masked_defaults on a few runs: a finite TV and log Ẑ error per repetition, and a page row per
    (task, configuration)."""
    from benchmarks import masked_defaults as md
    from benchmarks.tasks import discrete

    monkeypatch.setattr(md, "POINTS", 50)
    out = md.run(discrete(seed=1), 8, {"proposal": "gradient"}, rep=0)
    assert 0 <= out["tv"] <= 1 and math.isfinite(out["log_z_error"])
    row = {"floor": [0.1]} | {name: {"reps": [out], "seconds": 1.0} for name in md.CONFIGS}
    page = md.report({"seed 1": row}, "test")
    assert page.count("| seed 1 |") == len(md.CONFIGS) and "Mean TV − floor" in page


def test_scaling_benchmark_keeps_every_engine_within_its_budget_and_writes_its_page(monkeypatch, tmp_path):
    """benchmarks.scaling on two tiny tasks: every engine runs at the budget (none fails), spends at most B per
    point, samplers get a finite distance, and the page has a row per engine and the figure."""
    from benchmarks import scaling

    settings = scaling.Settings(
        toy_steps=4, toy_points=12, discrete_points=40, search_points=3, repeats=1, multiples=(8, 16)
    )
    data = scaling.benchmark(settings, log=lambda m: None, tasks=("grid", "discrete"))
    for task, table in data.items():
        assert set(table) == set(scaling.ENGINES)
        for name, rows in table.items():
            for row in rows:
                assert "error" not in row, (task, name, row)
                assert row["calls_per_point"] <= row["budget"]
                assert math.isfinite(row["best"][0])
                if scaling.ENGINES[name][0] == "sampler":
                    assert math.isfinite(row["distance"][0])
    monkeypatch.chdir(tmp_path)
    page = scaling.report(data, "test")
    assert (tmp_path / "docs/figures/bench_scaling.png").stat().st_size > 10_000
    for name in scaling.ENGINES:
        assert f"| {name} |" in page


def test_the_batch_page_estimate_matches_docs_batch_md(tmp_path):
    """docs/batch.md states the SD sketch's estimate; it is what benchmarks.batch computes and draws."""
    from benchmarks.batch import draw_cluster, sd_estimate

    e = sd_estimate()
    assert (e["tasks"], round(e["seconds_per_task"]), round(e["gpu_hours"], 1)) == (2000, 12, 6.8)
    text = (Path(__file__).resolve().parents[1] / "docs" / "batch.md").read_text()
    assert f"≈ {e['wall_hours'] * 60:.0f} minutes on 8 GPUs" in text and "6.8 GPU-hours" in text
    draw_cluster(tmp_path / "c.png", e)
    assert (tmp_path / "c.png").stat().st_size > 20_000
