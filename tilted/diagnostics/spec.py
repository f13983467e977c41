"""Declarative run specifications for ``tilted run``: a Python file or module, or a TOML file.

**Python** (``spec.py``, or an importable module name such as ``mypkg.spec``) defines

- ``model`` — the Pyro model;
- ``engine`` — an engine built on it (``SMC(model, 256, ...)``), or a callable ``engine(model)``;
- optionally ``seed`` (an int) or ``seeds`` (a list: one run per seed, stored as chains), ``args``
  and ``kwargs`` (passed to the model), ``baseline`` (pretrained draws for the report; 0: none).

**TOML** (``spec.toml``) names a model factory and an engine::

    model = "tilted.diagnostics.toys:das_toy"   # "module:function" or "path/to/file.py:function"
    engine = "SMC"                               # a name in tilted.inference, or "module:function"
    seed = 0                                     # or seeds = [0, 1, 2]
    args = []                                    # positional arguments of the model
    baseline = 256                               # pretrained draws for the report (0: none)

    [model_options]                              # keyword arguments of the factory
    num_steps = 50

    [engine_options]                             # keyword arguments of the engine
    num_particles = 256
    proposal = "gradient"
    tempering = { name = "exponential", gamma = 0.016 }

    [kwargs]                                     # keyword arguments of the model

Tables with a ``name`` under ``tempering`` or ``potential`` build that class of
:mod:`tilted.tempering` or :mod:`tilted.inference.potentials` with the other keys as arguments;
lists under ``resample_window`` become tuples. A factory module is looked up next to the spec file
first, then on the Python path.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import sys
import tomllib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from tilted.inference.result import Counts, Result, StepTrace

__all__ = ["Spec", "concat_results", "load_spec", "run_spec", "run_to_datatree", "spec_from_table"]


@dataclass
class Spec:
    """A loaded specification: what ``tilted run`` runs."""

    model: Callable[..., Any]
    engine: Any
    seeds: list[int | None] = field(default_factory=lambda: [None])
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    baseline: int | None = None
    source: str = ""
    text: str = ""


class SpecError(ValueError):
    """A specification that cannot be read; the message says what is missing or wrong."""


@contextmanager
def _on_path(folder: Path):
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:
            pass


def _load_file_module(path: Path):
    """The module of a ``.py`` file, executed once per process (so its caches, e.g. of loaded weights,
    serve every task of a batch worker)."""
    name = f"_tilted_spec_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path(path.parent):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _resolve(ref: str, folder: Path | None, what: str):
    """``module:attr`` or ``file.py:attr`` → the object."""
    if ":" not in ref:
        raise SpecError(f"{what} must be given as 'module:function' or 'file.py:function', got {ref!r}")
    mod_name, attr = ref.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        module = _load_file_module(path)
    else:
        try:
            if folder is not None:
                with _on_path(folder):
                    module = importlib.import_module(mod_name)
            else:
                module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise SpecError(f"{what} {ref!r}: cannot import {mod_name!r} ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{what} {ref!r}: module {mod_name!r} has no attribute {attr!r}") from None


def _engine_factory(name: str, folder: Path | None):
    if ":" in name:
        return _resolve(name, folder, "engine")
    import tilted.inference as inference

    names = {n.lower(): n for n in getattr(inference, "__all__", dir(inference))}
    key = names.get(name.lower())
    if key is None:
        raise SpecError(f"unknown engine {name!r}; use one of {sorted(names.values())} or 'module:function'")
    return getattr(inference, key)


def _component(kind: str, value):
    """A ``{name = ..., ...}`` table → an instance of that tempering schedule or potential."""
    if not isinstance(value, dict):
        return value
    if "name" not in value:
        raise SpecError(f"{kind} table needs a 'name', got {value!r}")
    params = {k: v for k, v in value.items() if k != "name"}
    if kind == "tempering":
        import tilted.tempering as module
    else:
        import tilted.inference.potentials as module
    classes = {n.lower(): getattr(module, n) for n in dir(module) if isinstance(getattr(module, n), type)}
    cls = classes.get(str(value["name"]).lower())
    if cls is None:
        raise SpecError(f"unknown {kind} {value['name']!r}")
    return _call(cls, params, f"{kind} {value['name']!r}")


def _engine_options(options: dict) -> dict:
    out = dict(options)
    for key in ("tempering", "potential"):
        if key in out:
            out[key] = _component(key, out[key])
    if isinstance(out.get("resample_window"), list):
        out["resample_window"] = tuple(out["resample_window"])
    return out


def _seeds(ns: dict) -> list[int | None]:
    if "seeds" in ns and ns["seeds"] is not None:
        seeds = list(ns["seeds"])
        if not seeds:
            raise SpecError("seeds is empty")
        return seeds
    return [ns.get("seed")]


def _call(fn, options: dict, what: str, *args):
    """``fn(*args, **options)``; a keyword ``fn`` does not take, or a :class:`~tilted.errors.TiltedError` or
    ``ValueError`` of the call, is a :class:`SpecError` (an unknown key is named with the accepted ones)."""
    from tilted.errors import TiltedError

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable without a signature: call it as it is
        signature = None
    if signature is not None and not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        positional = list(signature.parameters)[: len(args)]
        accepted = [
            n for n, p in signature.parameters.items() if n not in positional and p.kind is not p.VAR_POSITIONAL
        ]
        for key in options:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SpecError(f"{what} takes no option {key!r}: {hint}it takes {', '.join(accepted)}")
    try:
        return fn(*args, **options)
    except SpecError:
        raise
    except (TiltedError, ValueError) as exc:
        raise SpecError(f"{what}: {exc}") from exc


def spec_from_table(
    table: dict, folder: Path | None, source: str = "", text: str = "", models: dict | None = None
) -> Spec:
    """A TOML specification's table (module docstring) → a :class:`Spec`: the factory called, the engine built.

    ``models``, a dict kept by the caller, caches the factory's model per (factory, ``model_options``):
    a batch worker builds each model once and runs every task of that model on it (the engine, which
    holds all run state, is built afresh per task).
    """
    for key in ("model", "engine"):
        if key not in table:
            raise SpecError(f"{source or 'spec'}: missing {key!r} (model = 'module:function', engine = 'SMC', ...)")
    options = table.get("model_options", {})
    key = json.dumps([table["model"], str(folder), options], sort_keys=True, default=str)
    if models is not None and key in models:
        model = models[key]
    else:
        model = _call(
            _resolve(table["model"], folder, "model"), options, f"{source or 'spec'}: model {table['model']!r}"
        )
        if models is not None:
            models.clear()  # one model per worker at a time: memory stays that of one model
            models[key] = model
    engine = _call(
        _engine_factory(table["engine"], folder),
        _engine_options(table.get("engine_options", {})),
        f"{source or 'spec'}: engine {table['engine']!r}",
        model,
    )
    return Spec(
        model=model,
        engine=engine,
        seeds=_seeds(table),
        args=tuple(table.get("args", ())),
        kwargs=dict(table.get("kwargs", {})),
        baseline=table.get("baseline"),
        source=source,
        text=text,
    )


def load_spec(ref: str | Path) -> Spec:
    """Load a ``.toml`` file, a ``.py`` file or an importable module name (see the module docstring)."""
    path = Path(ref)
    if path.suffix == ".toml":
        if not path.exists():
            raise SpecError(f"no such specification file: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path}: {exc}") from exc
        return spec_from_table(table, path.parent.resolve(), str(path), text)
    if path.suffix == ".py" or path.exists():
        if not path.exists():
            raise SpecError(f"no such specification file: {path}")
        module = _load_file_module(path)
        text = path.read_text(encoding="utf-8")
    else:
        try:
            module = importlib.import_module(str(ref))
        except ImportError as exc:
            raise SpecError(f"{ref!r} is neither a .toml/.py file nor an importable module ({exc})") from exc
        text = Path(module.__file__).read_text(encoding="utf-8") if getattr(module, "__file__", None) else ""
    ns = vars(module)
    for key in ("model", "engine"):
        if key not in ns:
            raise SpecError(f"{ref}: the specification must define {key!r}")
    engine = ns["engine"]
    if not hasattr(engine, "run") and callable(engine):
        engine = engine(ns["model"])
    if not hasattr(engine, "run"):
        raise SpecError(f"{ref}: engine must be an engine (with .run) or a callable engine(model)")
    return Spec(
        model=ns["model"],
        engine=engine,
        seeds=_seeds(ns),
        args=tuple(ns.get("args", ())),
        kwargs=dict(ns.get("kwargs", {})),
        baseline=ns.get("baseline"),
        source=str(ref),
        text=text,
    )


def run_spec(spec: Spec, *, progress: bool | None = True) -> Result:
    """Run the specification's engine once per seed; several seeds are joined as runs (chains)."""
    engine = spec.engine
    if progress is not None and hasattr(engine, "progress"):
        engine.progress = progress
    results = [engine.run(*spec.args, seed=seed, **spec.kwargs) for seed in spec.seeds]
    if len(results) == 1:
        return results[0]
    out = concat_results(results)
    out.config["seeds"] = list(spec.seeds)
    return out


