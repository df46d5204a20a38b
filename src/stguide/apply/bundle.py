"""A model bundle: one folder of plain files that applies a trained stguide model to slides without ST.

- ``image_model.safetensors``: the image tower — the part stage 2 trained (nothing for ``trunk: frozen``, the last
  blocks for ``partial``, the whole trunk for ``full``), the image head, and the trunk's frozen prefix only when
  that prefix is not an external backbone. A pretrained trunk (timm name, ``hf-hub:`` name or local weight file) is
  *referenced*, not copied: the manifest's ``trunk_source`` names it with the sha256 of its prefix tensors, and
  loading rebuilds it from the user's copy and refuses one whose hash differs (format 2; format-1 bundles, which
  always copied the prefix, still load);
- ``probe.npz``: the linear probe (scaler, coefficients, intercepts, classes) as arrays;
- ``manifest.json``: the stguide, torch and timm versions, the architecture and trunk source, the input normalisation, the patch settings (µm, px, stain
  handling), the features the probe reads, the classes, the genes, the training data's fingerprint, the run's LOPO
  scores, and the sha256 of every file;
- ``MODEL_CARD.md``: what it was trained on, how well it transferred, its caveats.

Loading never unpickles (safetensors and ``np.load(allow_pickle=False)``), and refuses a folder with a missing file
or a file whose checksum differs from the manifest's.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stguide.apply.expression import gene_embedding, retrieve
from stguide.apply.runcell import REFIT, TrainedCell, cell_tower, check_exportable, open_cell, probe_of_cell, run_store, train_patients, training_spots
from stguide.apply.tower import ImageTower, build_tower, embed_patches, tensors_sha256
from stguide.data.model import read_dataset
from stguide.errors import InputError
from stguide.evaluate.cache import data_key
from stguide.io import atomic_path, write_json_atomic

FILES = ("image_model.safetensors", "probe.npz", "MODEL_CARD.md")
REFERENCE = "reference.npz"  # optional: the joint-space reference for image → expression
FORMAT = 2  # 2: an external trunk is referenced (manifest "trunk_source"), not copied; 1 (always copied) still loads
READS = (1, 2)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: the image tower (eval mode), its input normalisation, the probe and the manifest."""

    path: Path
    manifest: dict[str, Any]
    tower: ImageTower
    probe: dict[str, np.ndarray]

    reference: dict[str, np.ndarray] | None = None

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.probe["classes"]]

    def transform(self):
        from stguide.contrastive.encoders import make_transform

        return make_transform(self.manifest["input_mean"], self.manifest["input_std"])

    @torch.no_grad()
    def embed(self, patches: np.ndarray, head: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(the probed features, and with ``head`` the normalised image-head embedding: the joint space of retrieval)
        of uint8 patches (n × px × px × 3), from one forward pass."""
        if head and self.tower.head is None:
            raise InputError(self.path, "this model has no image head, so no joint space to retrieve expression from",
                             "export a gene-guided method (e.g. ours-scvi or clip)")
        probed, u = embed_patches(self.tower, self.transform(), patches)
        return probed, (u if head else None)

    def features(self, patches: np.ndarray) -> np.ndarray:
        """The probed features of uint8 patches (n × px × px × 3)."""
        return self.embed(patches)[0]

    def panel_columns(self, genes: list[str]) -> list[int]:
        """The columns of ``genes`` in the reference panel; a clear error for a missing reference or gene."""
        if self.reference is None:
            raise InputError(self.path, "holds no expression reference (reference.npz)",
                             "export a gene-guided method; the bundle then carries its training spots' gene embeddings")
        panel = [str(g) for g in self.reference["genes"]]
        missing = [g for g in genes if g not in panel]
        if missing:
            raise InputError(self.path / REFERENCE, f"gene(s) {missing[:5]} are not in the model's reference panel of "
                             f"{len(panel)} genes (e.g. {panel[:5]})", "ask for genes of the panel (manifest.json lists it)")
        return [panel.index(g) for g in genes]

    def expression(self, embedding: np.ndarray, genes: list[str], k: int | None = None) -> np.ndarray:
        """Retrieved log-normalised expression of ``genes`` for head embeddings (BLEEP's top-k mean)."""

        cols = self.panel_columns(genes)
        assert self.reference is not None
        ref = self.reference["embedding"].astype(np.float32)
        expr = self.reference["expression"][:, cols].astype(np.float32)
        return retrieve(embedding, ref, expr, k or int(self.manifest["reference"]["k"]))

    def proba(self, features: np.ndarray) -> np.ndarray:
        from stguide.evaluate.probes import probe_proba

        return probe_proba(self.probe, features)


def load_bundle(path: str | PathLike) -> Bundle:
    """Open a bundle folder, checking every file against the manifest's checksums."""
    from safetensors.torch import load_model

    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise InputError(path, "is not a model bundle (no manifest.json)", "give a folder written by `stguide export`")
    try:
        man = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise InputError(mf, f"is not valid JSON ({e})", "export the bundle again") from None
    if man.get("format") not in READS:
        raise InputError(mf, f"bundle format {man.get('format')!r}, this stguide reads {list(READS)}", "export the bundle again with this version")
    for name, digest in man.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise InputError(f, "is missing from the bundle", "copy the whole bundle folder, or export it again")
        if _sha256(f) != digest:
            raise InputError(f, "differs from the file the bundle was exported with (checksum mismatch)",
                             "restore the original file, or export the bundle again")
    source = man.get("trunk_source") or {"copied": True}
    tower = build_tower(man) if source["copied"] else _referenced_tower(path, man, source)
    missing, unexpected = load_model(tower, str(path / "image_model.safetensors"), strict=False)
    if not source["copied"]:
        missing = [k for k in missing if not k.startswith("prefix.")]  # the external trunk's, loaded above
    if missing or unexpected:
        raise InputError(path / "image_model.safetensors", f"does not fit the architecture in the manifest "
                         f"({len(missing)} missing, {len(unexpected)} unexpected tensors)", "export the bundle again")
    tower.eval()
    with np.load(path / "probe.npz", allow_pickle=False) as z:
        probe = {k: z[k] for k in z.files}
    reference = None
    if (path / REFERENCE).is_file():
        with np.load(path / REFERENCE, allow_pickle=False) as z:
            reference = {k: z[k] for k in z.files}
    return Bundle(path, man, tower, probe, reference)


def _referenced_tower(path: Path, man: dict[str, Any], source: dict[str, Any]) -> ImageTower:
    """The tower around the external trunk the manifest references, refused when its weights are not the ones the
    model was trained with."""
    from stguide.contrastive.encoders import build_image_encoder

    model, _ = build_image_encoder(source["backbone"], source["init"])  # a clear error when the weights cannot be had
    tower = build_tower(man, model.eval())
    found = tensors_sha256(tower.prefix)
    if found != source["sha256"]:
        raise InputError(path / "manifest.json", f"references the trunk {source['backbone']} (init {source['init']}) with weights of "
                         f"sha256 {source['sha256'][:16]}…, but the weights found here hash to {found[:16]}…",
                         "install the same weights the model was trained with (the same file, package or hub revision)")
    return tower


def trunk_source(ccfg, tower: ImageTower) -> dict[str, Any]:
    """How a bundle holds its trunk's frozen prefix: referenced (``copied`` False: pretrained weights from a hub, a
    package or a file, which the user has or can get, and may not be licensed for copying) or copied (a random
    initialisation, which exists nowhere else, or a trunk without a frozen prefix). Always its tensors' sha256."""
    import os

    external = ccfg.init != "none" and any(True for _ in tower.prefix.parameters())
    src: dict[str, Any] = {"backbone": ccfg.backbone, "init": ccfg.init, "sha256": tensors_sha256(tower.prefix), "copied": not external}
    if ccfg.init.startswith("file:"):
        f = Path(os.path.expanduser(ccfg.init[5:]))
        src["file"] = {"path": str(f.resolve()), "sha256": _sha256(f)}
    return src


def export_bundle(run_dir: str | PathLike, method: str, out_dir: str | PathLike, fold: str | None = None, seed: int = 0,
                  k: int = 50) -> Path:
    """Write the bundle of ``method``'s model trained in ``fold`` (default: the first fold) of a run folder. A
    gene-guided method's bundle also carries the expression reference of retrieval (``reference.npz``: its training
    spots' gene-head embeddings and log-normalised expression of the fold gene encoder's genes; ``k``: spots averaged)."""
    from stguide import __version__

    c = open_cell(run_dir, method, fold, seed)
    check_exportable(c)
    if not (c.path / "metrics.json").is_file():
        raise InputError(c.path, "holds no finished model", "refit it first: stguide export RUN --method M --refit-all")
    metrics = json.loads((c.path / "metrics.json").read_text())
    tower, transform, sd = cell_tower(c)
    adata = read_dataset(c.run / "data" / "dataset.h5ad")
    train = training_spots(c, adata)
    reference = _reference(c, sd, train, k) if tower.head is not None and c.method.gene_encoder and "gene_head.proj.weight" in sd else None
    head = tower.head
    probe, probe_source = probe_of_cell(c.path, float(metrics["C"]), c.pcfg)
    ccfg, results, cfg = c.ccfg, c.results, c.cfg
    out = Path(out_dir)
    man: dict[str, Any] = {
        "format": FORMAT, "stguide": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "method": method, "fold": c.fold, "seed": ccfg.seed, "run": str(c.run.resolve()), "run_command": results.get("command", ""),
        "backbone": ccfg.backbone, "init": ccfg.init, "trunk": ccfg.trunk if c.trains else "frozen", "trunk_blocks": ccfg.trunk_blocks,
        "trunk_source": trunk_source(ccfg, tower),
        "features": tower.features, "prefix_float16": tower.prefix_float16,
        "feature_dim": head.in_dim if head is not None else 0, "embed_dim": head.embed_dim if head is not None else 0,
        "dropout": ccfg.dropout, "input_mean": transform.mean.flatten().tolist(), "input_std": transform.std.flatten().tolist(),
        "patch": {"size_um": cfg.patches.size_um, "out_px": cfg.patches.out_px, "stain_norm": cfg.patches.stain_norm},
        "classes": [str(x) for x in probe["classes"]], "probe": {"C": float(metrics["C"]), "source": probe_source},
        "gene_encoder": c.method.gene_encoder, "loss": c.method.loss,
        "trained_on": {"patients": train_patients(c.path), "held_out": None if c.fold == REFIT else c.fold, "dataset": results.get("dataset", {}),
                       "fingerprint": {"spots": data_key(train), "patches": run_store(c, adata).meta["fingerprint"]}},
        "lopo": {"this_fold": {m: metrics[m] for m in ("bacc", "macro_f1", "acc", "kappa") if m in metrics},
                 "mean": results["methods"][method]["mean"], "sd": results["methods"][method]["sd"]},
        "reference": None if reference is None else {"n_spots": int(len(reference["embedding"])), "k": k,
                                                     "genes": [str(g) for g in reference["genes"]],
                                                     "expression": "log1p of counts per 10,000 (all genes), float16"},
    }
    with atomic_path(out) as tmp:
        tmp.mkdir()
        from safetensors.torch import save_model

        if man["trunk_source"]["copied"]:
            save_model(tower, str(tmp / "image_model.safetensors"))
        else:  # the external trunk's prefix is referenced by name and hash, not copied
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in tower.state_dict().items() if not k.startswith("prefix.")},
                      str(tmp / "image_model.safetensors"))
        np.savez(tmp / "probe.npz", allow_pickle=False, **probe)
        if reference is not None:
            np.savez(tmp / REFERENCE, allow_pickle=False, **reference)
        (tmp / "MODEL_CARD.md").write_text(model_card(man))
        man["sha256"] = {f: _sha256(tmp / f) for f in (*FILES, *([REFERENCE] if reference is not None else []))}
        write_json_atomic(tmp / "manifest.json", man)
    return out


