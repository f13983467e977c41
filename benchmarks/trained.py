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
from tilted.distributions import FlowMatching, GaussianDiffusion

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
    """Fit the MLP to the toy's data law by the regression loss for ``prediction``: DDPM's ε, x_0 or v, or
    the flow-matching ``"velocity"`` ε − x_0 at x_t = (1 − t) x_0 + t ε, t ~ U(0, 1), read as 1000 t."""
    torch.manual_seed(seed)  # the initial weights
    gen = torch.Generator().manual_seed(seed)
    net = MLP(toy.dim)
    ac = _train_schedule().alphas_cumprod.to(torch.float32)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, TRAIN_STEPS)
    for _ in range(TRAIN_STEPS):
        x0 = toy.process.data.sample(TRAIN_BATCH, gen).to(torch.float32)
        if prediction == "velocity":
            t = torch.rand(TRAIN_BATCH, generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            xt, time, target = (1 - t[:, None]) * x0 + t[:, None] * eps, TRAIN_T * t, eps - x0
        else:
            time = torch.randint(0, TRAIN_T, (TRAIN_BATCH,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            a = ac[time][:, None]
            xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
            target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
        loss = (net(xt, time) - target).pow(2).mean()
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


def ancestral(
    net, prediction: str, num_steps: int, n: int, gen: torch.Generator, chunk: int = 2**15, shape=(2,), eta: float = 1.0
):
    """n ancestral chains of the network through diffusers' schedulers (a loop that shares no code with tilted).

    DDPM predictions: ``DDPMScheduler.step`` (η = 1, trailing spacing). ``"velocity"``: the flow's η-sampler
    on the uniform grid t_k = k/K, as :func:`flow_scheduler`'s ``DDIMScheduler.step`` on the variance-preserving
    rescaling y = x / √((1 − t)² + t²) of the path, fed x̂_0 = x − t v̂(x, 1000 t). ``net(x_t, t)`` returns the
    prediction or a diffusers output with ``.sample``; x_T has ``shape``.
    """
    from diffusers import DDPMScheduler

    flow = prediction == "velocity"
    if flow:
        sched, times = flow_scheduler(num_steps)
    else:
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
            x = torch.randn(min(chunk, n - start), *shape, generator=gen)
            for step in sched.timesteps:
                if flow:  # x holds y, the VP state; t_K = 1 and t_0 = 0 have scale 1
                    t = float(times[int(step)])
                    xt = x * math.sqrt((1 - t) ** 2 + t**2)
                    v = net(xt, torch.full((x.shape[0],), TRAIN_T * t))
                    x = sched.step(xt - t * getattr(v, "sample", v), int(step), x, eta=eta, generator=gen).prev_sample
                    continue
                tt = torch.full((x.shape[0],), int(step), dtype=torch.long)
                f = net(x, tt)
                x = sched.step(getattr(f, "sample", f), int(step), x, generator=gen).prev_sample
            out.append(x.to(F64))
    return torch.cat(out)


def flow_scheduler(num_steps: int):
    """A ``DDIMScheduler`` (x̂_0-prediction) whose K training timesteps j are the flow's levels t = (j + 1)/K.

    On y = x / √(a² + s²), a = 1 − t, s = t, the path is variance preserving with ᾱ = a² / (a² + s²), and
    DDIM(η) on it is the flow's η-sampler (docs/modelling.md); ᾱ = 0 at t = 1, and the final ᾱ = 1 is t_0 = 0.
    Returns the scheduler (timesteps set) and t_j for j = 0, …, K − 1 (float64).
    """
    from diffusers import DDIMScheduler

    t = torch.arange(1, num_steps + 1, dtype=F64) / num_steps
    abar = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    sched = DDIMScheduler(
        num_train_timesteps=num_steps, trained_betas=betas.tolist(), prediction_type="sample", clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0,
    )  # fmt: skip
    sched.set_timesteps(num_steps)
    return sched, t


def reference(
    reward,
    temperature: float,
    net,
    prediction: str,
    num_steps: int,
    name: str,
    chains: int | None = None,
    shape=(2,),
    eta: float = 1.0,
) -> dict:
    """IS over ``chains`` (default REFERENCE_CHAINS) chains: log Ẑ (± s.e.), ESS, the pool and its weights (cached).

    ``eta`` is the flow sampler's noise level (``prediction="velocity"``; ``name`` should say it)."""
    chains = chains or REFERENCE_CHAINS
    digest = hashlib.sha1(b"".join(p.numpy().tobytes() for p in net.state_dict().values())).hexdigest()[:12]
    path = cache_dir() / f"reference-{name}-{num_steps}-{chains}-{digest}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    start = time.perf_counter()
    chunk = max(1, 2**16 // math.prod(shape))  # 2^15 points of the toys, 1024 images of 8 × 8
    x = ancestral(net, prediction, num_steps, chains, torch.Generator().manual_seed(1234), chunk, shape, eta)
    with torch.no_grad():
        logw = torch.cat([reward(c) for c in x.split(4096)]).to(F64) / temperature
    if not torch.isfinite(logw).all():
        raise RuntimeError(f"{name}: the reference chains gave non-finite rewards")
    n = logw.numel()
    log_z = torch.logsumexp(logw, 0) - math.log(n)
    w = (logw - log_z).exp()  # w / mean(w)
    out = {
        "points": x,
        "log_weights": torch.log_softmax(logw, 0),
        "log_w": logw,
        "log_z": float(log_z),
        "log_z_se": float(w.std() / math.sqrt(n)),  # s.e. of log mean w by the delta method
        "ess": float(1 / torch.softmax(logw, 0).pow(2).sum()),
        "seconds": time.perf_counter() - start,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def _pool_sampler(ref: dict):
    """Reference draws: multinomial resampling of the pool by its normalised weights, flattened to (n, d)."""
    pool, probs = ref["points"].flatten(1), ref["log_weights"].exp()

    def exact_sample(n: int, g: torch.Generator) -> torch.Tensor:
        return pool[torch.multinomial(probs, n, replacement=True, generator=g)]

    return exact_sample


def _summary(ref: dict) -> dict:
    return {"log_z": ref["log_z"], "log_z_se": ref["log_z_se"], "ess": ref["ess"], "chains": len(ref["points"])}


def _expected_reward(reward, ref: dict) -> float:
    with torch.no_grad():
        r = torch.cat([reward(c) for c in ref["points"].split(4096)]).to(F64)
    return float((ref["log_weights"].exp() * r).sum())


def trained_task(toy_name: str, prediction: str, num_steps: int = 100, seed: int = 0, eta: float = 1.0) -> Task:
    """The toy ``toy_name`` ("grid" or "ring") with the trained ``prediction`` ("eps", "x0", "v") network, or
    with ``prediction="velocity"`` a trained flow-matching velocity run as ``FlowMatching`` at noise level η."""
    toy = {"grid": das_grid, "ring": das_ring}[toy_name](num_steps)
    kind = PREDICTIONS.get(prediction, prediction)
    net = network(toy, kind, seed)
    if kind == "velocity":
        name, what = f"{toy_name}-velocity-eta{eta:g}", f"flow-matching velocity (η = {eta:g})"
        process = FlowMatching(net, event_shape=(toy.dim,), num_steps=num_steps, eta=eta, time_scale=TRAIN_T)
    else:
        name, what = f"{toy_name}-{prediction}", f"{prediction}-prediction"
        process = GaussianDiffusion(net, event_shape=(toy.dim,), num_steps=num_steps, prediction_type=kind)
    ref = reference(toy.reward, toy.temperature, net, kind, num_steps, name, eta=eta)
    return Task(
        name=name,
        title=f"{toy.title}, trained {what} MLP",
        description=f"{toy.description} The chain is a {what} MLP (3×128 SiLU, {TRAIN_STEPS} "
        f"Adam steps of batch {TRAIN_BATCH} on the data law); the reference is importance sampling over "
        f"{len(ref['points'])} ancestral chains of the network (ESS {ref['ess']:.0f}), log Ẑ = "
        f"{ref['log_z']:.3f} ± {ref['log_z_se']:.3f}.",
        process=process,
        reward=toy.reward,
        temperature=toy.temperature,
        exact_sample=_pool_sampler(ref),
        log_z=ref["log_z"],
        log_z_exact=False,
        expected_reward=_expected_reward(toy.reward, ref),
        data_sample=toy.data_sample,
        diagnostics=toy.diagnostics,
        plot2d=True,
        reference=_summary(ref),
    )


#: the digits row: K, class, α, reference chains, runs per repetition, repetitions (a UNet call costs ~0.5 ms
#: per image on 2 cores, so 2^15 chains × 50 steps ≈ 15 min; the toys' 2^17 would take an hour)
DIGITS = {"steps": 50, "label": 3, "temperature": 1.0, "chains": 2**15, "points": 128, "repeats": 2}


def digits_task(steps: int | None = None, chains: int | None = None) -> Task:
    """The shipped digits DDPM (:func:`tilted.pretrained.digits`) tilted by log p(y = 3 | x) at α = 1: p_θ(x | y)."""
    from tilted.pretrained import digits, digits_classifier
    from tilted.rewards import ClassLogProb

    steps = steps or DIGITS["steps"]
    process = digits(steps)
    reward = ClassLogProb(digits_classifier(), DIGITS["label"])

    def reward32(x):  # the pool is float64, the CNN float32
        return reward(x.to(torch.float32))

    ref = reference(
        reward32,
        DIGITS["temperature"],
        process.denoiser,
        "epsilon",
        steps,
        "digits",
        chains or DIGITS["chains"],
        shape=process.event_shape,
    )
    # r = log p(y | x) ≤ 0, so accepting chain i with probability exp(r_i/α) ≤ 1 is exact rejection sampling
    log_u = torch.rand(len(ref["points"]), generator=torch.Generator().manual_seed(99), dtype=F64).log()
    accepted = ref["points"][log_u < ref["log_w"]].flatten(1)
    return Task(
        name="digits",
        title="Digits DDPM (diffusers UNet2DModel, 651k weights), class 3 at α = 1",
        description=f"The shipped digits UNet at K = {steps}, r = log p(y = 3 | x) under the shipped CNN, α = 1 "
        f"(the target is p_θ(x | y = 3)); the reference is importance sampling over {len(ref['points'])} ancestral "
        f"chains of the UNet (ESS {ref['ess']:.0f}), log Ẑ = {ref['log_z']:.3f} ± {ref['log_z_se']:.3f}.",
        process=process,
        reward=reward,
        temperature=DIGITS["temperature"],
        exact_sample=_pool_sampler(ref),
        log_z=ref["log_z"],
        log_z_exact=False,
        expected_reward=_expected_reward(reward32, ref),
        reference=_summary(ref) | {"exact_draws": len(accepted)},
        draws=accepted,
    )


# -- the benchmark ------------------------------------------------------------------------------------
ENGINES = {  # name → SMC options; all at N = 16, 1 denoiser call per particle and step
    "smc-prior": {},
    "smc-gradient": {"proposal": "gradient"},
    "importance": {"potential": "terminal", "ess_threshold": 0.0},
    "smc-gradient-unweighted": {"proposal": "gradient", "potential_weight": "none"},
}


def run_engine(task: Task, options: dict, points: int, rep: int, particles: int = 16) -> dict:
    """One repetition: ``points`` runs of N particles, one draw per run; EMD, log Ẑ errors, non-finite runs."""
    import pyro

    import tilted
    from benchmarks import metrics
    from tilted.errors import NonFiniteError
    from tilted.inference import SMC

    def model():
        x = pyro.sample("x", task.process)
        tilted.factor("r", task.reward, x, temperature=task.temperature)

    reference_draws = reference_sets(task, points, rep)[0]
    try:
        res = SMC(model, particles, num_runs=points, **options).run(seed=rep)
    except NonFiniteError as error:
        return {"emd": math.nan, "log_z_errors": [], "non_finite": points, "error": str(error)[:160]}
    bad = ~(torch.isfinite(res.log_evidence) & torch.isfinite(res.particles["x"]).flatten(2).all(-1).all(-1))
    x = res.sample(1, seed=rep)["x"][:, 0]
    with torch.no_grad():
        rewards = task.reward(x[~bad]).to(F64).tolist() if (~bad).any() else []
    x = x.flatten(1).to(F64)
    emd = metrics.emd(x[~bad], reference_draws[: int((~bad).sum())]) if (~bad).any() else math.nan
    return {
        "emd": emd,
        "log_z_errors": (res.log_evidence[~bad] - task.log_z).tolist(),
        "reward_errors": [r - task.expected_reward for r in rewards],
        "non_finite": int(bad.sum()),
        "clipped": float(res.trace.drift_clipped.mean()),
    }


def reference_sets(task: Task, points: int, rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent sets of ``points`` reference draws for repetition ``rep``: the comparison set and the
    floor's second set (disjoint slices of ``task.draws`` when the task has them, else resamples)."""
    if task.draws is not None:
        need = 2 * points * (rep + 1)
        if need > len(task.draws):
            raise ValueError(f"{task.name}: {len(task.draws)} exact draws, {need} needed; raise the reference chains")
        a = task.draws[2 * rep * points :][:points]
        return a, task.draws[(2 * rep + 1) * points :][:points]
    a = task.exact_sample(points, torch.Generator().manual_seed(1000 + rep))
    return a, task.exact_sample(points, torch.Generator().manual_seed(50 + rep))


def _floors(task: Task, points: int, repeats: int) -> list[float]:
    from benchmarks import metrics

    return [metrics.emd(*reference_sets(task, points, rep)) for rep in range(repeats)]


def _row(task: Task, points: int, repeats: int, log) -> dict:
    """Every engine of ENGINES on ``task``: the floors, the reference's summary and each repetition."""
    row = {"floor": _floors(task, points, repeats), "description": task.description, "points": points}
    if task.reference is not None:
        row["reference"] = task.reference
    for name, options in ENGINES.items():
        start = time.perf_counter()
        reps = [run_engine(task, options, points, rep) for rep in range(repeats)]
        row[name] = {"reps": reps, "seconds": (time.perf_counter() - start) / repeats}
        gaps = [round(r["emd"] - f, 3) for r, f in zip(reps, row["floor"], strict=True)]
        log(f"{task.name} {name}: EMD − floor {gaps}")
    return row


def benchmark(
    points: int = 2000, repeats: int = 4, num_steps: int = 100, only: tuple[str, ...] | None = None, log=print
) -> dict:
    """Every (toy, prediction, engine), every analytic twin and the digits UNet: EMD − floor, log Ẑ error,
    reward error and non-finite runs. ``only`` restricts to rows whose key starts with one of its entries."""
    from benchmarks.tasks import build

    torch.set_num_threads(2)
    keys = [f"{toy}-{p}" for toy in ("grid", "ring") for p in (*PREDICTIONS, "analytic")] + ["digits"]
    out = {}
    for key in keys:
        if only and not key.startswith(tuple(only)):
            continue
        toy, _, prediction = key.partition("-")
        if key == "digits":
            out[key] = _row(digits_task(), DIGITS["points"], DIGITS["repeats"], log)
        elif prediction == "analytic":
            out[key] = _row(build(toy, num_steps), points, repeats, log)
        else:
            out[key] = _row(trained_task(toy, prediction, num_steps), points, repeats, log)
    return out


GOAL_GAP, GOAL_LOG_Z, GOAL_TWIN = 0.05, 0.3, 0.03


def _mean_se(values) -> tuple[float, float]:
    v = torch.tensor([x for x in values if math.isfinite(x)], dtype=F64)
    if v.numel() == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan


def report(data: dict, settings: str) -> str:
    """The markdown page docs/benchmarks_trained.md from :func:`benchmark`'s output."""
    lines = [
        "# Trained networks: SMC defaults on learned denoisers",
        "",
        "Generated by `python -m benchmarks.trained OUT.json` (module `benchmarks/trained.py`, which documents the "
        f"networks, their training and the reference). {settings}",
        "",
        "Each DAS toy is run with a small MLP denoiser trained here (ε-, x0- and v-prediction; 4000 Adam steps of "
        "batch 512, ~10 s each on 2 cores, cached in `~/.cache/tilted`) and with its analytic twin (the exact "
        "denoiser of the data law). The target is the tilt of the network's own chain; the reference is "
        "importance sampling over 2^17 ancestral chains of the same network through diffusers' "
        "`DDPMScheduler.step` (independent of `tilted.inference`); the floor is the EMD between two sets of "
        "reference draws. N = 16 particles per run, K = 100 steps, one point per run, 2000 runs per repetition; "
        "every engine makes one denoiser call per particle and step (equal compute). log Ẑ error: mean ± s.e. over "
        "all runs of log Ẑ − log Z_ref (analytic twins: log Z of the data law, indicative only). Non-finite: runs "
        "with a non-finite log Ẑ or particle, or all runs of a repetition that raised NonFiniteError.",
        "",
        'Engines: `smc-prior` = `SMC(model, 16)`; `smc-gradient` = `SMC(model, 16, proposal="gradient")` (both '
        "defaults: potential weight w_k = ᾱ_k, trust region τ = 1); `importance` (terminal potential, no resampling); "
        '`smc-gradient-unweighted` = the gradient proposal with `potential_weight="none"` (the previous default: '
        "the full Tweedie potential r(x̂₀)/α at every level), with the trust region on.",
        "",
        f"Goals (issue 15), at defaults: both SMC proposals within {GOAL_GAP} of the floor, |log Ẑ error| ≤ "
        f"{GOAL_LOG_Z}, no non-finite run, and no more than {GOAL_TWIN} above the analytic twin's EMD − floor.",
        "",
        "| task | ref. ESS | floor | engine | EMD − floor | log Ẑ error | E r error | non-finite runs | drift clipped | "
        "twin EMD − floor | goals | s / rep. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in data.items():
        toy = key.split("-")[0]
        twin = data.get(f"{toy}-analytic")
        floor, floor_se = _mean_se(row["floor"])
        ess = f"{row['reference']['ess']:.0f}" if "reference" in row else "exact"
        for name in ENGINES:
            reps = row[name]["reps"]
            gap, gap_se = _mean_se([r["emd"] - f for r, f in zip(reps, row["floor"], strict=True)])
            errs = [e for r in reps for e in r["log_z_errors"]]
            lz, lz_se = _mean_se(errs) if errs else (math.nan, math.nan)
            rerr = [e for r in reps for e in r.get("reward_errors", [])]
            re_, re_se = _mean_se(rerr) if rerr else (math.nan, math.nan)
            bad = sum(r["non_finite"] for r in reps)
            clip = _mean_se([r.get("clipped", math.nan) for r in reps])[0]
            tgap = math.nan
            if twin is not None and key != f"{toy}-analytic":
                tr = twin[name]["reps"]
                tgap = _mean_se([r["emd"] - f for r, f in zip(tr, twin["floor"], strict=True)])[0]
            goals = "—"
            if name in ("smc-prior", "smc-gradient"):
                met = [gap <= GOAL_GAP, abs(lz) <= GOAL_LOG_Z, bad == 0]
                if math.isfinite(tgap):
                    met.append(gap <= tgap + GOAL_TWIN)
                goals = (
                    "all met"
                    if all(met)
                    else "missed: "
                    + ", ".join(n for n, ok in zip(("floor", "log Ẑ", "finite", "twin"), met, strict=False) if not ok)
                )
            lines.append(
                f"| {key} | {ess} | {floor:.3f} ± {floor_se:.3f} | `{name}` | {gap:.3f} ± {gap_se:.3f} | "
                f"{lz:.3f} ± {lz_se:.3f} | {re_:.3f} ± {re_se:.3f} | {bad} | {clip:.2%} | {tgap:.3f} | {goals} | {row[name]['seconds']:.1f} |"
            )
    lines += [
        "",
        "The `digits` row is the shipped digits UNet (`tilted.pretrained.digits`, a diffusers `UNet2DModel`, "
        f"K = {DIGITS['steps']}) on (1, 8, 8) images, r = log p(y = 3 | x) under the shipped CNN at α = 1, so the "
        "target is p_θ(x | y = 3). Its reference is importance sampling over "
        f"{DIGITS['chains']} chains of the UNet through `DDPMScheduler.step` (fewer than the toys' 2^17: a UNet "
        "call costs about 0.5 ms per image on 2 cores). Because r ≤ 0, accepting chain i with probability "
        "exp(r_i/α) is exact rejection sampling, so the comparison set and the floor's second set are disjoint "
        "slices of independent exact draws (resampling one weighted pool twice would share images and bias the "
        f"floor low). {DIGITS['points']} runs per repetition, {DIGITS['repeats']} repetitions. In 64 dimensions "
        "with that many points the EMD is dominated by its floor and separates engines less than on the toys; "
        "the log Ẑ error and the E r error (mean reward of the drawn images minus the reference's E_tar[r], "
        "mean ± s.e. over draws; the reference's own error is not included) are the sharper measures there.",
        "",
        "Where a goal is missed: on the ring the floor goal is missed by the *analytic twin too* (same engine, exact "
        "denoiser), so it is not the network: the Tweedie value r(x̂₀)/α ranks the ring's centre above the modes at "
        "mid noise and pulls the 82/18 mode balance toward 50/50 (docs/benchmarks.md, *Why the ring is harder*); "
        "the trained-network rows are within the twin's gap + 0.03 there. The best reached on the ring is "
        "`LearnedSoftValue` (docs/benchmarks.md, 0.014 ± 0.010 above the floor on the analytic ring); a better "
        "value function, not a different weight, is what closes it. The `smc-gradient-unweighted` rows show what "
        "the default weight fixes: with w ≡ 1 the log Ẑ error is 1.7–11.6 nats and the trust region binds for "
        "3–12 % of the particles (without it the ε-networks' particles overflow: NonFiniteError). On the digits "
        "UNet the prior proposal meets every goal (log Ẑ error −0.30 ± 0.05, at the edge of the goal) and the "
        "gradient proposal misses the log Ẑ goal (−0.61 ± 0.05) with its draws' mean reward 0.065 ± 0.006 above the "
        "target's: at N = 16 its weighted draws are biased toward high reward. That bias is finite-N (the engine "
        "is exact as N grows; the closed-form tests hold), and it is not the trust region (it binds for 0.01 % of "
        "the particles); our untested reading is that the gradient of r(x̂₀) through the UNet Jacobian guides "
        "worse than on the toys. The best reached on digits at N = 16 is the prior proposal; with w ≡ 1 the log Ẑ "
        "error is −45 nats.",
    ]
    return "\n".join(lines) + "\n"


def page_main(argv, benchmark_fn, report_fn, page: str, detail: str = "") -> None:
    """``python -m MODULE OUT.json [--report]``: run (or, with --report, reload OUT.json), save the raw
    numbers to OUT.json and write the markdown ``page`` with the run's date, time and versions."""
    import json
    import platform

    path = Path(argv[0] if argv and not argv[0].startswith("--") else "benchmark.json")
    if path.exists() and "--report" in argv:
        data = json.loads(path.read_text())
    else:
        start = time.perf_counter()
        data = benchmark_fn()
        data["_meta"] = {"minutes": (time.perf_counter() - start) / 60, "date": time.strftime("%Y-%m-%d")}
        path.write_text(json.dumps(data, indent=1))
    meta = data.pop("_meta", {})
    settings = (
        f"Run {meta.get('date', '?')}, {meta.get('minutes', math.nan):.1f} min, CPython {platform.python_version()}, "
        f"torch {torch.__version__}, 2 CPU threads{detail}."
    )
    Path(page).write_text(report_fn(data, settings))


if __name__ == "__main__":
    import sys

    detail = f", 4 repetitions of 2000 runs (digits: {DIGITS['repeats']} of {DIGITS['points']})"
    page_main(sys.argv[1:], benchmark, report, "docs/benchmarks_trained.md", detail)
