"""tilted batch: task expansion with stable ids, atomic results and manifest, resuming, retries, interruption."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tilted.batch import BatchError, Store, expand, load_batch
from tilted.cli import main
from tilted.diagnostics import load
from tilted.diagnostics.spec import SpecError

BASE = """
model = "tilted.diagnostics.toys:das_toy"
engine = "SMC"
baseline = 0
[model_options]
num_steps = 8
[engine_options]
num_particles = 32
"""


def write(tmp_path, text, name="batch.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_expansion_ids_are_stable_and_follow_the_contents():
    base = {"model": "m:f", "engine": "SMC", "engine_options": {"num_particles": 8}}
    sweep = {"seed": [0, 1], "engine_options": {"proposal": ["prior", "gradient"]}}
    tasks = expand({**base, "sweep": sweep, "tasks": [{"id": "mine", "seed": 5}]})
    assert [t.id for t in tasks][0] == "mine" and len(tasks) == 5
    again = expand({**base, "sweep": sweep})
    assert [t.id for t in tasks[1:]] == [t.id for t in again]  # same contents, same ids
    assert len({t.id for t in tasks}) == 5
    assert tasks[2].table["engine_options"] == {"num_particles": 8, "proposal": "gradient"}
    changed = expand({**base, "engine_options": {"num_particles": 9}, "sweep": sweep})
    assert not {t.id for t in changed} & {t.id for t in again}
    assert [t.seed for t in expand({**base, "seeds": [3, 4]})] == [3, 4]
    with pytest.raises(SpecError, match="appears twice"):
        expand({**base, "tasks": [{"id": "a", "seed": 0}, {"id": "a", "seed": 1}]})
    with pytest.raises(SpecError, match="unknown task keys"):
        expand({**base, "tasks": [{"sed": 0}]})
    with pytest.raises(SpecError, match="non-empty list"):
        expand({**base, "sweep": {"seed": 3}})


def test_batch_runs_saves_resumes_and_matches_tilted_run(tmp_path, capsys):
    spec = write(
        tmp_path,
        BASE
        + """
[[tasks]]
id = "gradient"
seed = 3
engine_options = { proposal = "gradient" }
[sweep]
seed = [0, 1]
model_options = { num_steps = [6, 8] }
""",
    )
    out = tmp_path / "out"
    assert main(["batch", str(spec), "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    assert len(manifest) == 5 and all(e["status"] == "done" for e in manifest.values())
    for tid, entry in manifest.items():
        dt = load(out / entry["file"])
        assert dt.attrs["task"] == tid
        lz = dt["sample_stats"]["log_marginal_likelihood"].values
        assert np.isclose(entry["log_evidence"], lz.mean())
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")}
    assert main(["batch", str(spec), "--out", str(out), "--no-progress"]) == 0  # nothing left to run
    assert "0 done, 0 failed, 5 already done" in capsys.readouterr().out
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")}
    # a plain `tilted run` of the same contents gives bitwise the same particles and log Ẑ
    text = BASE.replace('engine = "SMC"\n', 'engine = "SMC"\nseed = 3\n').replace(
        "num_particles = 32", 'num_particles = 32\nproposal = "gradient"'
    )
    single = write(tmp_path, text, "one.toml")
    assert main(["run", str(single), "--out", str(tmp_path / "one.nc"), "--no-progress"]) == 0
    a, b = load(tmp_path / "one.nc"), load(out / "gradient.nc")
    assert np.array_equal(a["particles"]["x"].values, b["particles"]["x"].values)
    assert np.array_equal(
        a["sample_stats"]["log_marginal_likelihood"].values, b["sample_stats"]["log_marginal_likelihood"].values
    )
    # a deleted result is rerun, the others are not; --dry-run says so first and runs nothing
    (out / "gradient.nc").unlink()
    capsys.readouterr()
    assert main(["batch", str(spec), "--out", str(out), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "5 tasks, 1 to run, 4 already done" in listed and "run   gradient  seed=3" in listed
    assert not (out / "gradient.nc").exists()
    main(["batch", str(spec), "--out", str(out), "--no-progress"])
    assert "1 done, 0 failed, 4 already done" in capsys.readouterr().out


def test_failures_are_retried_recorded_and_do_not_stop_the_others(tmp_path, capsys):
    flaky = tmp_path / "flaky.py"
    flaky.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from tilted.diagnostics.toys import das_toy
            COUNT = Path({str(tmp_path / "count")!r})

            def model(fail_times=0):
                n = int(COUNT.read_text()) if COUNT.exists() else 0
                COUNT.write_text(str(n + 1))
                if n < fail_times:
                    raise RuntimeError("transient failure")
                return das_toy(num_steps=6)
            """
        )
    )
    spec = write(
        tmp_path,
        """
        model = "flaky.py:model"
        engine = "SMC"
        baseline = 0
        [engine_options]
        num_particles = 16
        [[tasks]]
        id = "flaky"
        model_options = { fail_times = 1 }
        [[tasks]]
        id = "broken"
        engine_options = { num_particles = 0 }
        [[tasks]]
        id = "fine"
        """,
    )
    out = tmp_path / "out"
    assert main(["batch", str(spec), "--out", str(out), "--retries", "2", "--no-progress"]) == 1
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    assert manifest["flaky"]["status"] == "done" and manifest["flaky"]["attempts"] == 2
    assert manifest["broken"]["status"] == "failed" and manifest["broken"]["attempts"] == 3
    assert "num_particles must be a positive integer" in manifest["broken"]["error"]
    assert "Traceback (most recent call last)" in manifest["broken"]["traceback"]  # where it failed, for the morning
    assert "traceback" not in manifest["fine"] or manifest["fine"]["traceback"] is None
    assert manifest["fine"]["status"] == "done"
    assert not (out / "broken.nc").exists()
    assert "failed broken" in capsys.readouterr().out


