"""The result store of a batch: one netCDF per task, written atomically, and ``manifest.json``.

Guarantees (what survives an interruption — Ctrl-C, SIGTERM, a killed worker or machine):

- ``DIR/<id>.nc`` appears only complete: it is written to ``DIR/.<id>.nc.tmp-<pid>`` and renamed
  (``os.replace``, atomic on POSIX file systems), so a file that exists is a whole, readable result;
- ``DIR/manifest.json`` is rewritten the same way after every finished task, and records for every
  task its status (``"done"``, or ``"failed"`` with the error), contents (options, seed), file,
  log Ẑ, attempts and seconds;
- a task is *to run* when it is not ``"done"`` or its file is missing; done tasks are never rerun;
- a task whose contents changed under an existing id raises :class:`BatchError` before anything
  runs, never a silent overwrite (give it a new id, or remove its entry and file).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tilted.batch.tasks import Task, canonical
from tilted.errors import TiltedError

MANIFEST = "manifest.json"


class BatchError(TiltedError, ValueError):
    """A batch that cannot run as given (the message says what to change)."""


def atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` and rename the temporary file onto ``path``; on any failure remove it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class Store:
    """``DIR`` with its manifest (module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / MANIFEST
        self.entries: dict[str, dict] = {}
        if path.exists():
            try:
                self.entries = json.loads(path.read_text())["tasks"]
            except (ValueError, KeyError) as exc:
                raise BatchError(f"{path} is not a batch manifest ({exc}); move it away to start afresh") from None

    def file(self, task: Task) -> Path:
        return self.folder / f"{task.id}.nc"

    def check(self, tasks: list[Task]) -> None:
        """Refuse tasks whose contents changed under an id already in the manifest."""
        changed = [
            t.id
            for t in tasks
            if t.id in self.entries and canonical(self.entries[t.id]["contents"]) != canonical(t.contents)
        ]
        if changed:
            raise BatchError(
                f"task(s) {changed[:5]} changed options under an existing id in {self.folder / MANIFEST}; give them "
                "new ids (or drop the id to derive one), or delete their entries and files to rerun them"
            )

    def pending(self, tasks: list[Task]) -> list[Task]:
        """Tasks not done (failed, never run, or whose file went missing)."""
        return [t for t in tasks if self.entries.get(t.id, {}).get("status") != "done" or not self.file(t).exists()]

    def record(self, task: Task, status: str, **fields) -> None:
        entry = {"status": status, "contents": task.contents, "seed": task.seed, "file": f"{task.id}.nc"}
        entry.update(fields, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.entries[task.id] = entry
        text = json.dumps({"tasks": self.entries}, indent=1, sort_keys=True, default=str)
        atomic_write(self.folder / MANIFEST, lambda p: p.write_text(text))

    def save(self, task: Task, result) -> Path:
        """Write a task's result (a DataTree, or the bytes of its netCDF file from a worker) atomically."""
        from tilted.diagnostics.arviz import NETCDF_ENGINE

        if isinstance(result, bytes):
            return atomic_write(self.file(task), lambda p: p.write_bytes(result))
        return atomic_write(self.file(task), lambda p: result.to_netcdf(p, engine=NETCDF_ENGINE))