def _reference(c: TrainedCell, sd: dict[str, torch.Tensor], train, k: int) -> dict[str, np.ndarray]:
    """The training spots' gene-head embeddings and log-normalised expression of the fold gene encoder's genes."""
    from stguide.genes import load_encoder
    from stguide.genes.expression import log_normalise

    enc = load_encoder(c.fold_dir / "genes" / c.method.gene_encoder)
    expr = log_normalise(train.X)[:, train.var_names.get_indexer(enc.genes)]
    return {"embedding": gene_embedding(c, sd, train, enc).astype(np.float16), "expression": expr.astype(np.float16),
            "genes": np.asarray(enc.genes, dtype=str), "obs_names": np.asarray(train.obs_names, dtype=str)}


def model_card(man: dict[str, Any]) -> str:
    """The short model card of a bundle, from its manifest."""
    d = man["trained_on"]["dataset"]
    proxy = d.get("label_sources", {}).get("proxy", 0)
    mean, sd = man["lopo"]["mean"], man["lopo"]["sd"]
    return "\n".join([
        f"# stguide model: {man['method']} (fold {man['fold']}, seed {man['seed']})", "",
        f"- Image tower: `{man['backbone']}` (init `{man['init']}`), trunk `{man['trunk']}`"
        + (f" (last {man['trunk_blocks']} block(s) trained)" if man["trunk"] == "partial" else "")
        + (f", a {man['embed_dim']}-d head trained with `{man['loss']}` against `{man['gene_encoder']}`" if man["embed_dim"] else ", no head")
        + f"; the probe reads the `{man['features']}` features.",
        f"- Patches: {man['patch']['size_um']:g} µm of tissue resized to {man['patch']['out_px']} px "
        f"(stain handling: {man['patch']['stain_norm']}).",
        f"- Trained on patients {', '.join(man['trained_on']['patients']) or '?'}; "
        + (f"patient {man['fold']} was held out." if man["fold"] != REFIT else
           "no patient was held out (refitted on all of them with the run's settings), so the run's leave-one-patient-out "
           "scores below estimate, rather than measure, how this model does on a new patient."),
        f"- Classes: {', '.join(man['classes'])}.",
        f"- Leave-one-patient-out balanced accuracy of this method in its run: {mean.get('bacc', float('nan')):.3f} ± "
        f"{sd.get('bacc', float('nan')):.3f} (linear probe)"
        + (f"; this fold {man['lopo']['this_fold']['bacc']:.3f}." if "bacc" in man["lopo"]["this_fold"] else "."),
        f"- Produced by: `{man['run_command']}`.", "",
        "## Caveats",
        *(["- **Proxy labels**: some training labels were transferred from a serial section, not drawn by a pathologist; "
           "the scores measure agreement with that proxy."] if proxy else []),
        "- A class that no training patient had cannot be predicted; the probe only knows the classes above.",
        "- Scores come from held-out patients of the same study: another scanner, stain or tissue preparation may shift them.",
        "",
    ])
