"""Notebook display (``_repr_html_``, short reprs) of results and diagnoses, and the progress-bar policy."""

import importlib.util
import io
import re
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pyro
import pytest
import torch
import tqdm

import tilted
import tilted._progress as progress
from tilted.diagnostics import Diagnosis, diagnose
from tilted.diagnostics.toys import linear_gaussian
from tilted.distributions import MaskedDiffusion, TabularSequences
from tilted.inference import DPS, SMC, Importance
from tilted.inference.result import log_evidence_text

MODEL = linear_gaussian(num_steps=6)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagnostics.md"


def masked_model():
    table = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    proc = MaskedDiffusion(data=TabularSequences(table), num_steps=4)

    def model():
        x = pyro.sample("x", proc)
        tilted.factor("r", lambda x: (x == 1).sum(-1).double(), x, temperature=1.0)

    return model


RESULTS = {
    "smc": lambda: SMC(MODEL, 32, num_runs=3, proposal="gradient", progress=False).run(seed=0),
    "importance": lambda: Importance(MODEL, 32, progress=False).run(seed=1),
    "dps": lambda: DPS(MODEL, 16, progress=False).run(seed=2),
    "masked": lambda: SMC(masked_model(), 32, num_runs=2, progress=False).run(seed=3),
}


@pytest.fixture(scope="module", params=list(RESULTS))
def result(request):
    return RESULTS[request.param]()


def _image_bytes(html: str) -> int:
    return sum(len(b) * 3 // 4 for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html))


def test_summary_html_shows_the_numbers_of_the_result(result):
    html = result._repr_html_()
    R = result.log_weights.shape[0] if result.batched else 1
    N = result.num_particles
    assert result.config["engine"] in html and f"{N} × {R}" in html
    z = result.log_evidence.reshape(-1).double()
    if torch.isnan(z).all():  # DPS: no evidence, said plainly
        assert "none (an approximate engine" in html and "unweighted particles" in html
    elif R == 1:
        assert f"{float(z[0]):.4g} (one run: no standard error" in html
        assert f"final {float(result.ess.min()):.1f} of {N}" in html
    else:
        assert f"{float(z.mean()):.4g} ± {float(z.std() / R**0.5):.2g} (mean ± s.e. over {R} runs)" in html
        assert f"final {float(result.ess.min()):.1f} of {N}" in html
        assert f"min over steps {float(result.trace.ess.min()):.1f}" in html
    for v in diagnose(result):  # every verdict with its status and finding
        assert f"<code>{v.name}</code>" in html and v.status in html
    assert html.count("<img") == 1 and 0 < _image_bytes(html) < 6000  # the ESS/λ plot, a few KB
    assert "http" not in html and html.startswith('<div class="tilted-summary">')
    assert ".tilted-summary table{" in html and "body{" not in html  # styles scoped to the summary


def test_diagnosis_displays_the_same_summary_and_reprs_are_one_short_line(result):
    diagnosis = diagnose(result)
    assert diagnosis._repr_html_() == result._repr_html_()
    by_hand = Diagnosis(list(diagnosis))  # no DataTree: the verdicts alone
    html = by_hand._repr_html_()
    assert "<img" not in html and all(f"<code>{v.name}</code>" in html for v in diagnosis)
    for text in (repr(result), repr(diagnosis)):
        assert "\n" not in text and len(text) < 260
    assert repr(result).startswith(f"Result({result.config['engine']}: ") and f"× {result.num_particles} " in repr(
        result
    )
    assert repr(diagnosis).startswith(f"Diagnosis(ok={diagnosis.ok}: {len(diagnosis)} verdicts")
    assert str(diagnosis).startswith("diagnostic")  # print() is still the table


def test_a_result_without_a_trace_displays():
    res = replace(RESULTS["smc"](), trace=None, config={"engine": "Guidance"})
    html = res._repr_html_()
    assert "no per-step trace" in html and "<img" not in html and "Guidance" in html
    assert repr(res).endswith("; no per-step trace)")


def test_the_notebook_example_of_the_docs_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    block = next(b for b in blocks if "_repr_html_()" in b)
    namespace = {}
    exec(compile(block, "docs/diagnostics.md", "exec"), namespace)  # noqa: S102
    assert capsys.readouterr().out.startswith("Result(SMC: 2 runs × 64 particles")


def test_log_evidence_text_per_group_and_runs():
    z = torch.tensor([1.0, 2.0, 3.0, 4.0])  # runs r = m·P + p: group 0 holds 1, 3 and group 1 holds 2, 4
    assert log_evidence_text(z) == "2.5 ± 0.65 (mean ± s.e. over 4 runs)"
    assert log_evidence_text(z, groups=2) == "group 0: 2 ± 1; group 1: 3 ± 1 (mean ± s.e. over 2 runs of each group)"
    assert log_evidence_text(torch.tensor(0.5)).startswith("0.5 (one run: no standard error")
    assert log_evidence_text(torch.full((3,), float("nan"))).startswith("none")


# -- progress bars ----------------------------------------------------------------------------------
def test_without_ipywidgets_the_bar_is_plain_tqdm_and_nothing_warns(monkeypatch):
    if importlib.util.find_spec("ipywidgets") is not None:
        pytest.skip("ipywidgets is installed here")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert progress.bar_class() is tqdm.std.tqdm  # not in a kernel
        monkeypatch.setattr(progress, "in_notebook", lambda: True)
        assert progress.bar_class() is tqdm.std.tqdm  # a kernel without ipywidgets
        for progress_ in (None, True, False):
            with progress.progress_bar(range(3), progress=progress_, file=io.StringIO()) as bar:
                list(bar)


def test_log_files_get_fewer_refreshes_and_keep_the_last_line():
    log = io.StringIO()
    bar = progress.progress_bar(range(3), progress=True, file=log, leave=False, desc="SMC")
    assert bar.mininterval == progress.LOG_INTERVAL and bar.leave
    list(bar)
    bar.close()
    assert log.getvalue().endswith("\n") and "SMC: 100%" in log.getvalue().split("\r")[-1]


ENGINES = {
    "SMC": lambda p: SMC(MODEL, 8, progress=p),
    "DPS": lambda p: DPS(MODEL, 4, progress=p),
    "Importance": lambda p: Importance(MODEL, 8, progress=p),
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_default_progress_shows_a_bar_on_long_runs_only(name, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY", 0.0)  # every run counts as long
    ENGINES[name](None).run(seed=0)
    err = capsys.readouterr().err
    assert err.lstrip("\r").startswith(f"{name}: ") and "6/6" in err
    ENGINES[name](False).run(seed=0)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "DELAY", 600.0)  # no run counts as long
    ENGINES[name](None).run(seed=0)
    assert capsys.readouterr().err == ""
    ENGINES[name](True).run(seed=0)
    assert "6/6" in capsys.readouterr().err


def test_importing_tilted_in_a_kernel_without_ipywidgets_does_not_warn():
    """tqdm.auto (which pyro imports) warns "IProgress not found" when ipykernel.zmqshell is loaded."""
    pytest.importorskip("ipykernel")
    code = (
        "import warnings, ipykernel.zmqshell\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import tilted, tilted.inference, tilted.online\n"
        "print([str(x.message) for x in w if 'tqdm' in type(x.message).__module__])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
