"""Smoke test of the benchmark machinery (benchmarks/): tiny settings, sane metrics, a rendered page.

No timing assertions: wall times are reported by ``./run bench``, never tested.
"""

import math

import torch

from benchmarks import engines, metrics, report, suite
from benchmarks.tasks import AffineGaussian, build
from tilted.distributions import GaussianMixture

TINY = suite.Settings(points=300, repeats=2, particles=16, num_steps=10, lg_steps=10, jobs=1, plot_points=300)


def test_exact_draws_score_the_floor_and_importance_with_large_n_beats_pretrained():
    task = build("grid", TINY.num_steps)
    a, b = suite.target_draws(task, TINY, 0, "A"), suite.target_draws(task, TINY, 0, "B")
    floor = metrics.emd(a, b)
    assert metrics.emd(a, a) < 1e-9 < floor
    big = engines.run(engines.get("importance"), task, 512, TINY.points, seed=1, keep_particles=False)
    pre = engines.run(engines.get("pretrained"), task, 16, TINY.points, seed=1, keep_particles=False)
    e_is = metrics.emd(big["importance"].points, a)
    e_pre = metrics.emd(pre["pretrained"].points, a)
    assert floor < e_is < e_pre
    h = metrics.median_bandwidth(a)
    assert abs(metrics.mmd2(a, b, h)) < metrics.mmd2(pre["pretrained"].points, a, h)
    assert big["importance"].counts["denoiser_calls"] == 512 * TINY.points * TINY.num_steps


def test_suite_metrics_and_page(tmp_path):
    names = ["pretrained", "importance", "smc-bootstrap", "smc-adaptive", "oracle-twist"]
    results = suite.run(["ring", "lg2"], names, TINY, log=lambda msg: None)
    ring, lg = results["ring"], results["lg2"]
    assert set(ring["outputs"]) == {*names, "best-of-N"}
    for res in (ring, lg):
        assert len(res["reference"]["emd"]) == TINY.repeats
        for m in res["outputs"].values():
            assert all(math.isfinite(v) and v > 0 for v in m["emd_values"])
            assert m["counts"]["denoiser_calls"] > 0
    assert ring["outputs"]["smc-bootstrap"]["counts"]["denoiser_calls"] == 16 * TINY.num_steps
    assert ring["outputs"]["pretrained"]["emd"][0] > ring["outputs"]["smc-bootstrap"]["emd"][0]
    assert ring["outputs"]["smc-adaptive"]["lambdas"][-1] == 1.0
    # linear-Gaussian: exact log Z and moments are compared; the exact twist with the gradient proposal
    # (its locally optimal proposal) estimates log Z better than bootstrap SMC
    boot, oracle = lg["outputs"]["smc-bootstrap"], lg["outputs"]["oracle-twist"]
    assert 0 < oracle["log_z_abs"][0] < boot["log_z_abs"][0]
    assert lg["reference"]["mean_error"][0] > 0 and "cov_error" in boot
    path = report.write(
        results, None, suite.settings_dict(TINY), {"command": "test", "date": "-", "seconds": 1.0, "cpus": 1}, tmp_path
    )
    text = path.read_text()
    assert "| `smc-bootstrap` |" in text and "floor" in text
    assert (tmp_path / "figures" / "bench_toys.png").exists()
    assert (tmp_path / "figures" / "bench_ring_value.png").exists()


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
