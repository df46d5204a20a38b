"""Cells as independent jobs (issue 30): the local executor and submitit's debug back end give the serial run's
results.json; a killed worker's cell is redone on rerun while finished cells are kept; a SLURM submission writes job
arrays with the cluster settings and afterok dependencies; bad executor settings stop before any work.

Results are bit-identical across executors at the same threads per job: torch's CPU kernels reduce in an order that
depends on the thread count, so the serial reference runs with one thread, as each of 2 local workers on 2 cores does.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = """
data: {format: synthetic, options: {n_patients: 3, sections_per_patient: 1, spots_per_section: 36, seed: 0}}
patches: {size_um: 100, out_px: 32}
genes: {n_top_genes: 100}
contrastive: {backbone: resnet10t, epochs: 3, batch_size: 16, augment: false}
methods:
  - {name: random}
  - {name: clip, gene_encoder: logexpr, loss: clip}
  - {name: pca-clip, gene_encoder: pca, loss: clip}
lopo: {baseline: random, seeds: 2}
ablation: false
report: {image_audit: false, target_audit: false, umap: false}
"""
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
SAME = ("methods", "comparisons", "contrasts", "config", "ablation", "methods_paragraph")


def _env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def _stguide(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stguide", *args], env=env or _env(), capture_output=True, text=True, timeout=900, **kw)


def _results(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    return {k: res.get(k) for k in SAME}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("executors") / "exp.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def serial(config) -> dict:
    """The serial run, with one thread (the reference of every executor here)."""
    run = config.parent / "serial"
    p = _stguide("experiment", str(config), "--out", str(run), "--no-progress", env=_env(**ONE_THREAD))
    assert p.returncode == 0, p.stderr[-3000:]
    return _results(run)


def test_local_executor_with_two_workers_gives_the_serial_results(config, serial):
    run = config.parent / "local"
    p = _stguide("experiment", str(config), "--out", str(run), "--executor", "local", "--workers", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "cells: 18/18 jobs done" in p.stdout and "genes: 6/6 jobs done" in p.stdout
    assert _results(run) == serial
    assert sorted(serial["methods"]) == ["clip", "pca-clip", "random"]


def test_submitit_debug_back_end_gives_the_serial_results(config, serial, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG + "executor: {kind: slurm, backend: debug, cpus: 1}\n")
    p = _stguide("experiment", str(cfg), "--out", str(tmp_path / "run"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert _results(tmp_path / "run") == serial


def _cells(run: Path) -> list[Path]:
    return sorted(p for p in (run / "folds").glob("*/*clip/seed*") if p.is_dir())


def test_a_killed_worker_cell_is_redone_on_rerun_and_finished_cells_are_kept(config, serial, tmp_path):
    run = tmp_path / "run"
    args = ["experiment", str(config), "--out", str(run), "--executor", "local", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "stguide", *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    try:  # kill the whole run (driver and workers) once a cell has finished and another one is half way
        while time.time() < deadline:
            cells = _cells(run)
            done = [c for c in cells if (c / "metrics.json").is_file()]
            busy = [c for c in cells if (c / "key.pending").is_file() and not (c / "metrics.json").is_file()]
            if done and busy:
                break
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (run / "results.json").exists()
    finished = {c: (c / "metrics.json").stat().st_mtime_ns for c in _cells(run) if (c / "metrics.json").is_file()}
    unfinished = [c for c in _cells(run) if not (c / "metrics.json").is_file()]
    assert finished and unfinished
    p = _stguide(*args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _results(run) == serial  # the killed cells were redone from scratch …
    assert {c: (c / "metrics.json").stat().st_mtime_ns for c in finished} == finished  # … and the finished ones kept
    assert all((c / "metrics.json").is_file() for c in unfinished)


FAKE_SBATCH = """#!/usr/bin/env bash
# a stand-in for SLURM's sbatch: keeps the script it was given and answers as sbatch does
n=$(( $(ls "$FAKE_SBATCH_DIR" | wc -l) + 1000 ))
cp "${@: -1}" "$FAKE_SBATCH_DIR/job-$n.sh"
echo "Submitted batch job $n"
"""


def test_slurm_submission_writes_job_arrays_with_the_cluster_settings_and_dependencies(tmp_path):
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexec \"$@\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG + "executor: {kind: slurm, partition: gpu, time_min: 30, gpus: 1, array_parallelism: 4, "
                   "slurm_extra: {account: lab}}\n")
    run = tmp_path / "run"
    p = _stguide("experiment", str(cfg), "--out", str(run), env=_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_SBATCH_DIR=str(scripts)))
    assert p.returncode == 0, p.stderr[-3000:]
    sub = json.loads((run / "jobs" / "submitted.json").read_text())["jobs"]
    assert list(sub) == ["prepare", "genes", "cells", "report"]
    assert len(sub["genes"]) == 6 and len(sub["cells"]) == 18 and sub["cells"][0] == "1002_0"
    text = {n: (scripts / f"job-{1000 + i}.sh").read_text() for i, n in enumerate(sub)}
    for body in text.values():
        assert "#SBATCH --partition=gpu" in body and "#SBATCH --time=30" in body and "#SBATCH --account=lab" in body
    assert "--dependency" not in text["prepare"]
    assert "#SBATCH --dependency=afterok:1000" in text["genes"] and "#SBATCH --array=0-5%4" in text["genes"]
    assert "#SBATCH --dependency=afterok:1001" in text["cells"] and "#SBATCH --array=0-17%4" in text["cells"]
    assert "#SBATCH --gpus-per-node=1" in text["cells"] and "#SBATCH --gpus-per-node=0" in text["prepare"]
    assert "#SBATCH --dependency=afterok:1002" in text["report"] and "--array" not in text["report"]
    assert not (run / "patches").exists() and not (run / "results.json").exists()  # the cluster does the work


@pytest.mark.parametrize("yaml_tail, args, message", [
    ("executor: {kind: cloud}\n", [], "unknown executor 'cloud'"),
    ("executor: {partition: gpu}\n", [], "'partition' is a cluster setting, but the executor is 'serial'"),
    ("executor: {kind: slurm, time_min: 30}\n", ["--executor", "local"], "'time_min' is a cluster setting, but the executor is 'local'"),
    ("", ["--executor", "serial", "--workers", "2"], "the serial executor has no workers"),
    ("executor: {kind: slurm}\n", [], "finds no SLURM on this machine"),
])
def test_bad_executor_settings_stop_before_any_work(tmp_path, monkeypatch, capsys, yaml_tail, args, message):
    from stguide import cli

    empty = tmp_path / "no-slurm"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no sbatch, no srun, even where the machine itself has SLURM
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG + yaml_tail)
    assert cli.main(["experiment", str(cfg), "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err, err
    assert not (tmp_path / "run").exists()


def test_unknown_executor_on_the_command_line_and_slurm_without_submitit(tmp_path, monkeypatch, capsys):
    from stguide import cli

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG)
    with pytest.raises(SystemExit) as e:
        cli.main(["experiment", str(cfg), "--out", str(tmp_path / "run"), "--executor", "cloud"])
    assert e.value.code == 2 and "invalid choice: 'cloud'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed
    assert cli.main(["experiment", str(cfg), "--out", str(tmp_path / "run"), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "needs the package submitit" in err and "stguide[cluster]" in err
    assert not (tmp_path / "run").exists()


def test_a_submission_sbatch_refuses_is_one_clear_error(tmp_path, monkeypatch, capsys):
    from stguide import cli

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):  # a login node whose controller says no
        (bin_dir / name).write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(CONFIG + "executor: {kind: slurm, partition: gpu}\n")
    assert cli.main(["experiment", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused the jobs of stage 'prepare'" in err and "invalid partition specified: gpu" in err, err
    assert "fix:" in err and "Traceback" not in err
