"""Every engine's :class:`~tilted.inference.Result` as an ArviZ ``xarray.DataTree`` (all ArviZ code lives here).

Layout (R runs are ArviZ chains; a result without a run dimension gets ``chain`` of size 1):

===================  ===============================================================================
group                variables (dimensions)
===================  ===============================================================================
``posterior``        every site of the model on equally weighted draws from the final particles
                     (``Result.sample``): ``SITE (chain, draw, SITE_dim_0, …)``; the rewards of those
                     draws as deterministic values: ``rewards (chain, draw, factor)``
``log_likelihood``   the applied log-factor of every factor on the posterior draws, one variable per
                     factor: ``NAME = r_NAME / α_NAME (chain, draw)``. Power-scaling this group by γ
                     is the tilt at temperature α/γ, so :func:`temperature_sensitivity` (arviz-stats'
                     ``psense(group="likelihood")``) measures how much the tilted target moves with α.
``sample_stats``     ``particle (chain, draw)``: which final particle each draw is;
                     ``log_weight (chain, draw)``: that particle's normalised log weight;
                     ``log_marginal_likelihood (chain)``: log Ẑ of each run;
                     ``ess (chain)``: Kish ESS of the final weights
``particles``        the weighted particle approximation itself (not an ArviZ standard group):
                     ``log_weight (chain, particle)`` (normalised), every site
                     ``SITE (chain, particle, SITE_dim_0, …)`` and ``rewards (chain, particle, factor)``
``steps``            one row per engine step s = 0 (the draw of x_K), …, K (the move to x_0), when the
                     engine has steps: ``ess``, ``resampled``, ``log_evidence_increment``
                     ``(chain, step)``, ``lambdas (chain, step, factor)``, ``ancestors (chain, step,
                     particle)`` (ancestor indices used after the step; identity when not resampled),
                     ``drift_clipped (chain, step)`` (fraction of drifts the trust region scaled),
                     ``log_increment (chain, step, particle)`` (incremental log weights G),
                     coordinate ``timestep (step)``
``prior``            draws of the pretrained model, when known: ``SITE (chain, draw, …)`` and
                     ``rewards (chain, draw, factor)``. An importance-sampling result carries them
                     itself (its particles, weights ignored, are exact pretrained draws); for other
                     engines pass ``baseline=`` (for example ``Importance(model, N).run()``).
===================  ===============================================================================

Root attributes: ``site``, ``engine``, ``factors`` and ``temperatures`` (JSON), ``config`` (the
engine's settings, JSON), ``seed``, ``counts`` (JSON), ``num_particles``, ``num_runs``, ``batched``,
``posterior_seed`` (the seed of the posterior draws), the versions of tilted, torch, pyro, numpy,
xarray, arviz-base, arviz-stats and Python, and any user ``metadata``.

There is no ``log_prior`` group: log p_θ(x_0) of a diffusion model is intractable, so arviz-stats'
prior power-scaling (``psense(group="prior")`` and ``psense_summary``) does not apply; the
likelihood power-scaling does, and it is the question that matters here ("how sensitive is this
to the temperature?").

:func:`from_datatree` rebuilds the :class:`~tilted.inference.Result` (particles, weights, evidence,
rewards, trace, counts, config, temperatures), so files written by :func:`save` are complete.
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from collections.abc import Mapping
from dataclasses import replace
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from tilted._random import Seed
from tilted.inference.result import Counts, Result, StepTrace

__all__ = [
    "from_datatree",
    "load",
    "pareto_khat",
    "save",
    "temperature_sensitivity",
    "to_datatree",
    "versions",
]

NETCDF_ENGINE = "h5netcdf"
_PACKAGES = ("tilted", "torch", "pyro-ppl", "numpy", "xarray", "arviz-base", "arviz-stats", "h5netcdf")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    return t.numpy()


def _runs(t: torch.Tensor, batched: bool) -> np.ndarray:
    """A per-run array with a leading chain dimension (added when the result has no run dimension)."""
    a = _np(t)
    return a if batched else a[None]


def _event_dims(site: str, ndim: int) -> list[str]:
    return [f"{site}_dim_{i}" for i in range(ndim)]


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, sort_keys=True)


def _temperatures(result: Result, temperatures: Mapping[str, float] | None) -> dict[str, float] | None:
    temps = dict(temperatures or getattr(result, "temperatures", None) or result.config.get("temperatures") or {})
    missing = [name for name in result.rewards if name not in temps]
    if missing:
        warnings.warn(
            f"no temperature for factor(s) {missing}: the log_likelihood group (r/α) is left out; pass "
            "temperatures={name: alpha} to to_datatree",
            stacklevel=3,
        )
        return None
    return {name: float(temps[name]) for name in result.rewards}


def _rewards_name(result: Result) -> str:
    return "rewards" if "rewards" not in result.particles else "tilted_rewards"


def to_datatree(
    result: Result,
    *,
    num_draws: int | None = None,
    seed: Seed = 0,
    baseline: Result | None = None,
    temperatures: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Convert a result into an ArviZ DataTree (the layout is in the module docstring).

    Parameters
    ----------
    result
        A :class:`~tilted.inference.Result` from any engine. Only its fields are read: particles,
        log_weights, log_evidence, rewards, site, trace (may be ``None``), counts, config,
        temperatures.
    num_draws
        Equally weighted posterior draws per run (default: the number of particles).
    seed
        Seed of those draws (``Result.sample``), so that a conversion is reproducible.
    baseline
        Draws of the pretrained model for the ``prior`` group: a result whose weights are ignored,
        such as ``Importance(model, N).run()``. An importance-sampling ``result`` is its own baseline.
    temperatures
        α per factor, when the result does not carry them (``Result.temperatures``).
    metadata
        Extra root attributes (strings and numbers are stored as they are, anything else as JSON).
    """
    import arviz_base as azb

    batched = result.batched
    R = result.log_weights.shape[0] if batched else 1
    N = result.num_particles
    D = int(num_draws or N)
    factors = list(result.rewards)
    temps = _temperatures(result, temperatures)
    rname = _rewards_name(result)

    # posterior: Result.sample on a copy that also carries each particle's index and rewards
    index = torch.arange(N).expand(R, N) if batched else torch.arange(N)
    carried = dict(result.particles)
    carried["__particle__"] = index
    for j, name in enumerate(factors):
        carried[f"__reward_{j}__"] = result.rewards[name]
    draws = replace(result, particles=carried).sample(D, seed=seed)
    drawn = {k: _runs(v, batched) for k, v in draws.items()}
    particle = drawn.pop("__particle__").astype(np.int64)
    draw_rewards = [drawn.pop(f"__reward_{j}__") for j in range(len(factors))]
    rewards_cd = np.stack(draw_rewards, -1) if factors else np.zeros((R, D, 0), np.float32)

    dims: dict[str, list[str]] = {rname: ["factor"]}
    for site, v in drawn.items():
        dims[site] = _event_dims(site, v.ndim - 2)
    coords = {"factor": np.array(factors, dtype=object) if factors else np.array([], dtype=object)}
    log_weights = _runs(result.log_weights.to(torch.float64), batched)
    groups: dict[str, dict[str, np.ndarray]] = {
        "posterior": {**drawn, rname: rewards_cd},
        "sample_stats": {
            "particle": particle,
            "log_weight": np.take_along_axis(log_weights, particle, axis=1),
        },
    }
    if temps is not None and factors:
        groups["log_likelihood"] = {
            name: draw_rewards[j].astype(np.float64) / temps[name] for j, name in enumerate(factors)
        }
    prior = _baseline(result, baseline, factors)
    if prior is not None:
        groups["prior"] = {**prior[0], rname: prior[1]}
    with warnings.catch_warnings():  # runs are chains by design: more runs than draws is no naming mistake
        warnings.filterwarnings("ignore", "Found chain dimension to be longer than draw dimension")
        dt = azb.from_dict(groups, dims=dims, coords=coords)

    stats = dt["sample_stats"].to_dataset()
    stats["log_marginal_likelihood"] = ("chain", _runs(result.log_evidence.to(torch.float64), batched))
    stats["ess"] = ("chain", _runs(result.ess.to(torch.float64), batched))
    dt["sample_stats"] = xr.DataTree(stats)

    dt["particles"] = xr.DataTree(_particles_dataset(result, log_weights, factors, rname, batched))
    if result.sweeps is not None:  # particle Gibbs: the chain's records replace the last sweep's SMC trace
        dt["sweeps"] = xr.DataTree(_sweeps_dataset(result.sweeps, factors, batched))
    elif result.trace is not None:
        dt["steps"] = xr.DataTree(_steps_dataset(result.trace, factors, batched))

    cfg = dict(result.config)
    attrs = {
        "site": result.site,
        "engine": str(cfg.get("engine", "unknown")),
        "factors": _json(factors),
        "temperatures": _json(temps or {}),
        "config": _json(cfg),
        "seed": _json(cfg.get("seed")),
        "counts": _json(result.counts.as_dict()),
        "num_particles": N,
        "num_runs": R,
        "batched": int(batched),
        "posterior_seed": _json(seed if isinstance(seed, int) else None),
        "rewards_variable": rname,
        "baseline": "none" if prior is None else prior[2],
        **{f"version_{k}": v for k, v in versions().items()},
    }
    for key, value in (metadata or {}).items():
        attrs[str(key)] = (
            value if isinstance(value, str | int | float) and not isinstance(value, bool) else _json(value)
        )
    dt.attrs.update(attrs)
    return dt


