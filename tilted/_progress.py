"""Progress bars for every engine and loop: one policy, the right bar for where the code runs, no warnings.

``progress`` (every engine, :meth:`LearnedSoftValue.fit`, :func:`tilted.online.optimize`):

- ``False``: no bar.
- ``True``: a bar from the first step.
- ``None`` (default): a bar once the run has lasted :data:`DELAY` seconds ("long"): short runs
  (tests, docs, toys) print nothing, a run that takes a while always shows one, whatever the output
  is (tqdm's ``delay``).

The bar is the ipywidgets bar (``tqdm.notebook``) inside a Jupyter kernel when ipywidgets can be
imported, and otherwise the plain-text ``tqdm.std`` bar on stderr, which a terminal, a notebook
(which renders its carriage returns) and a log file all show; on a stream that is neither a terminal
nor a notebook (a log file) it refreshes at most every :data:`LOG_INTERVAL` seconds and keeps its
final state (``leave=True``).

Unlike ``tqdm.auto``, choosing never warns (no ``TqdmWarning: IProgress not found``), and unlike
tqdm's ``disable=None``, a bar is not hidden because stderr is not a terminal. pyro imports
``tqdm.auto`` (which warns in a kernel without ipywidgets); ``import tilted`` imports this module
before pyro, and this module imports ``tqdm.auto`` once with those warnings silenced.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable
from typing import Any

from tqdm.std import TqdmExperimentalWarning, TqdmWarning
from tqdm.std import tqdm as _plain

__all__ = ["DELAY", "LOG_INTERVAL", "bar_class", "in_notebook", "progress_bar"]

# tqdm.auto warns in a Jupyter kernel ("IProgress not found" without ipywidgets, "notebook mode" with
# them) when it is first imported; pyro imports it, so it is imported here first, quietly.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "IProgress not found", TqdmWarning)
    warnings.filterwarnings("ignore", "Using `tqdm.autonotebook.tqdm`", TqdmExperimentalWarning)
    import tqdm.auto  # noqa: F401

DELAY = 2.0  # seconds: with progress=None, a run shorter than this shows no bar
LOG_INTERVAL = 10.0  # seconds between refreshes on a stream that is not interactive (a log file)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (notebook, lab, VS Code, Colab), not in a Qt console or Spyder."""
    if "ipykernel.zmqshell" not in sys.modules or any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
        return isinstance(shell, sys.modules["ipykernel.zmqshell"].ZMQInteractiveShell)
    except (KeyError, AttributeError):
        return False


def bar_class() -> type[_plain]:
    """``tqdm.notebook.tqdm`` in a Jupyter kernel with ipywidgets importable, else ``tqdm.std.tqdm``."""
    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        try:
            from tqdm import notebook

            if notebook.IProgress is not None:
                return notebook.tqdm
        except Exception:  # a broken ipywidgets: fall back to text
            pass
    return _plain


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, progress: bool | None = None, **kwargs: Any) -> _plain:
    """A tqdm bar over ``iterable`` (or a manual one: ``total=``, ``.update``) following ``progress``.

    ``False``: disabled (every method is a no-op); ``True``: shown at once; ``None``: shown once the
    run has lasted :data:`DELAY` seconds. Other keywords go to tqdm (``desc``, ``total``, ``leave``, …).
    """
    if progress is not None and not progress:
        return _plain(iterable, disable=True, **kwargs)
    cls = bar_class()
    kwargs.setdefault("delay", 0.0 if progress else DELAY)
    if cls is _plain:
        stream = kwargs.setdefault("file", sys.stderr)
        if in_notebook():  # text in a notebook's output: a refresh a second keeps the saved output small
            kwargs.setdefault("mininterval", 1.0)
        elif not _isatty(stream):  # a log file: fewer refreshes, and keep the last state
            kwargs.setdefault("mininterval", LOG_INTERVAL)
            kwargs["leave"] = True
    return cls(iterable, disable=False, **kwargs)
