"""A self-contained HTML report of a result: verdicts, plots (embedded PNG), sensitivity, settings.

``write_report(result_or_datatree, "report.html")`` — or ``tilted report RESULT.nc --out
report.html`` — writes one HTML file with no external resources: the diagnostics table with
verdicts and rules (:func:`tilted.diagnostics.diagnose`), log Ẑ per run, the temperature
sensitivity (power-scaling, :func:`tilted.diagnostics.temperature_sensitivity`), every plot that
applies (:func:`tilted.diagnostics.figures`, as base64 PNG), the engine's settings, compute counts,
the DataTree layout and the versions of the packages that made it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from tilted.diagnostics.verdicts import Diagnosis, _as_datatree, diagnose

__all__ = ["render_report", "render_summary", "write_report"]

_CSS_TABLES = """
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f6f7} .pass{color:#1e8449;font-weight:600} .FAIL{color:#c0392b;font-weight:700}
.info{color:#7f8c8d} .badge{display:inline-block;padding:.25em .8em;border-radius:1em;color:#fff;
font-weight:700} .ok{background:#1e8449} .bad{background:#c0392b} .muted{color:#777}
"""
_CSS = (
    """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em} figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eee} figcaption{color:#555;font-size:.9em}
code,pre{background:#f7f7f7;font-size:.88em} pre{padding:.6em;overflow-x:auto}
"""
    + _CSS_TABLES
)
_CSS_SUMMARY = "figure{margin:.4em 0} figcaption{color:#555;font-size:.85em} p{margin:.4em 0}"
_SCOPE = "tilted-summary"  # the class of the notebook summary's <div>: its styles apply inside it only


def _scoped(css: str, scope: str) -> str:
    """Prefix every selector of a flat stylesheet (no @-rules) with ``scope``, for HTML inside a page."""
    rules = [r.split("{", 1) for r in css.replace("\n", " ").split("}") if r.strip()]
    return "".join(",".join(f"{scope} {s.strip()}" for s in sel.split(",")) + "{" + body + "}" for sel, body in rules)


_CAPTIONS = {
    "steps": "Kish ESS/N after every step (dots: resampled after that step) and the tempering λ_t of each "
    "factor. A step where ESS/N falls close to 0 is a weight collapse.",
    "weights": "The final normalised weights. A few weights far above 1/N (and a long right tail of log(N·w)) "
    "mean that the weighted estimates rest on few particles.",
    "genealogy": "Ancestral links between steps for run 0; in red the lineages of the final particles. "
    "Below: how many distinct ancestors the final particles have at each step (path degeneracy).",
    "rewards": "Each reward before the tilt (pretrained draws, or the final particles with weights ignored) "
    "and after (equally weighted posterior draws).",
}


def _png(fig, dpi: int = 85, colors: int | None = None) -> str:
    """The figure as base64 PNG; ``colors``: a palette of that many colours (a few KB for a line plot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if colors is not None:
        from PIL import Image  # a dependency of matplotlib

        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors)
        buf = io.BytesIO()
        image.save(buf, format="png", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(name: str, fig, caption: str, dpi: int = 85, colors: int | None = None) -> str:
    """A ``<figure>`` with the plot as an embedded base64 PNG and its caption."""
    return (
        f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{_png(fig, dpi, colors)}">'
        f"<figcaption><b>{_e(name)}</b>: {_e(caption)}</figcaption></figure>"
    )


def _e(x) -> str:
    return html.escape(str(x))


def _num(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "–"
    if isinstance(x, int | np.integer) or float(x).is_integer() and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.4g}"


def _table(rows, head=None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _verdicts_html(diagnosis: Diagnosis, compact: bool = False) -> str:
    """The verdicts as a table; ``compact``: only diagnostic, verdict and finding."""
    rows = [
        (
            f"<code>{_e(v.name)}</code>",
            f'<span class="{v.status}">{v.status}</span>',
            _num(v.value),
            _num(v.threshold),
            _e(v.message),
            f'<span class="muted">{_e(v.rule)}</span>',
        )
        for v in diagnosis
    ]
    if compact:
        return _table([(r[0], r[1], r[4]) for r in rows], ["diagnostic", "verdict", "finding"])
    return _table(rows, ["diagnostic", "verdict", "value", "threshold", "finding", "rule"])


def _badge(diagnosis: Diagnosis) -> str:
    if diagnosis.ok:
        return '<span class="badge ok">trust: all checks passed</span>'
    return f'<span class="badge bad">do not trust: {len(diagnosis.failed)} check(s) failed</span>'


def _sensitivity_html(dt: xr.DataTree, max_elements: int = 64) -> str:
    from tilted.diagnostics.arviz import temperature_sensitivity

    if "log_likelihood" not in dt.children:
        return "<p class='muted'>No log_likelihood group (temperatures unknown): sensitivity not computed.</p>"
    post = dt["posterior"]
    names = [n for n, v in post.data_vars.items() if math.prod(v.shape[2:]) <= max_elements]
    skipped = [n for n in post.data_vars if n not in names]
    factors = list(dt["log_likelihood"].data_vars)
    rows = []
    for factor in [None] if len(factors) == 1 else [None, *factors]:
        label = "all factors" if factor is None else f"factor {factor}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                ds = temperature_sensitivity(dt, factor=factor, var_names=names)
        except Exception as exc:  # psense fails on constant log-factors, too few draws, …
            rows.append((_e(label), "–", f"<span class='muted'>not computed: {_e(exc)}</span>"))
            continue
        for name, da in ds.data_vars.items():
            vals = np.asarray(da.values, dtype=np.float64).ravel()
            if vals.size <= 8:
                coords = [
                    ", ".join(str(da[d].values[i]) for d, i in zip(da.dims, np.unravel_index(k, da.shape), strict=True))
                    for k in range(vals.size)
                ]
                text = "; ".join(f"[{c}] {v:.3f}" if c else f"{v:.3f}" for c, v in zip(coords, vals, strict=True))
            else:
                text = f"max {np.nanmax(vals):.3f}, mean {np.nanmean(vals):.3f} over {vals.size} elements"
            rows.append((_e(label), f"<code>{_e(name)}</code>", _e(text)))
    note = (
        "<p>Power-scaling sensitivity (arviz-stats <code>psense</code>, group <code>likelihood</code>; "
        "Kallioinen et al. 2024): how much each quantity's tilted distribution moves when the factor's "
        "1/α is scaled by 0.99 and 1.01. Values below 0.05 mean the tilt at this temperature barely "
        "moves that quantity; large values mean the answer depends strongly on α.</p>"
    )
    if skipped:
        note += f"<p class='muted'>Not assessed (more than {max_elements} elements): {_e(', '.join(skipped))}.</p>"
    return note + _table(rows, ["power-scaled", "variable", "sensitivity"])


def _evidence_html(dt: xr.DataTree) -> str:
    lz = dt["sample_stats"]["log_marginal_likelihood"].values
    ess = dt["sample_stats"]["ess"].values
    N = dt["particles"].sizes["particle"]
    rows = [(str(i), _num(float(z)), f"{e:.1f} / {N}") for i, (z, e) in enumerate(zip(lz, ess, strict=True))][:50]
    text = ""
    if np.isnan(lz).all():
        return (
            f"<p>{_e(dt.attrs.get('engine', 'This engine'))} gives no evidence estimate (an approximate sampler "
            "with unweighted particles).</p>"
        )
    if len(lz) > 1:
        from tilted.diagnostics.arviz import log_mean_exp

        text = (
            f"<p>Pooled over {len(lz)} runs: log of the mean Ẑ = <b>{log_mean_exp(lz):.4g}</b>; "
            f"mean log Ẑ = {lz.mean():.4g}, standard deviation {lz.std(ddof=1):.3g}.</p>"
        )
    more = "<p class='muted'>(first 50 runs)</p>" if len(lz) > 50 else ""
    return text + _table(rows, ["run", "log Ẑ", "final ESS"]) + more


def _layout_html(dt: xr.DataTree) -> str:
    rows = []
    for node in dt.subtree:
        if node is dt:
            continue
        for name, var in node.data_vars.items():
            dims = ", ".join(f"{d}: {n}" for d, n in zip(var.dims, var.shape, strict=True))
            rows.append((f"<code>{_e(node.name)}</code>", f"<code>{_e(name)}</code>", _e(dims), _e(var.dtype)))
    return _table(rows, ["group", "variable", "dimensions", "dtype"])


def _json_table(text: str) -> str:
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return f"<pre>{_e(text)}</pre>"
    if not isinstance(obj, dict):
        return f"<pre>{_e(text)}</pre>"
    return _table([(f"<code>{_e(k)}</code>", _e(json.dumps(v))) for k, v in obj.items()], ["setting", "value"])


def _seed_text(attrs) -> str:
    seeds = json.loads(attrs.get("config", "{}")).get("seeds")
    return f"seeds {_e(seeds)}" if seeds else f"seed {_e(attrs.get('seed', 'null'))}"


def render_report(data, *, title: str | None = None, diagnosis: Diagnosis | None = None) -> str:
    """The HTML report of a result or its DataTree, as one self-contained string."""
    from tilted.diagnostics.plots import figures

    dt = _as_datatree(data)
    diagnosis = diagnosis if diagnosis is not None else diagnose(dt)
    a = dt.attrs
    engine, site = a.get("engine", "?"), a.get("site", "?")
    title = title or f"tilted report: {engine} on site {site!r}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_badge(diagnosis)}</p>",
        f"<p class='muted'>{_e(a.get('num_runs', '?'))} run(s) × {_e(a.get('num_particles', '?'))} particles; "
        f"factors {_e(', '.join(json.loads(a.get('factors', '[]'))) or 'none')}; temperatures "
        f"{_e(a.get('temperatures', '{}'))}; {_seed_text(a)}.</p>",
        "<h2>Diagnostics</h2>",
        _verdicts_html(diagnosis),
        "<h2>Evidence</h2>",
        _evidence_html(dt),
        "<h2>Plots</h2>",
    ]
    for name, fig in figures(dt).items():
        base = name.split("[")[0]
        caption = _CAPTIONS.get(base, "")
        if base == "samples":
            caption = "Pretrained draws (grey), final particles sized by weight, and posterior draws (red)."
        elif base == "images":
            caption = "Pretrained draws (when known) and distinct tilted draws."
        parts.append(_figure(name, fig, caption))
    parts += [
        "<h2>Sensitivity to the temperature</h2>",
        _sensitivity_html(dt),
        "<h2>Settings</h2>",
        _json_table(a.get("config", "{}")),
        "<h3>Compute</h3>",
        _json_table(a.get("counts", "{}")),
    ]
    if "spec" in a:
        parts.append(f"<h3>Specification ({_e(a.get('spec_path', ''))})</h3><pre>{_e(a['spec'])}</pre>")
    versions = [(k.removeprefix("version_"), _e(v)) for k, v in a.items() if k.startswith("version_")]
    parts += [
        "<h2>Versions</h2>",
        _table(versions, ["package", "version"]),
        "<h2>Data layout (ArviZ DataTree)</h2>",
        _layout_html(dt),
        "</body></html>",
    ]
    return "\n".join(parts)


def render_summary(data, *, diagnosis: Diagnosis | None = None) -> str:
    """A compact HTML summary of a result or its DataTree: what ``Result`` and ``Diagnosis`` show in a notebook.

    Engine, N particles × R runs, log Ẑ (mean ± s.e. sd/√R over runs; "none" for approximate
    engines), the final Kish ESS and its minimum over the steps, the verdicts of :func:`diagnose`
    (pass/FAIL with the finding), and ESS/N and λ_t per step as a small embedded PNG. One
    ``<div>`` with scoped styles and no external resources; the full report is :func:`render_report`.
    """
    from tilted.diagnostics.plots import plot_steps
    from tilted.inference.result import log_evidence_text

    dt = _as_datatree(data)
    diagnosis = diagnosis if diagnosis is not None else diagnose(dt)
    a = dt.attrs
    config = json.loads(a.get("config", "{}"))
    lz = dt["sample_stats"]["log_marginal_likelihood"].values
    R, N = dt["particles"]["log_weight"].shape
    ess = dt["sample_stats"]["ess"].values
    if np.isnan(lz).all():
        ess_text = "– (unweighted particles)"
    else:
        ess_text = f"final {ess.min():.1f} of {N}" + (f" (worst run; mean {ess.mean():.1f})" if R > 1 else "")
        if "steps" in dt.children:
            steps = dt["steps"]["ess"].values  # (R, S)
            run, step = np.unravel_index(int(np.argmin(steps)), steps.shape)
            where = f"step {step}" + (f", run {run}" if R > 1 else "")
            ess_text += f"; min over steps {steps.min():.1f} ({where})"
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in json.loads(a.get("counts", "{}")).items() if v)
    rows = [
        ("engine", f"<b>{_e(a.get('engine', '?'))}</b> on site <code>{_e(a.get('site', '?'))}</code>"),
        ("particles × runs", f"{N} × {R}"),
        ("log Ẑ", _e(log_evidence_text(lz, int(config.get("groups", 1))))),
        ("ESS", _e(ess_text)),
        ("compute", _e(counts or "–")),
    ]
    if "steps" in dt.children:
        caption = "ESS/N and the tempering λ_t of each factor after every step"
        plot = _figure("steps", plot_steps(dt, compact=True), caption, dpi=100, colors=32)
    else:
        plot = "<p class='muted'>no per-step trace: no ESS/λ plot</p>"
    return "\n".join(
        [
            f'<div class="{_SCOPE}"><style>{_scoped(_CSS_TABLES + _CSS_SUMMARY, "." + _SCOPE)}</style>',
            f"<p>{_badge(diagnosis)}</p>",
            _table(rows),
            plot,
            _verdicts_html(diagnosis, compact=True),
            "<p class='muted'>Full report: <code>tilted.diagnostics.write_report(result, \"report.html\")</code>.</p>",
            "</div>",
        ]
    )


def write_report(data, path: str | Path, **kwargs) -> Path:
    """Write :func:`render_report` of a result or DataTree to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(data, **kwargs), encoding="utf-8")
    return path