def _baseline(result: Result, baseline: Result | None, factors: list[str]):
    """(site values, rewards (chain, draw, factor), description) of pretrained draws, or None."""
    source = baseline
    if source is None and result.config.get("engine") == "Importance":
        source = result
    if source is None:
        return None
    what = "the importance-sampling particles, weights ignored" if source is result else "a baseline result"
    if source is not result and source.config.get("engine") not in ("Importance", None):
        warnings.warn(
            f"the baseline comes from a {source.config.get('engine')} run: its unweighted particles are not "
            "pretrained draws; use Importance(model, N).run()",
            stacklevel=3,
        )
    missing = [f for f in factors if f not in source.rewards]
    if missing:
        raise ValueError(f"the baseline has no rewards for factor(s) {missing}")
    b = source.batched
    values = {k: _runs(v, b) for k, v in source.particles.items()}
    rewards = np.stack([_runs(source.rewards[f], b) for f in factors], -1) if factors else None
    if rewards is None:
        rewards = np.zeros(next(iter(values.values())).shape[:2] + (0,), np.float32)
    return values, rewards, what


def _particles_dataset(result: Result, log_weights: np.ndarray, factors, rname, batched) -> xr.Dataset:
    R, N = log_weights.shape
    data = {"log_weight": (("chain", "particle"), log_weights)}
    coords = {"chain": np.arange(R), "particle": np.arange(N), "factor": np.array(factors, dtype=object)}
    for site, v in result.particles.items():
        a = _runs(v, batched)
        event = _event_dims(site, a.ndim - 2)
        data[site] = (("chain", "particle", *event), a)
        coords.update({d: np.arange(n) for d, n in zip(event, a.shape[2:], strict=True)})
    r = (
        np.stack([_runs(result.rewards[f], batched) for f in factors], -1)
        if factors
        else np.zeros((R, N, 0), np.float32)
    )
    data[rname] = (("chain", "particle", "factor"), r)
    return xr.Dataset(data, coords=coords)


