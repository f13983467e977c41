"""Batch runs: many tasks (prompts × seeds × options) from one specification, resumable (docs/batch.md).

:mod:`tilted.batch.tasks` reads the specification and expands it into tasks with stable ids,
:mod:`tilted.batch.store` keeps one atomically written result per task and the manifest, and
:mod:`tilted.batch.local` runs what is pending in this process, :mod:`tilted.batch.cluster` on Ray
workers. ``tilted batch SPEC --out DIR [--backend ray]`` composes them.
"""

from tilted.batch.cluster import run_ray
from tilted.batch.local import Summary, run_local, run_task
from tilted.batch.store import BatchError, Store
from tilted.batch.tasks import Task, Workers, expand, load_batch, read_batch, task_id

__all__ = [
    "BatchError",
    "Store",
    "Summary",
    "Task",
    "Workers",
    "expand",
    "load_batch",
    "read_batch",
    "run_local",
    "run_ray",
    "run_task",
    "task_id",
]
