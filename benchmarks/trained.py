"""Trained-network tasks: the DAS toys with a small learned denoiser in place of the exact one.

Each task is a DAS toy (grid or ring) whose chain is a seeded MLP trained here, in seconds, on
draws of the toy's data law (DDPM, linear betas 1e-4 … 0.02, T = 1000), for one prediction type:
ε, x_0 ("sample") or v. Trained weights are cached outside the repository (``$TILTED_CACHE`` or
``~/.cache/tilted``), keyed by everything that determines them.

The target is the tilt of the *network's* chain, p_θ(x_0) exp(r(x_0)/α), whose law is not known in
closed form. The reference is importance sampling over ``REFERENCE_CHAINS`` = 2^17 ancestral chains
of the same network, drawn by diffusers' own ``DDPMScheduler.step`` (a sampling loop that shares no
code with :mod:`tilted.inference`): weights exp(r(x_0)/α), log Ẑ = log mean exp(r/α) with its delta
method standard error, and reference draws by multinomial resampling of the pool. Its ESS is
reported; the EMD floor is measured between two such sets of draws, as for the analytic toys.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import torch

from benchmarks.tasks import Task, das_grid, das_ring
from tilted.distributions import GaussianDiffusion

F64 = torch.float64
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
REFERENCE_CHAINS = 2**17
TRAIN_STEPS, TRAIN_BATCH, TRAIN_T = 4000, 512, 1000
VERSION = 1  # bump when the network or its training changes


class MLP(torch.nn.Module):
    """f(x_t, t): 3 hidden SiLU layers of 128 on [x_t, sinusoidal embedding of t (32)], ~38k weights."""

    def __init__(self, dim: int = 2, hidden: int = 128, embedding: int = 32):
        super().__init__()
        half = embedding // 2
        self.register_buffer("freqs", torch.exp(-math.log(TRAIN_T) * torch.arange(half, dtype=torch.float32) / half))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + embedding, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = t.to(torch.float32)[:, None] * self.freqs[None]
        h = torch.cat([x.to(torch.float32), a.sin(), a.cos()], -1)
        return self.net(h).to(x.dtype)


def cache_dir() -> Path:
    return Path(os.environ.get("TILTED_CACHE", Path.home() / ".cache" / "tilted")) / "benchmarks"


def _train_schedule():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_T, beta_schedule="linear", clip_sample=False)


def train(toy: Task, prediction: str, seed: int = 0) -> MLP:
    """Fit the MLP to the toy's data law by the DDPM regression loss for ``prediction`` (ε, x_0 or v)."""
    torch.manual_seed(seed)  # the initial weights
    gen = torch.Generator().manual_seed(seed)
    net = MLP(toy.dim)
    ac = _train_schedule().alphas_cumprod.to(torch.float32)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, TRAIN_STEPS)
    for _ in range(TRAIN_STEPS):
        x0 = toy.process.data.sample(TRAIN_BATCH, gen).to(torch.float32)
        t = torch.randint(0, TRAIN_T, (TRAIN_BATCH,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = ac[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
        loss = (net(xt, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval().requires_grad_(False)


def network(toy: Task, prediction: str, seed: int = 0) -> MLP:
    """The trained network for (toy, prediction, seed), from the cache or trained (about 15 s) and cached."""
    key = f"{toy.name}-{prediction}-{seed}-v{VERSION}-{TRAIN_STEPS}x{TRAIN_BATCH}"
    path = cache_dir() / f"mlp-{key}.pt"
    net = MLP(toy.dim)
    if path.exists():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval().requires_grad_(False)
    start = time.perf_counter()
    net = train(toy, prediction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    print(f"trained {key} in {time.perf_counter() - start:.0f} s → {path}", flush=True)
    return net


def ancestral(net: MLP, prediction: str, num_steps: int, n: int, gen: torch.Generator, chunk: int = 2**15):
    """n ancestral chains of the network through diffusers' DDPMScheduler.step (η = 1, trailing spacing)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(
        _train_schedule().config,
        prediction_type=prediction,
        timestep_spacing="trailing",
        variance_type="fixed_small",
    )
    sched.set_timesteps(num_steps)
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            x = torch.randn(min(chunk, n - start), 2, generator=gen)
            for t in sched.timesteps:
                tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
                x = sched.step(net(x, tt), int(t), x, generator=gen).prev_sample
            out.append(x.to(F64))
    return torch.cat(out)


def reference(toy: Task, net: MLP, prediction: str, num_steps: int, name: str) -> dict:
    """IS over REFERENCE_CHAINS chains: log Ẑ (± s.e.), ESS, and the pool with its normalised weights (cached)."""
    digest = hashlib.sha1(b"".join(p.numpy().tobytes() for p in net.state_dict().values())).hexdigest()[:12]
    path = cache_dir() / f"reference-{name}-{num_steps}-{REFERENCE_CHAINS}-{digest}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    x = ancestral(net, prediction, num_steps, REFERENCE_CHAINS, torch.Generator().manual_seed(1234))
    logw = toy.reward(x).to(F64) / toy.temperature
    if not torch.isfinite(logw).all():
        raise RuntimeError(f"{name}: the reference chains gave non-finite rewards")
    n = logw.numel()
    log_z = torch.logsumexp(logw, 0) - math.log(n)
    w = (logw - log_z).exp()  # w / mean(w)
    out = {
        "points": x,
        "log_weights": torch.log_softmax(logw, 0),
        "log_z": float(log_z),
        "log_z_se": float(w.std() / math.sqrt(n)),  # s.e. of log mean w by the delta method
        "ess": float(1 / torch.softmax(logw, 0).pow(2).sum()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def trained_task(toy_name: str, prediction: str, num_steps: int = 100, seed: int = 0) -> Task:
    """The toy ``toy_name`` ("grid" or "ring") with the trained ``prediction`` ("eps", "x0", "v") network."""
    toy = {"grid": das_grid, "ring": das_ring}[toy_name](num_steps)
    kind = PREDICTIONS[prediction]
    net = network(toy, kind, seed)
    name = f"{toy_name}-{prediction}"
    ref = reference(toy, net, kind, num_steps, name)
    process = GaussianDiffusion(net, event_shape=(toy.dim,), num_steps=num_steps, prediction_type=kind)
    pool, probs = ref["points"], ref["log_weights"].exp()

    def exact_sample(n: int, g: torch.Generator) -> torch.Tensor:
        return pool[torch.multinomial(probs, n, replacement=True, generator=g)]

    return Task(
        name=name,
        title=f"{toy.title}, trained {prediction}-prediction MLP",
        description=f"{toy.description} The chain is a {prediction}-prediction MLP (3×128 SiLU, {TRAIN_STEPS} "
        f"Adam steps of batch {TRAIN_BATCH} on the data law); the reference is importance sampling over "
        f"{REFERENCE_CHAINS} ancestral chains of the network (ESS {ref['ess']:.0f}), log Ẑ = "
        f"{ref['log_z']:.3f} ± {ref['log_z_se']:.3f}.",
        process=process,
        reward=toy.reward,
        temperature=toy.temperature,
        exact_sample=exact_sample,
        log_z=ref["log_z"],
        log_z_exact=False,
        expected_reward=float((probs * toy.reward(pool).to(F64)).sum()),
        data_sample=toy.data_sample,
        diagnostics=toy.diagnostics,
        plot2d=True,
    )