def _steps_dataset(trace: StepTrace, factors, batched) -> xr.Dataset:
    def runs_first(t: torch.Tensor, run_dim: int) -> np.ndarray:
        a = _np(t)
        if not batched:
            a = np.expand_dims(a, run_dim)
        return np.moveaxis(a, run_dim, 0)

    ess = runs_first(trace.ess.to(torch.float64), 1)
    S = ess.shape[1]
    data = {
        "ess": (("chain", "step"), ess),
        "resampled": (("chain", "step"), runs_first(trace.resampled, 1).astype(bool)),
        "log_evidence_increment": (("chain", "step"), runs_first(trace.log_evidence_increments.to(torch.float64), 1)),
        # lambdas (S, F, R) -> (R, S, F)
        "lambdas": (("chain", "step", "factor"), runs_first(trace.lambdas.to(torch.float64), 2)),
        "ancestors": (("chain", "step", "particle"), runs_first(trace.ancestors, 1).astype(np.int64)),
        "drift_clipped": (("chain", "step"), runs_first(trace.drift_clipped.to(torch.float64), 1)),
        "log_increment": (("chain", "step", "particle"), runs_first(trace.log_increments.to(torch.float64), 1)),
    }
    coords = {
        "chain": np.arange(ess.shape[0]),
        "step": np.arange(S),
        "timestep": ("step", _np(trace.timesteps).astype(np.int64)),
        "factor": np.array(factors, dtype=object),
    }
    return xr.Dataset(data, coords=coords)


