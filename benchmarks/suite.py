"""Running the quality benchmark: every (task, engine) pair as an independent job, in worker processes.

For each task and each of ``repeats`` repetitions r, the reference job draws two independent exact
sets A_r and B_r of ``points`` points: EMD(A_r, B_r) is the floor of repetition r. An engine job
runs the engine ``repeats`` times with ``num_runs=points`` (fresh seeds), takes one point per run,
and compares the points of repetition r with A_r. Reported values are means over repetitions with
standard errors; the log Ẑ and moment errors are averaged over all runs.

The verdict engine (``Settings.verdict_engine``, declared before the run) is repeated
``verdict_repeats`` times on the DAS toys, against as many floors: one repetition's EMD moves by about
±0.05 from the binomial noise of the mode fractions alone, so 5 repetitions cannot tell a gap of 0.01
from one of 0.05. The other engines are paired with the first ``repeats`` floors.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from benchmarks import engines as engine_mod
from benchmarks import metrics
from benchmarks.report.summary import SMC_ENGINES
from benchmarks.tasks import Task, build
from tilted.reference import total_variation

F64 = torch.float64


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (``--quick`` shrinks them)."""

    points: int = 2000
    repeats: int = 5
    particles: int = 16
    num_steps: int = 100  # the DAS toys
    lg_steps: int = 50  # the linear-Gaussian tasks (d = 64 costs about as much per step as a whole toy)
    discrete_steps: int = 8  # the discrete task (its exact law is enumerated per step)
    jobs: int = 2
    overhead_repeats: int = 5
    unet_steps: int = 20
    unet_particles: int = 64
    unet_channels: tuple[int, int] = (32, 64)
    plot_points: int = 2000
    learned_chains: int = 16384  # `smc-learned`: pretrained chains and Adam steps of its fit
    learned_steps: int = 3000
    verdict_engine: str = "smc-learned"  # declared in advance: its gaps on the toys decide "lands?"
    verdict_repeats: int = 30  # its repetitions (and the floors') on the toys

    def __post_init__(self):
        if self.verdict_engine not in SMC_ENGINES:
            raise ValueError(f"verdict_engine {self.verdict_engine!r} is not an eligible SMC engine: {SMC_ENGINES}")
        for name in ("points", "repeats", "verdict_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            points=400,
            repeats=3,
            num_steps=20,
            lg_steps=10,
            overhead_repeats=3,
            unet_steps=5,
            unet_particles=16,
            unet_channels=(8, 16),
            plot_points=400,
            learned_chains=1024,
            learned_steps=300,
            verdict_repeats=4,
        )


def make_task(name: str, settings: Settings) -> Task:
    """The task ``name`` at the step count of its family (toys: ``num_steps``; linear-Gaussian: ``lg_steps``)."""
    if name == "discrete":
        return build(name, settings.discrete_steps)
    return build(name, settings.lg_steps if name.startswith("lg") else settings.num_steps)


