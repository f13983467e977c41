"""tilted batch --backend ray on a local Ray cluster: same files as the local backend, one model per worker,
dead workers replaced and retried, failures recorded, resources checked."""

import json
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tilted.batch import BatchError, Store, Workers, load_batch, run_ray
from tilted.cli import main
from tilted.diagnostics import load
from tilted.diagnostics.spec import SpecError

ray = pytest.importorskip("ray")


@pytest.fixture
def ray_tmp(monkeypatch):
    """Ray's temporary and log folders in a short-lived folder (socket paths must stay short)."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", folder)
    yield folder
    if ray.is_initialized():
        ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def factory_file(tmp_path):
    """A model factory that logs each call (pid) and can kill its worker the first time it is called."""
    path = tmp_path / "factory.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import os
            import time
            from pathlib import Path
            from tilted.diagnostics.toys import das_toy
            LOG = Path({str(tmp_path / "calls.log")!r})
            CRASHED = Path({str(tmp_path / "crashed")!r})

            def model(num_steps=6, crash_once=False, sleep=0):
                time.sleep(sleep)
                with LOG.open("a") as f:
                    f.write(f"{{os.getpid()}} {{num_steps}}\\n")
                if crash_once and not CRASHED.exists():
                    CRASHED.write_text("x")
                    os._exit(1)  # the worker process dies mid-task
                return das_toy(num_steps=num_steps)
            """
        )
    )
    return path


SPEC = """
model = "factory.py:model"
engine = "SMC"
baseline = 0
[engine_options]
num_particles = 16
[sweep]
seed = [0, 1, 2, 3, 4]
model_options = { num_steps = [5, 6] }
"""


def calls(tmp_path):
    return [tuple(line.split()) for line in (tmp_path / "calls.log").read_text().splitlines()]


def test_ray_backend_writes_what_the_local_backend_writes_with_one_model_per_worker(tmp_path, ray_tmp, capsys):
    factory_file(tmp_path)
    spec = tmp_path / "batch.toml"
    spec.write_text(SPEC)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["batch", str(spec), "--out", str(local), "--no-progress"]) == 0
    assert len(calls(tmp_path)) == 2  # local: each model built once, for its five tasks
    (tmp_path / "calls.log").unlink()
    assert main(["batch", str(spec), "--out", str(remote), "--backend", "ray", "--workers", "2", "--no-progress"]) == 0
    assert not ray.is_initialized()  # the cluster it started is stopped
    built = calls(tmp_path)
    pids = {pid for pid, _ in built}
    assert len(pids) <= 2 and str(os.getpid()) not in pids  # built in the workers, not in this process
    assert len(built) == len(set(built)) <= 4, built  # each worker builds each model once (tasks grouped by model)
    a = json.loads((local / "manifest.json").read_text())["tasks"]
    b = json.loads((remote / "manifest.json").read_text())["tasks"]
    assert set(a) == set(b) and len(a) == 10 and all(e["status"] == "done" for e in b.values())
    for tid in a:
        x, y = load(local / f"{tid}.nc"), load(remote / f"{tid}.nc")
        assert np.array_equal(x["particles"]["x"].values, y["particles"]["x"].values), tid
        lz = "log_marginal_likelihood"
        assert np.array_equal(x["sample_stats"][lz].values, y["sample_stats"][lz].values), tid
        assert a[tid]["log_evidence"] == b[tid]["log_evidence"]
    # resuming on Ray runs nothing; a deleted result is run again
    (remote / f"{tid}.nc").unlink()
    capsys.readouterr()
    assert main(["batch", str(spec), "--out", str(remote), "--backend", "ray", "--workers", "1", "--no-progress"]) == 0
    assert "1 done, 0 failed, 9 already done" in capsys.readouterr().out
    assert np.array_equal(load(remote / f"{tid}.nc")["particles"]["x"].values, x["particles"]["x"].values)