# -- files ------------------------------------------------------------------------------------------
def _sweeps_dataset(sweeps, factors, batched) -> xr.Dataset:
    """Particle Gibbs' SweepTrace as (chain, sweep, …) arrays; ``burn_in`` as an attribute."""

    def chains_first(t: torch.Tensor) -> np.ndarray:  # (S, …, R) → (R, S, …)
        a = _np(t.to(torch.float64) if t.dtype != torch.bool else t)
        a = a if batched else a[..., None]
        return np.moveaxis(a, -1, 0)

    ds = xr.Dataset(
        {
            "renewed": (("chain", "sweep", "level"), chains_first(sweeps.renewed)),
            "moved": (("chain", "sweep"), chains_first(sweeps.moved)),
            "reward": (("chain", "sweep", "factor"), chains_first(sweeps.rewards)),
            "log_evidence": (("chain", "sweep"), chains_first(sweeps.log_evidence)),
        },
        coords={"factor": np.array(factors, dtype=object)},
    )
    ds.attrs["burn_in"] = int(sweeps.burn_in)
    return ds


def save(data: xr.DataTree | Result, path: str | Path, **to_datatree_kwargs) -> Path:
    """Write a DataTree (or a result, converted with :func:`to_datatree`) to netCDF-4 (h5netcdf)."""
    dt = data if isinstance(data, xr.DataTree) else to_datatree(data, **to_datatree_kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dt.to_netcdf(path, engine=NETCDF_ENGINE)
    return path


def load(path: str | Path) -> xr.DataTree:
    """Read a DataTree written by :func:`save`, fully into memory (the file is closed afterwards)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no result file at {str(path)!r}: write one with `tilted run SPEC --out {path}` or "
            "tilted.diagnostics.save(result, path)"
        )
    with xr.open_datatree(path, engine=NETCDF_ENGINE) as dt:
        loaded = dt.load()
    return _fix_strings(loaded)


def _fix_strings(dt: xr.DataTree) -> xr.DataTree:
    """netCDF gives string coordinates back as objects or bytes; make them Python ``str`` objects."""
    for node in dt.subtree:
        for name, coord in list(node.coords.items()):
            if coord.dtype.kind in "OSU" and name in node.dims:
                node.coords[name] = np.array([str(v) for v in coord.values], dtype=object)
    return dt


def from_datatree(dt: xr.DataTree) -> Result:
    """Rebuild the :class:`~tilted.inference.Result` that :func:`to_datatree` converted."""
    attrs = dt.attrs
    batched = bool(int(attrs.get("batched", 1)))
    rname = attrs.get("rewards_variable", "rewards")
    parts = dt["particles"].to_dataset()
    factors = [str(f) for f in parts["factor"].values]

    def tensor(a, squeeze_axis: int | None = 0) -> torch.Tensor:
        a = np.asarray(a)
        if not batched and squeeze_axis is not None:
            a = np.take(a, 0, axis=squeeze_axis)
        return torch.as_tensor(np.array(a))

    particles = {name: tensor(var.values) for name, var in parts.data_vars.items() if name not in ("log_weight", rname)}
    rewards = {f: tensor(parts[rname].values[..., j]) for j, f in enumerate(factors)}
    stats = dt["sample_stats"].to_dataset()
    trace = None
    if "steps" in dt.children:
        st = dt["steps"].to_dataset()

        def steps(name, run_dim):
            a = np.moveaxis(st[name].values, 0, run_dim)
            return tensor(a, run_dim)

        trace = StepTrace(
            ess=steps("ess", 1),
            resampled=steps("resampled", 1).bool(),
            lambdas=steps("lambdas", 2),
            log_evidence_increments=steps("log_evidence_increment", 1),
            ancestors=steps("ancestors", 1),
            timesteps=torch.from_numpy(np.asarray(st["timestep"].values, dtype=np.int64)),
            drift_clipped=steps("drift_clipped", 1)
            if "drift_clipped" in st
            else torch.zeros_like(steps("ess", 1)),  # files written before the trust region
            log_increments=steps("log_increment", 1)
            if "log_increment" in st
            else torch.zeros(steps("ancestors", 1).shape, dtype=torch.float64),
        )
    return Result(
        particles=particles,
        log_weights=tensor(parts["log_weight"].values),
        log_evidence=tensor(stats["log_marginal_likelihood"].values),
        rewards=rewards,
        site=str(attrs.get("site")),
        trace=trace,
        counts=Counts(**json.loads(attrs.get("counts", "{}"))),
        config=json.loads(attrs.get("config", "{}")),
        temperatures=json.loads(attrs.get("temperatures", "{}")),
    )


# -- statistics -------------------------------------------------------------------------------------
def pareto_khat(log_weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pareto k̂ of importance weights given as log weights, per run (last axis: particles).

    Uses arviz-stats' PSIS (``array_stats.psislw``, the generalized-Pareto fit of Zhang & Stephens
    with the weakly informative prior of Vehtari et al. 2024) on the largest 3√S (S > 225) or S/5
    weights. NaN where it is undefined: fewer than 25 particles (a tail of fewer than 5), or a
    constant tail (equal weights, a perfect importance sampler; reported as NaN, not as failure).

    Note: ``array_stats.pareto_khat(..., log_weights=True)`` fits the tail of the log weights
    themselves, not of the weights (arviz-stats 0.8), hence ``psislw`` on the negated log weights
    (its log-likelihood convention).
    """
    from arviz_stats.base import array_stats

    lw = log_weights.detach().cpu().double().numpy() if isinstance(log_weights, torch.Tensor) else log_weights
    lw = np.asarray(lw, dtype=np.float64)
    flat = lw.reshape(-1, lw.shape[-1])
    out = np.full(flat.shape[0], np.nan)
    for i, row in enumerate(flat):
        finite = row[np.isfinite(row)]
        if finite.size < 25 or np.ptp(finite) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _, k = array_stats.psislw(-finite, r_eff=1.0)
            except ValueError:  # "All tail values are the same"
                continue
        out[i] = float(k)
    return out.reshape(lw.shape[:-1])


def temperature_sensitivity(
    dt: xr.DataTree,
    factor: str | None = None,
    var_names: list[str] | None = None,
    alphas: tuple[float, float] = (0.99, 1.01),
) -> xr.Dataset:
    """Power-scaling sensitivity of the tilted target to a factor's 1/α (or to all factors at once).

    arviz-stats' ``psense(dt, group="likelihood")`` (Kallioinen et al. 2024) reweights the posterior
    draws by exp((γ − 1) Σ r_j/α_j) (Pareto-smoothed) for γ ∈ ``alphas`` and reports the derivative
    of the cumulative Jensen–Shannon distance to the unscaled posterior, per variable and element:
    the sensitivity of each quantity to a change of the temperature α → α/γ. Kallioinen et al. call
    a likelihood sensitivity below 0.05 weak: the tilt (at this α) barely moves that quantity.

    Parameters
    ----------
    factor
        One factor's name (power-scale only its r/α), or ``None`` for all factors together.
    var_names
        Posterior variables to assess (default: all).
    """
    from arviz_stats import psense

    if "log_likelihood" not in dt.children:
        raise ValueError("the DataTree has no log_likelihood group: convert with temperatures known")
    group_vars = None if factor is None else [factor]
    return psense(dt, var_names=var_names, group="likelihood", group_var_names=group_vars, alphas=alphas)


def log_mean_exp(values: np.ndarray) -> float:
    """log of the mean of exp(values), stably (for pooling log Ẑ over runs)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    m = np.max(v)
    return float(m + math.log(np.mean(np.exp(v - m))))
