"""Every fenced block of README.md and docs/*.md: Python blocks run as written, TOML blocks parse.

The Python blocks of a page run in order in one namespace (like a notebook), offline
(``HF_HUB_OFFLINE=1``), with matplotlib's Agg backend, in a temporary working directory. A block is
exempt when the line before it is ``<!-- no-run: REASON -->``; the reason says what the block needs that a
test machine lacks (a GPU, downloaded weights, the network), and such blocks still have to compile.
Where a block states a number, the page's check below compares it with what the block computes.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NO_RUN = re.compile(r"<!--\s*no-run:(.*?)-->")
PYTHON = ("python", "py")


@dataclass(frozen=True)
class Block:
    """One fenced block: its page, the line of its opening fence, its language, its code and exemption."""

    page: str
    line: int
    lang: str
    code: str
    no_run: str | None  # the exemption's reason; None: the block runs

    @property
    def python(self) -> bool:
        return self.lang in PYTHON


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        marker = NO_RUN.fullmatch(lines[line - 2].strip()) if line > 1 else None
        found.append(Block(page, line, m.group(1), m.group(2), marker.group(1).strip() if marker else None))
    return found


def execute(block: Block, namespace: dict) -> None:
    """Run ``block`` in ``namespace``; tracebacks give the page's own line numbers."""
    code = compile("\n" * block.line + block.code, str(ROOT / block.page), "exec")
    exec(code, namespace)  # noqa: S102


def run_block(page: str, needle: str, replacements) -> dict:
    """Run the one Python block of ``page`` that contains ``needle``, each (old, new) of ``replacements``
    substituted (every old must occur), in a fresh namespace; return it. Tests of exempted blocks use it to
    point a block at tiny weights on the CPU."""
    (block,) = [b for b in blocks(page) if b.python and needle in b.code]
    code = block.code
    for old, new in replacements:
        assert old in code, old
        code = code.replace(old, new)
    namespace = {"__name__": "__main__"}
    execute(replace(block, code=code), namespace)
    return namespace


# -- what the pages state, checked on what their blocks computed ---------------------------------------


def check_readme(ns: dict) -> None:
    from tilted.reference import tilt_mixture
    from tilted.rewards import Quadratic

    result = ns["result"]
    assert result.particles["x"].shape == (1024, 2) and result.log_weights.shape == (1024,)
    assert result.sample(1000)["x"].shape == (1000, 2) and torch.isfinite(result.log_evidence)
    log_z = ns["log_z"]
    exact = float(tilt_mixture(ns["data"], Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0]))), 1.0)[1])
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"log Ẑ = {log_z.mean():.2f} ± {log_z.std() / len(log_z) ** 0.5:.2f}; the exact log Z is {exact:.2f}" in text
    assert ns["threes"].shape == (16, 1, 8, 8)


def check_discrete(ns: dict) -> None:
    res = ns["res"]
    assert res.particles["x"].shape == (1024, 3) and res.particles["x"].dtype == torch.long
    assert ns["tv"] < 0.15 and abs(float(res.log_evidence - ns["log_z"])) < 0.1


def check_engines(ns: dict) -> None:
    training = ns["value"].training
    assert training["validation_loss"] < training["constant_loss"]
    assert ns["result"].particles["x"].shape == (ns["result"].log_weights.shape[0], 16, 2)
    assert Path("grid_value.pt").stat().st_size > 0


def check_guidance(ns: dict) -> None:
    assert torch.isfinite(ns["exact"].log_evidence) and torch.isnan(ns["svdd"].log_evidence)
    assert ns["best"].particles["x"].shape == (4, 2) and ns["tokens"].shape == (32, 3)
    assert ns["tokens"].dtype == torch.long


def check_rewards(ns: dict) -> None:
    assert ns["result"].particles["x"].shape == (256, 2)


def check_modelling(ns: dict) -> None:
    log_z = ns["flow_result"].log_evidence
    assert abs(float(log_z.mean()) - ns["exact_log_z"]) < 3 * float(log_z.std()) / math.sqrt(len(log_z))


def check_diagnostics(ns: dict) -> None:
    assert ns["diagnosis"].ok and Path("report.html").stat().st_size > 50_000 and Path("result.nc").exists()


