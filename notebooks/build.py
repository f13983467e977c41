"""Build the research notebooks: percent-format sources in notebooks/src → executed .ipynb with outputs.

A source ``src/NN_name.py`` is a sequence of cells, each opened by a line ``# %%`` (code) or
``# %% [markdown]`` (markdown, every line a comment ``# ...``). The notebook is written to
``notebooks/NN_name.ipynb`` after a top-to-bottom run in a fresh ``python3`` kernel, so the
committed notebooks carry their outputs (figures included)::

    .venv/bin/python notebooks/build.py              # every notebook
    .venv/bin/python notebooks/build.py 02 04        # the ones whose names start with 02 or 04
    .venv/bin/python notebooks/build.py --no-execute # sources only (no outputs)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = HERE / "src"
KERNEL = "python3"
CELL_TIMEOUT = 300  # seconds per cell


def kernel_environment() -> None:
    """Offline, one thread, and inline figures whatever MPLBACKEND the caller set (the kernel inherits os.environ)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # small tensors: threads only contend (as in tests/conftest.py)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.pop("MPLBACKEND", None)


def parse_cells(text: str) -> list[tuple[str, str]]:
    """(kind, source) for every ``# %%`` cell of a percent-format text; kind is "code" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            cells.append(("markdown" if "[markdown]" in line else "code", []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
        source = "\n".join(lines).strip("\n")
        if source.strip():
            out.append((kind, source))
    return out


def to_notebook(source: Path) -> nbformat.NotebookNode:
    """The unexecuted notebook of a percent-format source file."""
    make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    cells = [make[kind](text) for kind, text in parse_cells(source.read_text(encoding="utf-8"))]
    metadata = {
        "kernelspec": {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    nb = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    for i, cell in enumerate(nb.cells):  # stable ids: rebuilding does not churn the diff
        cell["id"] = f"{source.stem[:2]}-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel started in the repository root; raises on the first error."""
    kernel_environment()
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(ROOT)}}, record_timing=False
    )
    client.execute()
    return nb


def build(source: Path, run: bool = True) -> tuple[Path, float]:
    """Convert (and execute) one source; write notebooks/<stem>.ipynb; return its path and run time."""
    nb = to_notebook(source)
    start = time.perf_counter()
    if run:
        execute(nb)
    seconds = time.perf_counter() - start
    path = HERE / f"{source.stem}.ipynb"
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="prefixes of the sources to build (default: all)")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    args = parser.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if args.names:
        sources = [s for s in sources if any(s.stem.startswith(n) for n in args.names)]
    if not sources:
        sys.exit("no notebook sources matched")
    for source in sources:
        path, seconds = build(source, run=not args.no_execute)
        print(f"{path.relative_to(ROOT)}  {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