def seed_of(*parts) -> int:
    """A deterministic 31-bit seed from names and numbers."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def repeats_of(task: Task, settings: Settings, engine_name: str | None = None) -> int:
    """Repetitions of a job: on the toys the floors (``engine_name=None``) and the verdict engine get
    ``verdict_repeats`` (at least ``repeats``), every other job ``repeats``."""
    if task.plot2d and engine_name in (None, settings.verdict_engine):
        return max(settings.repeats, settings.verdict_repeats)
    return settings.repeats


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def target_draws(task: Task, settings: Settings, rep: int, which: str = "A") -> torch.Tensor:
    return task.exact_sample(settings.points, generator(task.name, "target", which, rep)).to(F64)


def bandwidth(task: Task, settings: Settings) -> float:
    return metrics.median_bandwidth(task.exact_sample(min(settings.points, 2000), generator(task.name, "bandwidth")))


# -- jobs ----------------------------------------------------------------------------------------------
def reference_job(task_name: str, settings: Settings) -> dict:
    """Floors (exact vs exact), the pretrained chain vs the data law, and exact-draw moment errors."""
    task = make_task(task_name, settings)
    h = bandwidth(task, settings)
    out: dict = {"bandwidth": h, "emd": [], "mmd2": [], "tv": [], "chain_vs_data": [], "data_floor": []}
    for rep in range(repeats_of(task, settings)):
        a, b = target_draws(task, settings, rep, "A"), target_draws(task, settings, rep, "B")
        out["emd"].append(metrics.emd(a, b, task.cost))
        if task.law is not None:
            out["tv"].append(float(total_variation(task.histogram(b), task.law)))
        else:
            out["mmd2"].append(metrics.mmd2(a, b, h))
        if task.data_sample is not None:
            gen = generator(task.name, "data", rep)
            chain = task.process.sample((settings.points,), generator=gen).to(F64)
            d1, d2 = task.data_sample(settings.points, gen), task.data_sample(settings.points, gen)
            out["chain_vs_data"].append(metrics.emd(chain, d1, task.cost))
            out["data_floor"].append(metrics.emd(d2, d1, task.cost))
    exact = task.exact_sample(100_000, generator(task.name, "diagnostics"))
    out["diagnostics"] = {name: fn(exact) for name, fn in task.diagnostics.items()}
    out["points"] = target_draws(task, settings, 0, "B")[: settings.plot_points] if task.plot2d else None
    if task.moments is not None:  # the same statistics on N i.i.d. exact draws per run
        n, runs = settings.particles, settings.points * settings.repeats
        draws = task.exact_sample(runs * n, generator(task.name, "iid")).reshape(runs, n, -1)
        m_err, c_err = metrics.weighted_moment_errors(draws, torch.zeros(runs, n), *task.moments)
        out["mean_error"], out["cov_error"] = metrics.mean_se(m_err), metrics.mean_se(c_err)
    return out


def engine_job(task_name: str, engine_name: str, settings: Settings) -> dict:
    """Run one engine ``repeats_of`` times on one task; return metrics of every output it gives."""
    task = make_task(task_name, settings)
    engine = engine_mod.get(engine_name)
    engine_mod.LEARNED.update(num_chains=settings.learned_chains, steps=settings.learned_steps)
    h = bandwidth(task, settings)
    keep = task.moments is not None
    acc: dict[str, dict] = {}
    repeats = repeats_of(task, settings, engine_name)
    for rep in range(repeats):
        seed = seed_of(task.name, engine.name, rep)
        outputs = {engine.name: engine_mod.run(engine, task, settings.particles, settings.points, seed, keep)}
        a = target_draws(task, settings, rep, "A")
        for name, o in outputs.items():
            d = acc.setdefault(
                name,
                {
                    "emd": [],
                    "mmd2": [],
                    "tv": [],
                    "seconds": [],
                    "rewards": [],
                    "points": [],
                    "log_z": [],
                    "mean_err": [],
                    "cov_err": [],
                    "resamplings": [],
                    "lambdas": [],
                    "counts": None,
                },
            )
            d["emd"].append(metrics.emd(o.points, a, task.cost))
            if task.law is not None:
                d["tv"].append(float(total_variation(task.histogram(o.points), task.law)))
            else:
                d["mmd2"].append(metrics.mmd2(o.points, a, h))
            d["seconds"].append(o.seconds)
            d["rewards"].append(task.point_rewards(o.points))
            d["points"].append(o.points)
            d["counts"] = {k: v / settings.points for k, v in o.counts.items()}
            if o.setup is not None:  # a one-off cost, shared by the points of every repetition
                d["setup"] = o.setup
                for k in ("denoiser_calls", "reward_calls"):
                    d["counts"][k] += o.setup[k] / (settings.points * repeats)
            if o.log_evidence is not None:
                d["log_z"].append(o.log_evidence)
            if keep and o.particles is not None:
                m_err, c_err = metrics.weighted_moment_errors(o.particles, o.log_weights, *task.moments)
                d["mean_err"].append(m_err)
                d["cov_err"].append(c_err)
            if o.resamplings is not None:
                d["resamplings"].append(o.resamplings)
            if o.lambdas is not None:
                d["lambdas"].append(o.lambdas)
    return {name: _summarise(task, d, settings) for name, d in acc.items()}


def _summarise(task: Task, d: dict, settings: Settings) -> dict:
    points = torch.cat(d["points"])
    rewards = torch.cat(d["rewards"])
    out = {
        "emd": metrics.mean_se(d["emd"]),
        "emd_values": d["emd"],
        "repeats": len(d["seconds"]),
        "mmd2": metrics.mean_se(d["mmd2"]),
        "tv": metrics.mean_se(d["tv"]),
        "tv_values": d["tv"],
        "reward": (float(rewards.mean()), float(rewards.std() / len(rewards) ** 0.5)),
        "seconds": metrics.mean_se(d["seconds"]),
        "counts": d["counts"],
        "diagnostics": {name: fn(points) for name, fn in task.diagnostics.items()},
        "points": points[: settings.plot_points] if task.plot2d else None,
    }
    if "setup" in d:
        out["setup"] = d["setup"]
    if d["log_z"] and task.log_z is not None:
        err = torch.cat(d["log_z"]) - task.log_z
        out["log_z_abs"] = metrics.mean_se(err.abs().tolist())
        out["log_z_bias"] = float(err.mean())
    if d["mean_err"]:
        out["mean_error"] = metrics.mean_se(torch.cat(d["mean_err"]).tolist())
        out["cov_error"] = metrics.mean_se(torch.cat(d["cov_err"]).tolist())
    if d["resamplings"]:
        out["resamplings"] = float(torch.cat(d["resamplings"]).mean())
    if d["lambdas"]:
        out["lambdas"] = torch.stack(d["lambdas"]).mean(0).tolist()
    return out


# -- scheduling ----------------------------------------------------------------------------------------
_COST = {
    "das": 3.0,
    "smc-gradient": 3.0,
    "oracle-twist": 2.0,
    "smc-gauss": 4.0,
    "smc-gauss-gradient": 8.0,
    "smc-bootstrap-2x": 2.0,
    "smc-learned": 6.0,
    "oracle-twist-prior": 2.0,
    "freedom": 2.0,
    "pretrained": 0.2,
    "dps": 0.3,
    "mpgd": 0.3,
}
_TASK_COST = {"grid": 1.0, "ring": 1.0, "lg64": 1.0, "lg16": 0.3, "lg2": 0.1, "discrete": 0.3}


def _weight(job, tasks: dict, settings: Settings) -> float:
    """A job's rough relative run time, for scheduling."""
    kind, (task_name, *rest) = job
    engine = rest[0] if kind == "engine" else None
    cost = _COST.get(engine, 1.5) if engine else 0.5
    return _TASK_COST.get(task_name, 1.0) * cost * repeats_of(tasks[task_name], settings, engine) / settings.repeats


