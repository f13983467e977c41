"""Running a batch's pending tasks in this process, with retries and one progress bar over tasks.

Each task runs exactly as ``tilted run`` runs its specification (:func:`tilted.diagnostics.spec.run_to_datatree`:
the same engine, seed and baseline), so a task's saved log Ẑ and particles equal a plain ``tilted run``
of the same contents bit for bit. The model of a task is built once and kept for the following tasks
of the same model (tasks run grouped by model); the engine, which holds all run state, is built per
task. A task that raises is retried up to ``retries`` times, then recorded as failed with its error,
and the batch goes on. ``KeyboardInterrupt`` (Ctrl-C, and SIGTERM under ``tilted batch``) stops the
batch at once: the task in flight leaves no file, the manifest lists every finished one, and running
the same command again runs what is left.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

from tilted._progress import progress_bar
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


class Ledger:
    """A batch's bookkeeping, whatever runs the tasks: the pending tasks (grouped by model), the manifest
    entries of finished ones, the summary, and one bar over tasks (done / failed / running, ETA)."""

    def __init__(self, tasks: list[Task], store: Store, progress: bool | None = True):
        store.check(tasks)
        pending = store.pending(tasks)
        self.store = store
        self.pending = sorted(pending, key=lambda t: json.dumps([t.table["model"], t.table.get("model_options", {})]))
        self.summary = Summary(skipped=[t.id for t in tasks if t not in pending])
        self.running: set[str] = set()
        self.bar = progress_bar(
            progress=progress, total=len(tasks), initial=len(self.summary.skipped), desc="tasks", unit="task"
        )
        self._show()

    def _show(self) -> None:
        done = len(self.summary.done) + len(self.summary.skipped)
        self.bar.set_postfix(done=done, failed=len(self.summary.failed), running=len(self.running), refresh=False)

    def started(self, task: Task) -> None:
        self.running.add(task.id)
        self._show()

    def done(self, task: Task, log_evidence: float | None, attempts: int, seconds: float, host: str | None = None):
        self.store.record(
            task, "done", log_evidence=log_evidence, attempts=attempts, seconds=seconds, host=host or where()
        )
        self.summary.done.append(task.id)
        self._finish(task)

    def failed(self, task: Task, error: str, attempts: int, seconds: float, traceback: str | None = None) -> None:
        self.store.record(task, "failed", error=error, attempts=attempts, seconds=seconds, traceback=traceback)
        self.summary.failed[task.id] = error
        self._finish(task)

    def _finish(self, task: Task) -> None:
        self.running.discard(task.id)
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()


class TaskTimeout(Exception):
    """A task ran longer than the batch's time limit (``--timeout``)."""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def traceback_of(exc: BaseException, limit: int = 4000) -> str:
    """The end of ``exc``'s formatted traceback, for the manifest (a morning's debugging needs the line)."""
    return "".join(traceback.format_exception(exc))[-limit:]


def where() -> str:
    """Where a task ran, for the manifest: host, process and the visible GPUs."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{socket.gethostname()}:{os.getpid()}" + (f" gpu {gpus}" if gpus else "")


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`TaskTimeout` in this (main) thread after ``seconds`` (SIGALRM; None: no limit)."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise TaskTimeout(f"ran longer than the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_task(task: Task, models: dict | None = None):
    """One task → (its DataTree, log Ẑ averaged over runs): what ``tilted run`` would save for it.

    ``models`` caches the task's model for later tasks of the same model (:func:`spec_from_table`)."""
    from tilted.diagnostics.spec import run_to_datatree

    dt = run_to_datatree(task.spec(models), progress=False, metadata={"task": task.id})
    log_z = dt["sample_stats"]["log_marginal_likelihood"].values
    return dt, float(log_z.mean()) if log_z.size and not math.isnan(float(log_z.mean())) else None


def run_local(
    tasks: list[Task], store: Store, retries: int = 0, progress: bool | None = True, timeout: float | None = None
) -> Summary:
    """Run every pending task of ``tasks`` in this process, saving each as soon as it finishes; a task
    running longer than ``timeout`` seconds is stopped and counts as a failed attempt."""
    ledger, models = Ledger(tasks, store, progress), {}
    try:
        for task in ledger.pending:
            ledger.started(task)
            start, error, trace = time.perf_counter(), None, None
            for attempt in range(1, retries + 2):
                try:
                    with time_limit(timeout):
                        dt, log_z = run_task(task, models)
                    store.save(task, dt)
                except Exception as exc:  # noqa: BLE001 - a failing task is a result; the others go on
                    error, trace = describe(exc), traceback_of(exc)
                    continue
                ledger.done(task, log_z, attempt, time.perf_counter() - start)
                error = None
                break
            if error is not None:
                ledger.failed(task, error, retries + 1, time.perf_counter() - start, trace)
    finally:
        ledger.close()
    return ledger.summary