def check_reference(ns: dict) -> None:
    within = ns["within"]  # the last table: DDPM's within-mode variance deficit (0.275), DDIM's none (0.299)
    assert within[1.0] < 0.29 < within[0.0] < 0.31


def check_pretrained(ns: dict) -> None:
    from tilted.rewards import Symmetry

    images, classifier = ns["images"], ns["classifier"]  # 0s, more symmetric than real 0s (mean −0.19)
    assert images.shape == (4, 1, 8, 8) and (classifier(images).argmax(-1) == 0).all()
    assert float(Symmetry()(images).mean()) > -0.19


def check_online(ns: dict) -> None:
    assert float(ns["history"].mean()[-1]) > 0.4  # the last batch sits on the bump (prior mean value ≈ 0.067)


def check_search(ns: dict) -> None:
    result, capped, chains = ns["result"], ns["capped"], ns["chains"]
    assert result.num_particles == 1000 and result.counts.denoiser_calls <= 20_000
    assert capped.num_particles == 25 and capped.counts.reward_calls <= 500
    assert chains.particles["x"].shape == (4, 15, 2) and chains.sweeps.renewal_rate.shape == (21, 4)
    assert all(-0.5 < v <= 0 for v in ns["best"].values()), ns["best"]
    draws = ns["draws"]
    assert draws.particles["x"].shape == (64, 2) and draws.counts.denoiser_calls <= 2_000


def check_sequences(ns: dict) -> None:
    steered, hydrophobic, data = ns["steered"], ns["hydrophobic"], ns["data"]  # data: the model's own draws
    tilted_mean = float((steered.weights * hydrophobic(steered.particles["x"])).sum())
    assert tilted_mean > float(hydrophobic(data).mean()) + 0.1
    assert ns["searched"].particles["x"].shape == (16, 16)


CHECKS = {
    "README.md": check_readme,
    "docs/diagnostics.md": check_diagnostics,
    "docs/discrete.md": check_discrete,
    "docs/engines.md": check_engines,
    "docs/guidance.md": check_guidance,
    "docs/modelling.md": check_modelling,
    "docs/online.md": check_online,
    "docs/pretrained.md": check_pretrained,
    "docs/reference.md": check_reference,
    "docs/rewards.md": check_rewards,
    "docs/search.md": check_search,
    "docs/sequences.md": check_sequences,
}
RUNNABLE = [p for p in PAGES if any(b.python and b.no_run is None for b in blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE)
def test_page_runs_as_written(page, tmp_path, monkeypatch):
    """The page's Python blocks, in order, in one namespace; then what the page states about their results."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    matplotlib.use("Agg")
    torch.manual_seed(0)
    namespace = {"__name__": "__main__"}
    for block in blocks(page):
        if block.python and block.no_run is None:
            try:
                execute(block, namespace)
            except Exception as error:
                raise AssertionError(f"{page}: the block at line {block.line} failed: {error!r}") from error
    CHECKS.get(page, lambda ns: None)(namespace)


def test_every_page_with_python_is_checked():
    assert set(CHECKS) <= set(RUNNABLE) and len(RUNNABLE) >= 10, RUNNABLE


@pytest.mark.parametrize("page", PAGES)
def test_blocks_are_well_formed(page):
    """Every fence names its language; Python blocks (exempt or not) compile, TOML blocks parse; every
    exemption sits right above a Python block and gives a reason of what it needs."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = blocks(page)
    assert text.count("\n```") + text.startswith("```") == 2 * len(found), f"{page}: an unmatched fence"
    for block in found:
        where = f"{page}:{block.line}"
        assert block.lang, f"{where}: a fence without a language (python, toml, bash or text)"
        if block.python:
            compile(block.code, where, "exec")  # a signature or pseudo-code is ```text, not ```python
        if block.lang == "toml":
            tomllib.loads(block.code)
        if block.no_run is not None:
            assert block.python, f"{where}: a no-run marker above a {block.lang} block"
            assert re.match(r"needs \w", block.no_run), f"{where}: no-run needs a reason ('needs a GPU …')"
    markers = [i + 2 for i, line in enumerate(text.splitlines()) if "no-run" in line]
    assert markers == [b.line for b in found if b.no_run is not None], f"{page}: a malformed no-run marker"