def applicable(task: Task, engine_name: str) -> bool:
    engine = engine_mod.get(engine_name)
    if task.engines is not None and engine_name not in task.engines:
        return False
    if engine.family != "both" and engine.family != ("masked" if task.discrete else "gaussian"):
        return False
    return not (engine.oracle and task.twist is None)


def _init_worker() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


def _call(job):
    kind, args = job
    start = time.perf_counter()
    result = reference_job(*args) if kind == "reference" else engine_job(*args)
    return job, result, time.perf_counter() - start


def run(task_names, engine_names, settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Every selected (task, engine) job; returns {task: {"task": meta, "reference": ..., "outputs": ...}}."""
    tasks = {name: make_task(name, settings) for name in task_names}
    jobs = [("reference", (name, settings)) for name in task_names]
    jobs += [("engine", (t, e, settings)) for t in task_names for e in engine_names if applicable(tasks[t], e)]
    jobs.sort(key=lambda j: -_weight(j, tasks, settings))  # the longest jobs first
    results: dict = {name: {"task": _meta(tasks[name]), "reference": None, "outputs": {}} for name in task_names}
    if settings.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(settings.jobs, initializer=_init_worker) as pool:
            stream = pool.imap_unordered(_call, jobs)
            _collect(stream, results, len(jobs), log)
            pool.close()
            pool.join()
    else:
        _collect(map(_call, jobs), results, len(jobs), log)
    for name in task_names:  # engines in their canonical order
        outs = results[name]["outputs"]
        order = [e for e in engine_names if e in outs]
        results[name]["outputs"] = {o: outs[o] for o in order}
    return results


def _collect(stream, results, total, log) -> None:
    for i, (job, result, seconds) in enumerate(stream, 1):
        kind, args = job
        if kind == "reference":
            results[args[0]]["reference"] = result
            log(f"[{i}/{total}] {args[0]}: reference ({seconds:.1f} s)")
        else:
            results[args[0]]["outputs"].update(result)
            emd = result[args[1]]["emd"][0]
            log(f"[{i}/{total}] {args[0]}: {args[1]} EMD {emd:.3f} ({seconds:.1f} s)")


def _meta(task: Task) -> dict:
    return {
        "name": task.name,
        "title": task.title,
        "description": task.description,
        "dim": task.dim,
        "num_steps": task.process.num_steps,
        "log_z": task.log_z,
        "log_z_exact": task.log_z_exact,
        "expected_reward": task.expected_reward,
        "moments": task.moments is not None,
        "plot2d": task.plot2d,
        "discrete": task.discrete,
        "diagnostics": list(task.diagnostics),
    }


def settings_dict(settings: Settings) -> dict:
    return asdict(settings)
