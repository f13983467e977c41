"""One self-contained HTML page over every task of a batch: ``tilted report DIR --out report.html``.

A table with a row per task of the manifest — id, status, seed, the options that differ between
tasks, log Ẑ (mean over runs), the final ESS, the overall verdict with the failed diagnostics, and
each reward's tilted mean — then one collapsible section per task with its verdict table
(:func:`tilted.diagnostics.diagnose`; the per-task plots are one ``tilted report DIR/<id>.nc`` away, so
a thousand-task page stays small). Failed tasks show their error, and a section with its traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from tilted.batch.store import MANIFEST, BatchError
from tilted.diagnostics.report import _CSS, _e, _num, _table, _verdicts_html


def _varying(entries: dict) -> list[tuple[str, str]]:
    """(table, option) pairs whose value differs between tasks (the rest is shared and shown once)."""
    seen: dict[tuple[str, str], set] = {}
    for entry in entries.values():
        for table in ("model_options", "engine_options"):
            for key, value in entry["contents"].get(table, {}).items():
                seen.setdefault((table, key), set()).add(json.dumps(value, sort_keys=True))
    return sorted(k for k, v in seen.items() if len(v) > 1)


def render_batch_report(folder: str | Path) -> str:
    """The HTML text of the batch report of ``folder`` (module docstring)."""
    from tilted.diagnostics.arviz import load
    from tilted.diagnostics.verdicts import diagnose

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise BatchError(f"{folder} has no {MANIFEST}: not a folder written by `tilted batch`")
    entries = json.loads(path.read_text())["tasks"]
    varying = _varying(entries)
    rows, sections, counts = [], [], {"done": 0, "failed": 0}
    for tid, entry in sorted(entries.items()):
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        opts = [_e(json.dumps(entry["contents"].get(t, {}).get(k))) for t, k in varying]
        if entry["status"] != "done" or not (folder / entry["file"]).exists():
            error = entry.get("error", "file missing")
            if entry.get("traceback"):
                sections.append(
                    f'<details id="{_e(tid)}"><summary><code>{_e(tid)}</code> — failed</summary>'
                    f"<pre>{_e(entry['traceback'])}</pre></details>"
                )
            rows.append(
                [
                    f'<a href="#{_e(tid)}"><code>{_e(tid)}</code></a>'
                    if entry.get("traceback")
                    else f"<code>{_e(tid)}</code>",
                    '<span class="FAIL">failed</span>',
                    _e(entry.get("seed")),
                    *opts,
                    "–",
                    "–",
                    _e(error[:120]),
                    "–",
                ]
            )
            continue
        dt = load(folder / entry["file"])
        diagnosis = diagnose(dt)
        ess = dt["sample_stats"]["ess"].values
        failed = ", ".join(v.name for v in diagnosis.failed) or "none"
        rewards = "; ".join(f"{_e(v.name[7:-1])} {_num(v.value)}" for v in diagnosis if v.name.startswith("reward["))
        verdict = f'<span class="{"pass" if diagnosis.ok else "FAIL"}">{"ok" if diagnosis.ok else "fail"}</span>'
        rows.append(
            [
                f'<a href="#{_e(tid)}"><code>{_e(tid)}</code></a>',
                verdict,
                _e(entry.get("seed")),
                *opts,
                _num(entry.get("log_evidence")),
                _num(float(ess.min())),
                _e(failed),
                rewards,
            ]
        )
        sections.append(
            f'<details id="{_e(tid)}"><summary><code>{_e(tid)}</code> — {"ok" if diagnosis.ok else "fail"}</summary>'
            f'{_verdicts_html(diagnosis)}<p class="muted">plots: <code>tilted report {_e(folder / entry["file"])} '
            "--out report.html</code></p></details>"
        )
    head = [
        "task",
        "verdict",
        "seed",
        *[f"{t.split('_')[0]}.{k}" for t, k in varying],
        "log Ẑ",
        "min ESS",
        "failed diagnostics",
        "tilted mean reward",
    ]
    summary = f"{len(entries)} tasks: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed"
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>batch {_e(folder.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Batch {_e(folder.name)}</h1><p>{_e(summary)}</p>{_table(rows, head)}"
        f"<h2>Tasks</h2>{''.join(sections)}</body></html>"
    )


def write_batch_report(folder: str | Path, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_batch_report(folder), encoding="utf-8")
    return out
