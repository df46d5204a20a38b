"""One experiment over two processes under torchrun (CPU, gloo): the end-to-end training is shared through
Lightning's DDP, everything else runs once on the main process (one set of outputs), and the results match a
one-process run of the same global batch: identical for the cells that train nothing, within a stated tolerance for
the trained ones."""
import json
import os
import subprocess
import sys

CONFIG = """
data: {format: synthetic, options: {n_patients: 3, sections_per_patient: 1, spots_per_section: 36, seed: 0}}
patches: {size_um: 100, out_px: 32}
genes: {n_top_genes: 100}
contrastive: {backbone: resnet10t, epochs: 2, batch_size: 16, augment: false,
              trainer_kwargs: {accelerator: cpu, devices: 2, strategy: ddp}}
methods:
  - {name: random}
  - {name: clip, gene_encoder: logexpr, loss: clip}
ablation: false
report: {image_audit: false, target_audit: false, umap: false}
"""


# A 2-rank training is not the 1-rank one reordered: each rank's BatchNorm normalises its own 16 spots (not 32), and the
# ranks' batches are drawn from the shuffle in another order, so the trained trunks differ. On the 36 held-out spots of
# each fold the trained cells' balanced accuracy then differs by up to 0.135 (measured at this commit); the bound:
TRAINED_BACC_TOLERANCE = 0.15


def test_torchrun_two_processes_train_together_and_the_main_one_reports(tmp_path):
    (tmp_path / "exp.yaml").write_text(CONFIG)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "stguide",
                        "experiment", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "run"), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=880)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("wrote ") == 1  # one process scored and reported
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(res["methods"]) == ["clip", "random"]
    assert all(sorted(m["folds"]) == ["P1", "P2", "P3"] for m in res["methods"].values())
    for fold in ("P1", "P2", "P3"):
        cell = tmp_path / "run" / "folds" / fold / "clip"
        assert (cell / "checkpoints" / "last.ckpt").is_file() and (cell / "metrics.json").is_file()
        # both processes trained: each of the 2 epochs took ceil(n / (2 processes × 16)) steps, not ceil(n / 16)
        ck = __import__("torch").load(cell / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        n_train = 72  # 2 training patients × 36 spots
        assert ck["global_step"] == 2 * -(-n_train // 32), ck["global_step"]

    # the same experiment in one process, with the same global batch (2 × 16)
    (tmp_path / "one.yaml").write_text(CONFIG.replace("batch_size: 16", "batch_size: 32").replace("devices: 2, strategy: ddp", "devices: 1"))
    p1 = subprocess.run([sys.executable, "-m", "stguide", "experiment", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "one"),
                         "--no-progress"], env=env, capture_output=True, text=True, timeout=880)
    assert p1.returncode == 0, p1.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["methods"]["random"] == res["methods"]["random"]  # nothing trained: identical
    for fold in ("P1", "P2", "P3"):
        a, b = one["methods"]["clip"]["folds"][fold], res["methods"]["clip"]["folds"][fold]
        assert a["n_test"] == b["n_test"] and a["n_train"] == b["n_train"]
        assert abs(a["bacc"] - b["bacc"]) <= TRAINED_BACC_TOLERANCE, (fold, a["bacc"], b["bacc"])
    drop = ("source",)  # where the synthetic images were written: each run's own folder
    assert {k: v for k, v in one["dataset"].items() if k not in drop} == {k: v for k, v in res["dataset"].items() if k not in drop}
