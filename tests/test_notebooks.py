"""The research notebooks (notebooks/*.ipynb) run top to bottom in a fresh kernel, and their committed outputs are current.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (this interpreter: jupyter_client starts a
kernelspec whose argv[0] is ``python`` with ``sys.executable``; checked from inside the kernel), started in the
repository root, offline (``HF_HUB_OFFLINE=1``) and with the inline matplotlib backend (``MPLBACKEND`` removed).
A cell that raises fails the test, and so does a failing ``assert`` cell of the notebook. Committed notebooks must
be the built ones: sources equal to ``notebooks/src`` (``python notebooks/build.py`` rebuilds them), every code cell
executed in order, and outputs wherever a fresh run has them (figures included).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds per cell; a whole notebook takes 10–30 s on 2 CPU cores


def _build_module():
    spec = importlib.util.spec_from_file_location("notebooks_build", ROOT / "notebooks" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _build_module()


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _shows(cell) -> bool:
    """Whether the cell shows anything but stderr (warnings and progress bars vary with the machine)."""
    return any(not (o.output_type == "stream" and o.name == "stderr") for o in cell.get("outputs", []))


@pytest.fixture
def kernel_env(monkeypatch):
    """Offline and inline figures for the kernel (it inherits this process's environment)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, [p.name for p in NOTEBOOKS]
    sources = {p.stem for p in (ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py")}
    assert sources == {p.stem for p in NOTEBOOKS}, "every source in notebooks/src has its built notebook and back"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_built_and_executed(path):
    """Sources match notebooks/src; every code cell ran, in order, in one kernel; no error; a figure and markdown."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    fresh = build.to_notebook(ROOT / "notebooks" / "src" / f"{path.stem}.py")
    assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in fresh.cells], (
        f"{path.name} is stale: rebuild it with `python notebooks/build.py {path.stem[:2]}`"
    )
    assert any(c.cell_type == "markdown" for c in nb.cells)
    code = _code(nb)
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{path.name}: code cells not executed top to bottom in one fresh kernel (rebuild it)"
    )
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any(_has_image(c) for c in code), f"{path.name} has no figure output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, kernel_env):
    """A fresh run succeeds, shows a figure, and has outputs exactly where the committed notebook has them."""
    committed = nbformat.read(path, as_version=4)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
        record_timing=False,
    )
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable, "the kernel is not this interpreter"
    ran = _code(nb)[:-1]
    assert any(_has_image(c) for c in ran), f"{path.name} shows no figure when run"
    for old, new in zip(_code(committed), ran, strict=True):
        assert _shows(old) == _shows(new) and _has_image(old) == _has_image(new), (
            f"{path.name}: committed outputs of the cell starting {new.source.splitlines()[0]!r} are stale; rebuild"
        )
