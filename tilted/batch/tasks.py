"""Batch specifications: the TOML of ``tilted run`` plus ``[[tasks]]`` and a ``[sweep]`` shorthand.

::

    model = "tilted.diagnostics.toys:das_toy"
    engine = "SMC"
    [model_options]                     # shared by every task
    num_steps = 50
    [engine_options]
    num_particles = 256

    [[tasks]]                           # one task: options merged over the top-level tables
    id = "gradient"                     # optional; default: derived from the task's contents
    seed = 0
    engine_options = { proposal = "gradient" }

    [sweep]                             # the cartesian product of these lists, one task each
    seed = [0, 1, 2]
    engine_options = { proposal = ["prior", "gradient"] }
    model_options = { num_steps = [20, 50] }

A task's result depends only on its *contents* — the model and engine names, the merged
``model_options`` and ``engine_options``, ``args``, ``kwargs``, ``baseline`` and ``seed`` — so its
default id is a hash of them (``t-`` + 12 hex digits of SHA-1 over their canonical JSON): the same
task gets the same id in every expansion and on every machine, and changing any option changes it.
A task given an explicit ``id`` keeps it; running it again with other contents is an error
(:mod:`tilted.batch.store`). Without ``[[tasks]]`` or ``[sweep]`` the file is one task (one per
``seeds``). A ``[workers]`` table (``num_cpus``, ``num_gpus``, ``resources``) says what each worker of
the Ray backend reserves; it is not part of any task's contents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tilted.diagnostics.spec import Spec, SpecError, spec_from_table

#: keys of a task's contents (what its result depends on)
CONTENT_KEYS = ("model", "engine", "model_options", "engine_options", "args", "kwargs", "baseline", "seed")


@dataclass(frozen=True)
class Task:
    """One run of a batch: its id and the table of ``tilted run`` it stands for (with one ``seed``)."""

    id: str
    table: dict
    folder: Path | None = None

    @property
    def contents(self) -> dict:
        return {k: self.table[k] for k in CONTENT_KEYS if k in self.table}

    @property
    def seed(self) -> int | None:
        return self.table.get("seed")

    def spec(self, models: dict | None = None) -> Spec:
        """The task as a ``tilted run`` specification (its factory called, or its model taken from ``models``)."""
        text = json.dumps(self.contents, indent=1, sort_keys=True)
        return spec_from_table(self.table, self.folder, source=f"task {self.id}", text=text, models=models)


def canonical(contents: dict) -> str:
    return json.dumps(contents, sort_keys=True, separators=(",", ":"), default=str)


def task_id(contents: dict) -> str:
    """``t-`` + 12 hex digits of SHA-1 of the contents' canonical JSON (stable across runs and machines)."""
    return "t-" + hashlib.sha1(canonical(contents).encode()).hexdigest()[:12]


def _merged(base: dict, task: dict, where: str) -> dict:
    unknown = set(task) - {"id", "seed", "model_options", "engine_options", "args", "kwargs", "baseline"}
    if unknown:
        raise SpecError(f"{where}: unknown task keys {sorted(unknown)} (id, seed, model_options, engine_options, ...)")
    table = {k: v for k, v in base.items() if k not in ("tasks", "sweep", "seeds", "workers")}
    for key in ("model_options", "engine_options", "kwargs"):
        if key in task:
            if not isinstance(task[key], dict):
                raise SpecError(f"{where}: {key} must be a table, got {task[key]!r}")
            table[key] = {**base.get(key, {}), **task[key]}
    for key in ("seed", "args", "baseline"):
        if key in task:
            table[key] = task[key]
    return table


def _sweep_tasks(sweep: dict, where: str) -> list[dict]:
    """The cartesian product of the sweep's lists as task tables (order: the sweep's keys, then values)."""
    axes = []  # (path, values)
    for key, value in sweep.items():
        if isinstance(value, dict) and key in ("model_options", "engine_options", "kwargs"):
            for option, values in value.items():
                axes.append(((key, option), values))
        else:
            axes.append(((key,), value))
    for path, values in axes:
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: sweep {'.'.join(path)} must be a non-empty list, got {values!r}")
    tasks = []
    for combo in itertools.product(*(values for _, values in axes)):
        task: dict = {}
        for (path, _), value in zip(axes, combo, strict=True):
            if len(path) == 1:
                task[path[0]] = value
            else:
                task.setdefault(path[0], {})[path[1]] = value
        tasks.append(task)
    return tasks


def expand(table: dict, folder: Path | None = None, where: str = "spec") -> list[Task]:
    """Every task of a batch table: the ``[[tasks]]``, then the ``[sweep]`` (with ``seeds``: one task per seed)."""
    raw = list(table.get("tasks", []))
    if "sweep" in table:
        raw += _sweep_tasks(table["sweep"], where)
    if not raw:
        seeds = table.get("seeds") or [table.get("seed")]
        raw = [{"seed": s} for s in seeds]
    tasks, seen = [], {}
    for i, raw_task in enumerate(raw):
        if not isinstance(raw_task, dict):
            raise SpecError(f"{where}: task {i} must be a table, got {raw_task!r}")
        merged = _merged(table, raw_task, f"{where}, task {i}")
        contents = {k: merged[k] for k in CONTENT_KEYS if k in merged}
        tid = str(raw_task.get("id") or task_id(contents))
        if tid in seen:
            same = canonical(seen[tid]) == canonical(contents)
            raise SpecError(
                f"{where}: task id {tid!r} appears twice"
                + (" with the same contents" if same else " with different contents; give each task its own id")
            )
        seen[tid] = contents
        tasks.append(Task(tid, merged, folder))
    return tasks


@dataclass(frozen=True)
class Workers:
    """What each worker of the Ray backend reserves (the ``[workers]`` table): CPUs, GPUs, custom resources.

    A worker is one Ray actor that keeps its model loaded across tasks; ``num_gpus = 1`` gives each its
    own GPU (Ray sets ``CUDA_VISIBLE_DEVICES``), so a model put on ``"cuda"`` stays there.
    """

    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: dict, where: str = "spec") -> Workers:
        value = table.get("workers", {})
        if not isinstance(value, dict) or set(value) - {"num_cpus", "num_gpus", "resources"}:
            raise SpecError(f"{where}: [workers] takes num_cpus, num_gpus and resources (a table), got {value!r}")
        workers = cls(**value)
        if workers.num_cpus < 0 or workers.num_gpus < 0 or not isinstance(workers.resources, dict):
            raise SpecError(f"{where}: [workers] needs num_cpus ≥ 0, num_gpus ≥ 0, resources a table; got {value!r}")
        return workers


def read_batch(path: str | Path) -> tuple[list[Task], Workers]:
    """A batch TOML file → its tasks and its workers' resources (module docstring)."""
    table, where = _read(path)
    return expand(table, Path(path).parent.resolve(), where), Workers.from_table(table, where)


def load_batch(path: str | Path) -> list[Task]:
    """Read a batch TOML file into its tasks (module docstring)."""
    return read_batch(path)[0]


def _read(path: str | Path) -> tuple[dict, str]:
    path = Path(path)
    if path.suffix != ".toml":
        raise SpecError(f"a batch specification is a .toml file, got {path}")
    if not path.exists():
        raise SpecError(f"no such batch specification: {path}")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    for key in ("model", "engine"):
        if key not in table:
            raise SpecError(f"{path}: missing {key!r} (model = 'module:function', engine = 'SMC', ...)")
    return table, str(path)
