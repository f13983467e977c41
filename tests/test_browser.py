"""The HTML reports opened in a real browser (headless Chromium): no console or load errors, every figure
decoded and non-blank, nothing fetched from outside the file.

``./run test`` installs Chromium with apt-get when it is missing and it can (root); ``.ci/run`` sets
``TILTED_REQUIRE_BROWSER=1`` so that a missing browser fails CI instead of skipping these tests.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tilted.diagnostics import to_datatree
from tilted.diagnostics.report import render_report
from tilted.diagnostics.toys import das_toy
from tilted.inference import SMC, Importance

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

#: prepended to a copy of the page: records console errors, uncaught exceptions and failed resource loads,
#: and after load writes them, with each image's decoded width and height, into <body data-probe>
PROBE = """<script>
window.__errors = [];
const __error = console.error;
console.error = (...a) => { window.__errors.push("console.error: " + a.join(" ")); __error(...a); };
window.addEventListener("error", e => window.__errors.push(
  e.message ? "uncaught: " + e.message : "failed to load: " + (e.target.src || e.target.href)), true);
window.addEventListener("load", () => document.body.setAttribute("data-probe", JSON.stringify({
  errors: window.__errors, images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight])})));
</script>"""


@pytest.fixture(scope="module")
def browser():
    if BROWSER is None:
        if os.environ.get("TILTED_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium: `./run test` installs it with apt-get (as root); install the `chromium` package")
        pytest.skip("no Chromium (./run test installs it where it can)")
    return BROWSER


def open_page(browser, html: str, folder) -> tuple[dict, np.ndarray, list[str]]:
    """Load ``html`` (with the probe) in headless Chromium → (probe record, screenshot RGB, console lines)."""
    page = folder / "page.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1) if "<head>" in html else PROBE + html)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90)
    shot = folder / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars", page.as_uri()],
        capture_output=True,
        timeout=90,
        check=True,
    )
    (probe,) = re.findall(r'data-probe="([^"]*)"', dom.stdout)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    record = json.loads(probe.replace("&quot;", '"').replace("&amp;", "&"))
    return record, np.asarray(Image.open(shot).convert("RGB"), dtype=float), console


def embedded_images(html: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=float)
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    ]


def test_the_probe_catches_errors_broken_images_and_blank_pages(browser, tmp_path):
    """The checks below can fail: a console error, an exception, a broken image and a blank page are seen."""
    bad = (
        "<html><head></head><body><p>x</p><img src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom'); undefined_function();</script></body></html>"
    )
    record, shot, _ = open_page(browser, bad, tmp_path)
    assert any("boom" in e for e in record["errors"]) and any("uncaught" in e for e in record["errors"])
    assert any("failed to load" in e for e in record["errors"]) and record["images"] == [[0, 0]]
    _, blank, _ = open_page(browser, "<html><head></head><body></body></html>", tmp_path)
    assert (blank < 250).any(axis=-1).mean() < 0.001


def test_the_report_renders_in_a_browser_with_every_figure(browser, tmp_path):
    model = das_toy(num_steps=10)
    result = SMC(model, 128, num_runs=2, proposal="gradient").run(seed=0)
    baseline = Importance(model, 128).run(seed=1)
    html = render_report(to_datatree(result, baseline=baseline))
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", html)
    figures = embedded_images(html)
    assert len(figures) >= 3
    for fig in figures:  # each figure drawn: a good share of non-white pixels, not one flat colour
        assert fig.std() > 10 and (fig < 240).any(axis=-1).mean() > 0.01
    record, shot, console = open_page(browser, html, tmp_path)
    assert record["errors"] == [], record["errors"]
    assert not [line for line in console if "Uncaught" in line or "Failed to load" in line], console
    assert len(record["images"]) == len(figures) and all(w > 100 and h > 100 for w, h in record["images"])
    inked = (shot < 240).any(axis=-1)
    assert shot.std() > 20 and inked.mean() > 0.05  # the screenshot shows tables and figures, not a blank page


def test_the_batch_report_renders_in_a_browser(browser, tmp_path):
    from tilted.batch import Store, expand, run_local
    from tilted.batch.report import render_batch_report

    table = {
        "model": "tilted.diagnostics.toys:das_toy",
        "engine": "SMC",
        "baseline": 0,
        "model_options": {"num_steps": 5},
        "engine_options": {"num_particles": 16},
        "sweep": {"seed": [0, 1]},
    }
    run_local(expand(table), Store(tmp_path / "runs"), progress=False)
    html = render_batch_report(tmp_path / "runs")
    record, shot, _ = open_page(browser, html, tmp_path)
    assert record["errors"] == [] and (shot < 240).any(axis=-1).mean() > 0.002  # text and table drawn (blank: < 0.001)
