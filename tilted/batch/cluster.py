"""Running a batch on a Ray cluster: one actor per worker, each keeping its model loaded across tasks.

:func:`run_ray` joins the cluster at ``address`` (or starts a local one with ``workers × num_cpus``
CPUs), starts as many actors as asked and as fit (each reserves the ``[workers]`` resources, e.g.
one GPU), and hands every idle actor the next pending task; tasks are grouped by model, so an actor
builds its model once and reuses it for the following tasks. An actor runs a task exactly as the
local backend does (:func:`tilted.batch.local.run_task`) and sends back the bytes of its netCDF file.
Only the driver writes ``DIR`` (:class:`~tilted.batch.store.Store`), so

- a result is the same file the local backend would write (same log Ẑ and particles, bit for bit,
  on the same hardware and thread count; Ray gives each actor ``OMP_NUM_THREADS = num_cpus``);
- workers need no shared file system, only the package and the model factories importable;
- a worker that dies mid-task (killed, out of memory, a lost node) leaves nothing behind: the driver
  starts a replacement and counts the attempt, retried up to ``retries`` times like any failure.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from tilted.batch.local import Ledger, Summary, TaskTimeout, describe, run_task, traceback_of, where
from tilted.batch.store import BatchError, Store
from tilted.batch.tasks import Task, Workers


def _ray():
    try:
        import ray
    except ImportError:
        raise BatchError("the Ray backend needs Ray: pip install 'tilted[ray]' (or use --backend local)") from None
    return ray


class Worker:
    """A Ray actor's state: the model of the tasks it ran (built once, :func:`spec_from_table`)."""

    def __init__(self):
        self.models: dict = {}

    def run(self, task: Task) -> tuple[bytes, float | None, str]:
        """Run ``task`` → (the bytes of its netCDF result, its log Ẑ, where it ran)."""
        from tilted.diagnostics.arviz import NETCDF_ENGINE

        dt, log_z = run_task(task, self.models)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "result.nc"
            dt.to_netcdf(path, engine=NETCDF_ENGINE)
            return path.read_bytes(), log_z, where()


def _check_reachable(address: str) -> None:
    """A ``host:port`` that refuses connections fails here at once (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise BatchError(
            f"cannot join the Ray cluster at {address!r}: {exc} (is `ray start --head` running there? "
            "`ray status` on the head says; without --address a local cluster starts)"
        ) from None


def _capacity(ray, need: Workers) -> int:
    """How many workers the cluster's resources hold now."""
    have = ray.cluster_resources()
    fits = [math.floor(have.get("CPU", 0) / need.num_cpus)] if need.num_cpus else []
    if need.num_gpus:
        fits.append(math.floor(have.get("GPU", 0) / need.num_gpus))
    fits += [math.floor(have.get(k, 0) / v) for k, v in need.resources.items() if v]
    return min(fits) if fits else 1_000_000  # a worker that reserves nothing always fits