def test_a_task_past_the_time_limit_is_stopped_and_the_others_go_on(tmp_path, capsys):
    (tmp_path / "slow.py").write_text(
        "import time\nfrom tilted.diagnostics.toys import das_toy\n\n\n"
        "def model(sleep=0):\n    time.sleep(sleep)\n    return das_toy(num_steps=5)\n"
    )
    spec = write(
        tmp_path,
        """
        model = "slow.py:model"
        engine = "SMC"
        baseline = 0
        [engine_options]
        num_particles = 8
        [[tasks]]
        id = "slow"
        model_options = { sleep = 600 }
        [[tasks]]
        id = "fine"
        """,
    )
    out = tmp_path / "out"
    start = time.perf_counter()
    args = ["batch", str(spec), "--out", str(out), "--timeout", "1", "--retries", "1", "--no-progress"]
    assert main(args) == 1 and time.perf_counter() - start < 60
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    assert manifest["slow"]["error"] == "TaskTimeout: ran longer than the time limit of 1 s"
    assert manifest["slow"]["attempts"] == 2 and manifest["fine"]["status"] == "done"
    assert main(["batch", str(spec), "--out", str(out), "--timeout", "0"]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err


def test_changed_options_under_an_id_are_refused(tmp_path, capsys):
    spec = write(tmp_path, BASE + '[[tasks]]\nid = "a"\nseed = 0\n')
    out = tmp_path / "out"
    assert main(["batch", str(spec), "--out", str(out), "--no-progress"]) == 0
    spec.write_text(spec.read_text().replace("num_particles = 32", "num_particles = 64"))
    assert main(["batch", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert "changed options under an existing id" in capsys.readouterr().err
    with pytest.raises(BatchError, match="changed options"):
        Store(out).check(load_batch(spec))
    (out / "manifest.json").write_text("not json")
    with pytest.raises(BatchError, match="not a batch manifest"):
        Store(out)


def test_sigterm_leaves_only_complete_files_and_the_rerun_finishes(tmp_path):
    """A scheduler's SIGTERM mid-batch: every file left is a whole, readable result, no temporary file remains,
    the manifest lists what finished, and the same command finishes the rest."""
    spec = write(
        tmp_path,
        BASE.replace("num_steps = 8", "num_steps = 100").replace("num_particles = 32", "num_particles = 2048")
        + "[sweep]\nseed = [0, 1, 2, 3, 4, 5]\n",
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tilted.cli", "batch", str(spec), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "manifest.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    files = sorted(out.glob("*.nc"))
    assert 1 <= len(manifest) < 6 and len(files) == len(manifest)
    for f in files:
        assert load(f)["particles"]["x"].shape[-2:] == (2048, 2)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((out / "manifest.json").read_text())["tasks"]) == 6


def test_the_documented_specification_expands_as_described():
    """docs/batch.md's TOML: 1 named task + 3 × 2 × 2 sweep tasks, with the merged options it states."""
    import re
    import tomllib

    text = Path(__file__).resolve().parents[1].joinpath("docs/batch.md").read_text()
    block = re.findall(r"```toml\n(.*?)```", text, flags=re.S)[0]
    tasks = expand(tomllib.loads(block))
    assert len(tasks) == 13 and tasks[0].id == "gradient"
    assert tasks[0].table["engine_options"] == {"num_particles": 256, "proposal": "gradient"}
    assert {t.table["model_options"]["num_steps"] for t in tasks[1:]} == {20, 50}
    assert all(t.id.startswith("t-") for t in tasks[1:])


def test_batch_report_has_a_row_per_task_and_is_self_contained(tmp_path, capsys):
    spec = write(
        tmp_path,
        BASE
        + """
[sweep]
seed = [0]
engine_options = { proposal = ["prior", "gradient"] }
[[tasks]]
id = "broken"
engine_options = { num_particles = 0 }
""",
    )
    out = tmp_path / "out"
    assert main(["batch", str(spec), "--out", str(out), "--no-progress"]) == 1
    assert main(["report", str(out), "--out", str(tmp_path / "batch.html")]) == 0
    page = (tmp_path / "batch.html").read_text()
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    for tid in manifest:
        assert f"<code>{tid}</code>" in page
    assert "engine.proposal" in page and "&quot;gradient&quot;" in page  # the option that varies has a column
    assert "num_particles must be a positive integer" in page and "3 tasks: 2 done, 1 failed" in page
    assert page.count("<details") == 3 and "http" not in page  # a section per task, the failed one's traceback
    assert "Traceback (most recent call last)" in page
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert "not a folder written by `tilted batch`" in capsys.readouterr().err
