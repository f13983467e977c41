"""Running a batch's pending tasks in this process, with retries and one progress bar over tasks.

Each task runs exactly as ``tilted run`` runs its specification (:func:`tilted.diagnostics.spec.run_to_datatree`:
the same engine, seed and baseline), so a task's saved log Ẑ and particles equal a plain ``tilted run``
of the same contents bit for bit. A task that raises is retried up to ``retries`` times, then recorded
as failed with its error, and the batch goes on. ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM under
``tilted batch``) stops the batch at once: the task in flight leaves no file, the manifest lists every
finished one, and running the same command again runs what is left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from tilted.batch.store import Store
from tilted.batch.tasks import Task


@dataclass
class Summary:
    """What a batch call did: ids run and done, failed (id → error), skipped (already done)."""

    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{len(self.done)} done, {len(self.failed)} failed, {len(self.skipped)} already done"
        for tid, error in list(self.failed.items())[:10]:
            text += f"\n  failed {tid}: {error}"
        return text


def run_task(task: Task):
    """One task → (its DataTree, log Ẑ averaged over runs): what ``tilted run`` would save for it."""
    from tilted.diagnostics.spec import run_to_datatree

    dt = run_to_datatree(task.spec(), progress=False, metadata={"task": task.id})
    log_z = dt["sample_stats"]["log_marginal_likelihood"].values
    return dt, float(log_z.mean()) if log_z.size and not math.isnan(float(log_z.mean())) else None


def run_local(tasks: list[Task], store: Store, retries: int = 0, progress: bool | None = True) -> Summary:
    """Run every pending task of ``tasks`` in order, saving each as soon as it finishes."""
    store.check(tasks)
    pending = store.pending(tasks)
    summary = Summary(skipped=[t.id for t in tasks if t not in pending])
    bar = tqdm(total=len(tasks), initial=len(summary.skipped), desc="tasks", unit="task", disable=progress is False)
    for task in pending:
        bar.set_postfix(done=len(summary.done) + len(summary.skipped), failed=len(summary.failed), running=task.id)
        start, error = time.perf_counter(), None
        for attempt in range(1, retries + 2):
            try:
                dt, log_z = run_task(task)
                store.save(task, dt)
            except Exception as exc:  # noqa: BLE001 - a failing task is a result; the others go on
                error = f"{type(exc).__name__}: {exc}"
                continue
            store.record(task, "done", log_evidence=log_z, attempts=attempt, seconds=time.perf_counter() - start)
            summary.done.append(task.id)
            error = None
            break
        if error is not None:
            store.record(task, "failed", error=error, attempts=retries + 1, seconds=time.perf_counter() - start)
            summary.failed[task.id] = error
        bar.update(1)
    bar.close()
    return summary