def run_ray(
    tasks: list[Task],
    store: Store,
    retries: int = 0,
    progress: bool | None = True,
    *,
    address: str | None = None,
    workers: int | None = None,
    resources: Workers = Workers(),
    timeout: float | None = None,
) -> Summary:
    """Run every pending task on Ray workers, saving each result as soon as it comes back (module docstring).

    ``address`` joins a running cluster (``"auto"``, ``"ray://host:10001"``, ...); without it a local
    cluster starts with ``workers × resources.num_cpus`` CPUs (all of this machine's by default) and
    stops at the end. An already initialised Ray (``ray.init`` in this process) is used as it is.
    A task running longer than ``timeout`` seconds has its worker stopped and replaced and counts as a
    failed attempt.
    """
    ray = _ray()
    if workers is not None and workers < 1:
        raise BatchError(f"--workers must be ≥ 1, got {workers}")
    ledger = Ledger(tasks, store, progress)
    queue: deque[Task] = deque(ledger.pending)
    started = False
    actors: list = []
    try:
        if not queue:
            return ledger.summary
        if not ray.is_initialized():
            if address:
                _check_reachable(address)
            options = (
                {"address": address}
                if address
                else {"num_cpus": (workers or os.cpu_count() or 1) * max(resources.num_cpus, 1)}
            )
            handler = signal.getsignal(signal.SIGTERM)  # Ray's init replaces it: keep the caller's (Ctrl-C-like stop)
            try:
                ray.init(**options, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                if handler is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, handler)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"join the Ray cluster at {address!r}" if address else "start a local Ray cluster"
                raise BatchError(
                    f"cannot {where}: {str(exc).splitlines()[0]} (is `ray start --head` running there? "
                    "`ray status` says; without --address a local cluster starts)"
                ) from exc
            started = True  # ray.shutdown() at the end stops a local cluster, or disconnects from a joined one
        fits = _capacity(ray, resources)
        if fits < 1:
            raise BatchError(
                f"no worker fits on the cluster ({ray.cluster_resources()}); each needs {resources}: "
                "lower [workers] num_cpus / num_gpus or add nodes"
            )
        count = min(workers or fits, fits, len(queue))
        if workers and workers > fits:
            print(
                f"tilted batch: only {fits} of {workers} workers fit on the cluster now; starting {fits}",
                file=sys.stderr,
            )
        actor = ray.remote(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, resources=resources.resources or None
        )
        actor = actor(Worker)
        actors = [actor.remote() for _ in range(count)]
        attempts: dict[str, int] = {}
        began: dict[str, float] = {}
        flight: dict = {}  # object ref → (actor, task, deadline)

        def submit(worker) -> None:
            task = queue.popleft()
            attempts[task.id] = attempts.get(task.id, 0) + 1
            began.setdefault(task.id, time.perf_counter())
            deadline = time.monotonic() + timeout if timeout else math.inf
            flight[worker.run.remote(task)] = (worker, task, deadline)
            ledger.started(task)

        def replace(worker):
            ray.kill(worker)
            actors.remove(worker)
            actors.append(actor.remote())
            ray.get(actors[-1].__ray_ready__.remote())  # started (tilted imported) before its clock runs
            return actors[-1]

        ray.get([worker.__ray_ready__.remote() for worker in actors])  # time limits count from a started worker
        for worker in actors:
            submit(worker)
        while flight:
            wait = min(d for _, _, d in flight.values()) - time.monotonic()
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=None if wait == math.inf else max(wait, 0))
            if ready:
                ref = ready[0]
            else:  # the oldest task ran out of time: its worker is stopped and replaced
                ref = min(flight, key=lambda r: flight[r][2])
            worker, task, _ = flight.pop(ref)
            error, host, trace = None, None, None
            try:
                if not ready:
                    worker = replace(worker)
                    raise TaskTimeout(f"ran longer than the time limit of {timeout:g} s")
                data, log_z, host = ray.get(ref)
                store.save(task, data)
            except ray.exceptions.RayActorError as exc:  # the worker process died: replace it
                error = f"worker died ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                worker = replace(worker)
            except ray.exceptions.RayTaskError as exc:  # its text holds the worker's traceback
                error, trace = (
                    describe(getattr(exc, "cause", None) or exc),
                    re.sub(r"\x1b\[[0-9;]*m", "", str(exc))[-4000:],
                )
            except Exception as exc:  # noqa: BLE001 - a time limit, or a result that could not be written
                error, trace = describe(exc), traceback_of(exc)
            seconds = time.perf_counter() - began[task.id]
            if error is None:
                ledger.done(task, log_z, attempts[task.id], seconds, host=host)
            elif attempts[task.id] <= retries:
                queue.appendleft(task)
            else:
                ledger.failed(task, error, attempts[task.id], seconds, trace)
            if queue:
                submit(worker)
    finally:
        for worker in actors:
            ray.kill(worker)
        ledger.close()
        if started:
            ray.shutdown()
    return ledger.summary