def run_to_datatree(spec: Spec, *, draws: int | None = None, baseline: int | None = None, progress=True, metadata=None):
    """What ``tilted run`` saves: the result as a DataTree with a pretrained baseline for the report.

    ``baseline`` pretrained draws (default: the spec's, else as many as the engine's particles; 0: none;
    importance sampling is its own baseline), drawn with a seed derived from the first seed.
    """
    from tilted.diagnostics.arviz import to_datatree

    result = run_spec(spec, progress=progress)
    prior, prior_seed = None, None
    size = spec.baseline if baseline is None else baseline
    if result.config.get("engine") != "Importance" and (size is None or size > 0):
        from tilted.inference import Importance

        size = size or result.num_particles
        prior_seed = (spec.seeds[0] or 0) + 1_000_003
        engine = Importance(getattr(spec.engine, "model", spec.model), size, progress=progress)
        prior = engine.run(*spec.args, seed=prior_seed, **spec.kwargs)
    meta = {"spec": spec.text, "spec_path": spec.source, **(metadata or {})}
    if prior_seed is not None:
        meta["baseline_seed"] = prior_seed
    return to_datatree(result, num_draws=draws, baseline=prior, metadata=meta)


def concat_results(results: list[Result]) -> Result:
    """Join independent results of one model and engine as the runs of one batched result."""
    if not results:
        raise ValueError("no results to join")

    def runs(t: torch.Tensor, batched: bool, dim: int = 0) -> torch.Tensor:
        return t if batched else t.unsqueeze(dim)

    def cat(getter, dim: int = 0):
        return torch.cat([runs(getter(r), r.batched, dim) for r in results], dim)

    first = results[0]
    if any(set(r.particles) != set(first.particles) or r.num_particles != first.num_particles for r in results):
        raise ValueError("results to join must have the same sites and the same number of particles")
    trace = None
    if all(r.trace is not None for r in results):
        run_dim = {"lambdas": 2}
        trace = StepTrace(
            **{
                f.name: first.trace.timesteps
                if f.name == "timesteps"
                else cat(lambda r, n=f.name: getattr(r.trace, n), run_dim.get(f.name, 1))
                for f in fields(StepTrace)
            }
        )
    sweeps = None
    if all(r.sweeps is not None for r in results):  # particle Gibbs: the chains' records, run dimension joined

        def joined(name: str, dim: int):
            values = [getattr(r.sweeps, name) for r in results]
            if any(v is None for v in values):
                return None
            return torch.cat([v if r.batched else v.unsqueeze(dim) for v, r in zip(values, results, strict=True)], dim)

        sweeps = replace(
            first.sweeps,
            **{
                name: joined(name, dim)
                for name, dim in (("renewed", 2), ("moved", 1), ("rewards", 2), ("log_evidence", 1), ("paths", 2))
            },
        )
    counts = Counts(**{k: sum(getattr(r.counts, k) for r in results) for k in Counts().as_dict()})
    config = dict(first.config)
    config["num_runs"] = sum(r.log_weights.shape[0] if r.batched else 1 for r in results)
    return replace(
        first,
        particles={k: cat(lambda r, k=k: r.particles[k]) for k in first.particles},
        log_weights=cat(lambda r: r.log_weights),
        log_evidence=cat(lambda r: r.log_evidence),
        rewards={k: cat(lambda r, k=k: r.rewards[k]) for k in first.rewards},
        trace=trace,
        counts=counts,
        config=config,
        sweeps=sweeps,
    )