def test_a_dead_worker_is_replaced_and_its_task_retried_failures_are_recorded(tmp_path, ray_tmp):
    factory_file(tmp_path)
    spec = tmp_path / "batch.toml"
    spec.write_text(
        textwrap.dedent(
            """
            model = "factory.py:model"
            engine = "SMC"
            baseline = 0
            [engine_options]
            num_particles = 16
            [[tasks]]
            id = "crash"
            model_options = { crash_once = true }
            [[tasks]]
            id = "broken"
            engine_options = { num_particles = 0 }
            [[tasks]]
            id = "fine"
            seed = 1
            """
        )
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    store = Store(tmp_path / "out")
    summary = run_ray(load_batch(spec), store, retries=1, progress=False, workers=2)
    assert ray.is_initialized()  # a Ray it did not start is left running
    entries = json.loads((tmp_path / "out" / "manifest.json").read_text())["tasks"]
    assert entries["crash"]["status"] == "done" and entries["crash"]["attempts"] == 2
    assert entries["broken"]["status"] == "failed" and entries["broken"]["attempts"] == 2
    assert "num_particles must be a positive integer" in entries["broken"]["error"]  # the error, as locally
    remote = entries["broken"]["traceback"]  # the worker's traceback: files and lines, no terminal colours
    assert 'File "' in remote and ", line " in remote and "num_particles" in remote and "\x1b[" not in remote
    assert entries["fine"]["status"] == "done" and summary.failed.keys() == {"broken"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["crash.nc", "fine.nc", "manifest.json"]
    # without retries a dying worker is a failed task, and the batch goes on
    (tmp_path / "crashed").unlink()
    again = Store(tmp_path / "again")
    summary = run_ray(load_batch(spec), again, retries=0, progress=False, workers=1)
    assert summary.failed["crash"].startswith("worker died") and "fine" in summary.done
    # a task past the time limit has its worker stopped and replaced; the batch goes on
    slow = tmp_path / "slow.toml"
    slow.write_text(
        spec.read_text().split("[[tasks]]")[0]
        + '[[tasks]]\nid = "slow"\nmodel_options = { sleep = 600 }\n[[tasks]]\nid = "fine"\nseed = 2\n'
    )
    summary = run_ray(load_batch(slow), Store(tmp_path / "slow"), progress=False, workers=2, timeout=20)
    assert summary.done == ["fine"] and summary.failed["slow"] == "TaskTimeout: ran longer than the time limit of 20 s"
    entry = json.loads((tmp_path / "slow" / "manifest.json").read_text())["tasks"]["fine"]
    assert entry["host"].split(":")[1] != str(os.getpid())  # the manifest says where it ran
    # more workers than fit start as many as fit; none fitting is an error, not a hang
    with pytest.raises(BatchError, match="no worker fits"):
        run_ray(load_batch(spec), Store(tmp_path / "gpu"), progress=False, resources=Workers(num_gpus=1))


def test_workers_table_and_options_are_checked(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "batch.toml"
    spec.write_text(SPEC + "[workers]\nnum_gpus = 1\nnum_cpus = 4\n")
    factory_file(tmp_path)
    from tilted.batch import read_batch

    tasks, workers = read_batch(spec)
    assert workers == Workers(num_cpus=4, num_gpus=1) and all("workers" not in t.table for t in tasks)
    assert [t.id for t in tasks] == [t.id for t in load_batch(tmp_path / "batch.toml")]
    spec.write_text(SPEC + "[workers]\ngpus = 1\n")
    with pytest.raises(SpecError, match=r"\[workers\] takes"):
        read_batch(spec)
    spec.write_text(SPEC)
    out = str(tmp_path / "out")
    assert main(["batch", str(spec), "--out", out, "--workers", "2"]) == 2
    assert "options of --backend ray" in capsys.readouterr().err
    assert main(["batch", str(spec), "--out", out, "--backend", "ray", "--workers", "0"]) == 2
    assert "--workers must be ≥ 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["batch", str(spec), "--out", out, "--backend", "ray"]) == 2
    assert "pip install 'tilted[ray]'" in capsys.readouterr().err


def test_address_joins_a_running_cluster_and_leaves_it_running(tmp_path, ray_tmp, capsys):
    """`ray start --head` as on a cluster's head node, then `tilted batch --address auto`; an unreachable
    address is a one-line error, not a traceback."""
    import subprocess

    binary = Path(sys.executable).with_name("ray")
    head = [str(binary), "start", "--head", "--num-cpus", "1", "--include-dashboard", "false", "--port", "0"]
    subprocess.run(head, check=True, capture_output=True, timeout=120)
    try:
        factory_file(tmp_path)
        spec = tmp_path / "batch.toml"
        spec.write_text(SPEC.replace("seed = [0, 1, 2, 3, 4]", "seed = [0]"))
        out = str(tmp_path / "out")
        assert main(["batch", str(spec), "--out", out, "--backend", "ray", "--address", "auto", "--no-progress"]) == 0
        assert "2 done, 0 failed" in capsys.readouterr().out
        status = subprocess.run([str(binary), "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0  # the cluster is still up after the batch disconnected
    finally:
        subprocess.run([str(binary), "stop", "--force"], capture_output=True, timeout=120)
    fresh = str(tmp_path / "fresh")
    assert main(["batch", str(spec), "--out", fresh, "--backend", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot join the Ray cluster at '127.0.0.1:1'" in err and "Traceback" not in err


def test_sigterm_on_the_ray_driver_leaves_complete_files_and_stops_its_cluster(tmp_path, ray_tmp):
    """A scheduler's SIGTERM to `tilted batch --backend ray`: exit 130, only whole results, no temporaries,
    its local cluster stopped (no raylet left), and the rerun finishes the rest."""
    import signal
    import subprocess
    import time

    factory_file(tmp_path)
    spec = tmp_path / "batch.toml"
    spec.write_text(
        SPEC.replace("num_particles = 16", "num_particles = 2048").replace("[5, 6]", "[100]")
        + "\n".join(
            f"[[tasks]]\nid = 'extra{i}'\nseed = {10 + i}\nmodel_options = {{ num_steps = 100 }}" for i in range(4)
        )
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tilted.cli", "batch", str(spec), "--out", str(out), "--backend", "ray"]
    cmd += ["--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "manifest.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    manifest = json.loads((out / "manifest.json").read_text())["tasks"]
    files = sorted(out.glob("*.nc"))
    assert 1 <= len(manifest) < 9 and len(files) == len(manifest)
    for f in files:
        assert load(f)["particles"]["x"].shape[-2:] == (2048, 2)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    raylets = subprocess.run(["pgrep", "-f", f"raylet.*{ray_tmp}"], capture_output=True, text=True)
    assert raylets.stdout.strip() == "", "the driver's local Ray cluster outlived it"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((out / "manifest.json").read_text())["tasks"]) == 9
