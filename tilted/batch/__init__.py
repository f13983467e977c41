"""Batch runs: many tasks (prompts × seeds × options) from one specification, resumable (docs/batch.md).

:mod:`tilted.batch.tasks` reads the specification and expands it into tasks with stable ids,
:mod:`tilted.batch.store` keeps one atomically written result per task and the manifest, and
:mod:`tilted.batch.local` runs what is pending. ``tilted batch SPEC --out DIR`` composes them.
"""

from tilted.batch.local import Summary, run_local, run_task
from tilted.batch.store import BatchError, Store
from tilted.batch.tasks import Task, expand, load_batch, task_id

__all__ = ["BatchError", "Store", "Summary", "Task", "expand", "load_batch", "run_local", "run_task", "task_id"]
