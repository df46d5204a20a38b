"""A finished cell of a ``stguide experiment`` run folder, read back: its configuration, its trained image tower and
weights, its linear probe, and the run's patch store. The bundle export, the refit on every patient and the image →
expression evaluation read a run through these."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stguide.apply.tower import ImageTower
from stguide.errors import InputError

REFIT = "all"  # the fold name of a model refitted on every patient (stguide.apply.refit)
REFIT_DIR = "refit"  # under the run folder: refit/genes/<encoder>/, refit/<method>/[seed<k>/]


def _cell_weights(cell: Path) -> dict[str, torch.Tensor]:
    """The trained module's weights of a cell: ``model.safetensors`` (cached trunks) or ``checkpoints/last.ckpt``."""
    if (cell / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(cell / "model.safetensors"))
    ckpt = cell / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    raise InputError(cell, "holds no trained weights (model.safetensors or checkpoints/last.ckpt)", "run the experiment to the end first")


def probe_of_cell(cell: Path, C: float, pcfg) -> tuple[dict[str, np.ndarray], str]:
    """The cell's linear probe: its saved arrays, or (cells from before they were saved) refitted with the cell's C
    on the training spots of its ``features.npz``."""
    if (cell / "probe.npz").is_file():
        with np.load(cell / "probe.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, "saved by the run"
    from stguide.evaluate.probes import fit_linear_probe, probe_arrays

    with np.load(cell / "features.npz", allow_pickle=False) as z:
        x, y, groups, test = z["x"].astype(np.float32), z["label"], z["patient"], z["test"]
    model, _, _ = fit_linear_probe(x[~test], y[~test], groups[~test], replace(pcfg, Cs=(C,)))
    return probe_arrays(model), "refitted with the run's C on the cell's saved (float16) training features"



@dataclass
class TrainedCell:
    """One finished cell of a run folder: what it was configured with and where it lives."""

    run: Path
    results: dict[str, Any]
    cfg: Any  # ExperimentConfig
    method: Any  # Method
    ccfg: Any  # the cell's ContrastiveConfig (its seed included)
    pcfg: Any  # the cell's ProbeConfig
    fold: str  # a held-out patient, or "all" for a refit on every patient (stguide.evaluate.refit)
    path: Path
    fold_dir: Path  # folds/<fold>/ or refit/: where the fold's gene encoders live (genes/<name>/)

    @property
    def trains(self) -> bool:
        from stguide.evaluate.lopo import trains

        return trains(self.method, self.ccfg)


def open_cell(run_dir: str | PathLike, method: str, fold: str | None = None, seed: int = 0) -> TrainedCell:
    """The cell of ``method`` in ``fold`` (default: the first fold) and seed index ``seed`` of a finished run."""
    from stguide.config import build_dataclass
    from stguide.evaluate.config import ExperimentConfig
    from stguide.evaluate.lopo import cell_path, seed_dependent

    run = Path(run_dir)
    rf = run / "results.json"
    if not rf.is_file():
        raise InputError(run, "is not a finished run folder (no results.json)", "give the --out folder of `stguide experiment`")
    results = json.loads(rf.read_text())
    cfg = build_dataclass(ExperimentConfig, results["config"], f"{rf}:config")
    methods = {m.name: m for m in cfg.all_methods()}
    if method not in methods:
        raise InputError(rf, f"the run has no method {method!r}", f"use one of {sorted(methods)}")
    m = methods[method]
    folds = sorted(results["methods"].get(method, {}).get("folds", {}))
    if not folds:
        raise InputError(rf, f"method {method!r} has no finished fold", "run the experiment to the end first")
    fold = fold or folds[0]
    if fold not in (*folds, REFIT):
        raise InputError(rf, f"method {method!r} has no fold {fold!r}", f"use one of {folds}, or --refit-all")
    base = m.config(cfg.contrastive)
    ccfg = replace(base, seed=base.seed + seed) if seed_dependent(m, base) else base
    fold_dir = run / REFIT_DIR if fold == REFIT else run / "folds" / fold
    return TrainedCell(run, results, cfg, m, ccfg, m.probe_config(cfg.probe), fold,
                       cell_path(fold_dir, m, ccfg, cfg.lopo.seeds, ccfg.seed), fold_dir)


def check_exportable(c: TrainedCell) -> None:
    """Refuse a method whose probe reads per-patient centred features: a new slide defines no patient mean."""
    if c.pcfg.centre != "none":
        raise InputError(f"config:methods.{c.method.name}.probe.centre", "a probe on per-patient centred features needs "
                         "the patient's own mean, which a new slide does not define", "export a method probed without centring")


def run_store(c: TrainedCell, adata):
    """The run's patch store (``patches/patches-<key>/``), found by the run's own patch settings and data."""
    from stguide.data.patches import extract_patches

    return extract_patches(adata, c.cfg.patches, c.run / "patches", progress=False)


def cell_tower(c: TrainedCell) -> tuple[ImageTower, Any, dict[str, torch.Tensor]]:
    """(the cell's image tower in eval mode, its input transform, the cell's trained weights or {})."""
    from stguide.contrastive.encoders import build_image_encoder
    from stguide.contrastive.heads import ProjectionHead
    from stguide.contrastive.trunk import split_trunk
    from stguide.evaluate.probes import probed_features

    ccfg = c.ccfg
    cached = ccfg.trunk != "full"  # the run read the trunk's output from the float16 feature cache
    trunk = ccfg.trunk if c.trains else "frozen"
    torch.manual_seed(0 if cached else ccfg.seed)  # the run's draw of a random-init trunk (features.py, lopo.py)
    model, transform = build_image_encoder(ccfg.backbone, ccfg.init)
    model.eval()
    features = c.pcfg.features if c.trains else "backbone"
    if trunk == "partial":
        prefix, tail = split_trunk(model, ccfg.trunk_blocks, ccfg.backbone)
        trained: nn.Module = tail if tail is not None else nn.Identity()
    elif trunk == "frozen":
        prefix, trained = model, nn.Identity()
    else:
        prefix, trained = nn.Identity(), model
    head, sd = None, {}
    if c.trains:
        sd = _cell_weights(c.path)
        hw = sd["image_head.proj.weight"]
        head = ProjectionHead(int(hw.shape[1]), int(hw.shape[0]), ccfg.dropout)
        head.load_state_dict({k[len("image_head."):]: v for k, v in sd.items() if k.startswith("image_head.")})
        own = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        if own:
            trained.load_state_dict(own)
        features = probed_features(features, ccfg.trains_backbone)  # as the run probed it
    return ImageTower(prefix, trained, head, features, cached).eval(), transform, sd


def training_spots(c: TrainedCell, adata):
    """The spots of ``adata`` whose patients the cell trained on: all but the fold's held-out patients (all of them
    for a refit on every patient)."""
    audit = json.loads((c.path / "leakage_audit.json").read_text())
    held = audit["held_out"]["patients"]
    return adata[~adata.obs["patient"].astype(str).isin(held).to_numpy()]


def train_patients(cell: Path) -> list[str]:
    """The patients the cell's probe was trained on (from its leakage audit)."""
    audit = json.loads((cell / "leakage_audit.json").read_text()) if (cell / "leakage_audit.json").is_file() else {}
    return list(audit.get("probe", {}).get("patients", []))

