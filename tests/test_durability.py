"""kill -9 during stage-2 training, then --resume: the same final weights and embeddings as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stguide.cli import main
from stguide.data import read_dataset, write_dataset
from stguide.genes import get_encoder


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(synthetic, tmp_path):
    data = tmp_path / "d.h5ad"
    write_dataset(synthetic, data)
    get_encoder("pca", pca={"n_pcs": 8}).fit(synthetic[synthetic.obs["patient"] != "P3"]).save(tmp_path / "genes")
    args = ["train", "--data", str(data), "--genes", str(tmp_path / "genes"), "--backbone", "resnet10t", "--epochs", "5",
            "--batch-size", "16", "--size-um", "100", "--out-px", "32", "--exclude-patients", "P3",
            "--patch-cache", str(tmp_path / "patches")]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0

    run = tmp_path / "killed"
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "stguide.cli", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training ended before it could be killed"
    completed = torch.load(ckpt, weights_only=True)["epoch"] + 1  # the index of the last finished epoch, plus one
    assert 1 <= completed < 5 and not (run / "embeddings.h5ad").exists()

    assert main(args + ["--out", str(run), "--resume"]) == 0
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(ckpt, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    ea, eb = read_dataset(tmp_path / "full" / "embeddings.h5ad"), read_dataset(run / "embeddings.h5ad")
    np.testing.assert_array_equal(ea.obsm["X_image_head"], eb.obsm["X_image_head"])


def test_fingerprint_of_object_arrays_is_stable():
    from stguide.io import fingerprint

    a = np.array(["x", "y"], dtype=object)
    b = np.array(["x", "y"], dtype=object)
    assert fingerprint(a) == fingerprint(b) == fingerprint(np.array(["x", "y"]))
    assert fingerprint(a) != fingerprint(np.array(["x", "z"], dtype=object))
