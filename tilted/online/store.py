"""A folder that keeps every query of an online run as it is made, so an interrupted run resumes.

Layout: ``run.json`` (the settings that must match on resume) and one safetensors file per round,
``round_003.safetensors`` holding ``x`` (the batch, written before the oracle is called), ``y`` (the
values so far, NaN where a query failed or is not answered yet) and ``answered`` (which queries the
oracle has answered, successfully or not). The file is rewritten after every oracle call, to a
temporary name and renamed (atomic on POSIX), so a crash leaves either the old file or the new one.
On resume a round is taken as stored: its unanswered queries of the *same* batch are asked (sampling
is not redone), answered ones are never asked again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tilted.errors import ModelError


class Store:
    """Per-round queries and values in the folder ``path`` (module docstring)."""

    def __init__(self, path: str | os.PathLike, settings: dict):
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / "run.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
            if diff:
                raise ModelError(
                    f"the store {str(self.path)!r} holds a run with other settings {diff} (stored, given); "
                    "resume with the same settings or use another folder"
                )
        else:
            _atomic_text(meta, json.dumps(settings, indent=1))
        self.settings = settings

    def _file(self, r: int) -> Path:
        return self.path / f"round_{r:03d}.safetensors"

    def load(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(x, y, answered) of round r, or None if round r was never sampled."""
        from safetensors.torch import load_file

        file = self._file(r)
        if not file.exists():
            return None
        data = load_file(file)
        return data["x"], data["y"], data["answered"].bool()

    def save(self, r: int, x: torch.Tensor, y: torch.Tensor, answered: torch.Tensor) -> None:
        """Write round r: the batch x (B, *event), values y (B,), and the answered mask (B,)."""
        from safetensors.torch import save_file

        tensors = {"x": x.detach().cpu().contiguous(), "y": y.detach().cpu().to(torch.float64).contiguous()}
        tensors["answered"] = answered.detach().cpu().to(torch.uint8).contiguous()
        tmp = self._file(r).with_suffix(".tmp")
        save_file(tensors, tmp)
        os.replace(tmp, self._file(r))


def stored_seed(path: str | os.PathLike) -> int | None:
    """The seed of the run already in the folder ``path`` (None if there is none): a run started with
    ``seed=None`` resumes with the seed it drew."""
    meta = Path(path).expanduser() / "run.json"
    return json.loads(meta.read_text()).get("seed") if meta.exists() else None


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
