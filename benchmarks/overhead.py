"""Overhead of SMC over plain ancestral sampling at the same number of denoiser calls.

Bootstrap SMC (prior proposal, Tweedie potential, a reward call per step, ESS-triggered systematic
resampling) over R runs × N particles makes R·N·K denoiser calls, exactly as many as ancestral
sampling of R·N chains (``process.sample``). Both are timed in the same process, one thread,
interleaved (ancestral, SMC, ancestral, SMC, …) so that slow drifts of the machine hit both; the
reported ratio is the median over repetitions of the paired ratios SMC time / ancestral time.

Settings: (i) the analytic Gaussian-mixture denoiser of the grid toy (K = 100), where the denoiser
is cheap and the bookkeeping shows; (ii) a diffusers ``UNet2DModel`` built from a config (random
weights, nothing downloaded) on 1×16×16 images with a ``DDPMScheduler``, where the network
dominates; the reward is the mean brightness of x̂_0.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pyro
import torch

import tilted
from benchmarks.suite import Settings
from benchmarks.tasks import das_grid
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.inference import SMC


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(process, model, num_runs: int, num_particles: int, repeats: int) -> dict:
    """Interleaved timings of ancestral sampling and bootstrap SMC making the same denoiser calls."""
    anc, smc, counts = [], [], None
    batch = (num_runs, num_particles) if num_runs > 1 else (num_particles,)
    engine = SMC(model, num_particles, num_runs=num_runs if num_runs > 1 else None, progress=False)
    _time(lambda: process.sample(batch, generator=0))  # warm-up (allocator, lazy imports)
    for rep in range(repeats):
        start = time.perf_counter()
        process.sample(batch, generator=rep)
        anc.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = engine.run(seed=rep)
        smc.append(time.perf_counter() - start)
        counts = result.counts.denoiser_calls
    ratios = [s / a for s, a in zip(smc, anc, strict=True)]
    return {
        "particles": num_runs * num_particles,
        "steps": process.num_steps,
        "denoiser_calls": counts,
        "ancestral_calls": num_runs * num_particles * process.num_steps,
        "ancestral_s": statistics.median(anc),
        "smc_s": statistics.median(smc),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "repeats": repeats,
    }


def gmm_rows(settings: Settings) -> list[dict]:
    task = das_grid(settings.num_steps)
    # the library's general GaussianMixture (not the benchmark's faster isotropic subclass)
    process = GaussianDiffusion(data=GaussianMixture(task.process.data.means, 0.3), num_steps=settings.num_steps)

    def model():
        x = pyro.sample("x", process)
        tilted.factor("r", task.reward, x, temperature=task.temperature)

    rows = []
    for runs, n in ((1, 16), (125, 16)):
        row = paired(process, model, runs, n, settings.overhead_repeats)
        row["setting"] = f"analytic GMM denoiser (`GaussianMixture`, grid toy), {runs} run(s) × {n} particles"
        row["label"] = f"GMM, {runs * n} particles"
        rows.append(row)
    return rows


def unet_process(settings: Settings) -> tuple[GaussianDiffusion, int]:
    """A random-weight UNet2DModel on 1×16×16 images with a DDPM scheduler (no download)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)  # weight initialisation only
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=settings.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()
    unet.requires_grad_(False)
    process = GaussianDiffusion.from_diffusers(
        unet, DDPMScheduler(num_train_timesteps=1000), num_steps=settings.unet_steps, event_shape=(1, 16, 16)
    )
    return process, sum(p.numel() for p in unet.parameters())


def unet_rows(settings: Settings) -> list[dict]:
    process, num_params = unet_process(settings)

    def model():
        x = pyro.sample("x", process)
        tilted.factor("brightness", lambda x: x.mean((-3, -2, -1)), x, temperature=0.1)

    row = paired(process, model, 1, settings.unet_particles, settings.overhead_repeats)
    row["label"] = f"UNet, {settings.unet_particles} particles"
    row["setting"] = (
        f"diffusers UNet2DModel ({num_params / 1e6:.2f} M parameters, channels {tuple(settings.unet_channels)}), "
        f"1×16×16, DDPMScheduler, 1 run × {settings.unet_particles} particles"
    )
    return [row]


def run(settings: Settings, log=print) -> dict:
    torch.set_num_threads(1)
    rows = []
    for fn in (gmm_rows, unet_rows):
        for row in fn(settings):
            log(f"overhead: {row['setting']}: ratio {row['ratio']:.3f}")
            rows.append(row)
    return {"threads": torch.get_num_threads(), "rows": rows}
