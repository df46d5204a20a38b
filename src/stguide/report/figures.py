"""The report's PNG figures, drawn from what a run saved (never from the dataset, so `stguide report` can rebuild
them): confusion matrices, UMAPs of image embeddings, spot maps over H&E thumbnails, training curves."""
from __future__ import annotations

import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from stguide.io import atomic_path
from stguide.report.palette import class_colour, class_colours
from stguide.report.runfolder import cells

THUMBS = "report_data"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 100) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    _plt().close(fig)
    return path


def _grid(n: int, max_cols: int, w: float, h: float):
    """A figure with ``n`` panels on a grid of at most ``max_cols`` columns (unused panels hidden)."""
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    fig, axes = _plt().subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:n]


def confusion_figure(run: Path, methods: list[str], classes: list[str], path: Path) -> Path | None:
    """Row-normalised confusion matrices (held-out spots of all folds pooled), one panel per method."""
    from sklearn.metrics import confusion_matrix

    mats = {}
    for m in methods:
        preds = [np.load(c / "predictions.npz", allow_pickle=False) for c in cells(run, m) if (c / "predictions.npz").is_file()]
        if preds:
            yt = np.concatenate([p["y_true"] for p in preds])
            yp = np.concatenate([p["y_pred"] for p in preds])
            cls = [c for c in classes if c in set(yt) | set(yp)] or sorted(set(yt) | set(yp))
            mats[m] = (confusion_matrix(yt, yp, labels=cls).astype(float), cls)
    if not mats:
        return None
    fig, axes = _grid(len(mats), 3, 5.2, 4.8)
    for ax, (m, (cm, cls)) in zip(axes, mats.items(), strict=True):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(cls)):
            for j in range(len(cls)):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
        class_ticks(ax, cls)
        ax.set_xlabel("predicted"), ax.set_ylabel("true")
        ax.set_title(m)
    fig.tight_layout()
    return _save(fig, path)


def class_ticks(ax, classes: list[str]) -> None:
    """Both axes of a class × class panel labelled with the (shortened) class names, each in its palette colour."""
    short = [c[:14] for c in classes]
    ax.set_xticks(range(len(classes)), short, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), short, fontsize=7)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for t, c in zip(ticks, classes, strict=True):
            t.set_color(class_colour(c))
            t.set_fontweight("bold")


def plot_umaps(coords: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: str | PathLike) -> Path:
    """One row per representation: ``{name: (xy, patients, labels)}``, coloured by patient (left) and label (right);
    ``None`` labels are drawn grey as unlabelled."""
    plt = _plt()
    fig, axes = plt.subplots(len(coords), 2, figsize=(10, 4.2 * len(coords)), squeeze=False)
    for r, (name, (emb, batch, labels)) in enumerate(coords.items()):
        batch = np.asarray(batch).astype(str)
        labels = pd.Series(np.asarray(labels, dtype=object)).fillna("unlabelled").astype(str).to_numpy()
        for c, (values, title) in enumerate(((batch, "patient"), (labels, "label"))):
            ax = axes[r, c]
            for v in sorted(set(values)):
                m = values == v
                ax.scatter(emb[m, 0], emb[m, 1], s=3, label=v, alpha=0.7, c=class_colour(v) if title == "label" else None)
            ax.set_title(f"{name}: {title}")
            ax.set_xticks([]), ax.set_yticks([])
            ax.legend(markerscale=4, fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, Path(path), dpi=110)


def umap_figure(run: Path, methods: list[str], path: Path) -> Path | None:
    """UMAPs of each method's image features in the UMAP fold, coloured by patient and by label."""
    coords = {}
    for m in methods:
        for c in cells(run, m):
            if (c / "umap.npz").is_file():
                z = np.load(c / "umap.npz", allow_pickle=False)
                coords[f"{m} (fold {c.parent.name})"] = (z["xy"], z["patient"], z["label"])
    return plot_umaps(coords, path) if coords else None


def training_figure(run: Path, methods: list[str], path: Path) -> Path | None:
    """Training loss per epoch of each contrastive method, one line per fold."""
    curves: dict[str, dict[str, pd.Series]] = {}
    for m in methods:
        for c in cells(run, m):
            f = c / "logs" / "metrics.csv"
            if f.is_file():
                df = pd.read_csv(f)
                if "train_loss" in df:
                    d = df.dropna(subset=["train_loss"]).groupby("epoch")["train_loss"].last()
                    curves.setdefault(m, {})[c.parent.name] = d
    if not curves:
        return None
    fig, axes = _grid(len(curves), 4, 4, 3)
    for ax, (m, folds) in zip(axes, curves.items(), strict=True):
        for fold, d in folds.items():
            ax.plot(d.index + 1, d.values, marker="o", ms=3, label=f"held out {fold}")
        ax.set_title(m), ax.set_xlabel("epoch"), ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def save_spot_map_data(adata, run: Path, thumbnail_px: int = 900) -> None:
    """At run time: an H&E thumbnail of every section with a labelled spot and an image, and the spots' positions,
    under ``report_data/`` (so the report can be rebuilt without the dataset)."""
    from stguide.data.images import open_level

    out = run / THUMBS
    (out / "thumbnails").mkdir(parents=True, exist_ok=True)
    geo = {}
    labelled = adata.obs["label"].notna().to_numpy()
    for name, info in adata.uns["sections"].items():
        m = (adata.obs["section"].astype(str) == name).to_numpy()
        if not info.get("image") or not (labelled & m).any():
            continue
        w, h = int(info["image_width"]), int(info["image_height"])
        side = max(w, h)
        png = out / "thumbnails" / f"{name}.png"
        if not png.is_file():
            level = open_level(info["image"], downsample=side / thumbnail_px)
            try:
                thumb, _ = level.cut(w / 2, h / 2, side / 2, thumbnail_px)
            finally:
                level.close()
            from PIL import Image

            with atomic_path(png, suffix=".png") as tmp:
                Image.fromarray(thumb).save(tmp, format="PNG")
        geo[name] = {"cx": w / 2, "cy": h / 2, "half": side / 2, "px": thumbnail_px, "patient": str(info["patient"]),
                     "spot_um": float(info.get("spot_diameter_um") or 100.0), "um_per_px": float(info.get("um_per_px") or 1.0)}
    obs = adata.obs
    with atomic_path(out / "spots.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, obs_names=np.asarray(obs.index, dtype=str), section=np.asarray(obs["section"], dtype=str),
                                x=obs["x_px"].to_numpy(float), y=obs["y_px"].to_numpy(float))
    (out / "sections.json").write_text(json.dumps(geo, indent=1))


def spot_map_figures(run: Path, method: str, classes: list[str], out_dir: Path) -> list[Path]:
    """For each held-out section: true vs predicted labels of ``method`` over the H&E thumbnail."""
    data = run / THUMBS
    if not (data / "sections.json").is_file():
        return []
    geo = json.loads((data / "sections.json").read_text())
    spots = np.load(data / "spots.npz", allow_pickle=False)
    pos = {n: i for i, n in enumerate(spots["obs_names"])}
    plt = _plt()
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    colours = class_colours(classes)
    paths = []
    for cell in cells(run, method):
        p = np.load(cell / "predictions.npz", allow_pickle=False)
        idx = np.array([pos[n] for n in p["obs_names"]])
        secs = spots["section"][idx]
        for sec in sorted(set(secs)):
            if sec not in geo:
                continue
            g = geo[sec]
            m = secs == sec
            k = g["px"] / (2 * g["half"])
            u, v = (spots["x"][idx][m] - g["cx"] + g["half"]) * k, (spots["y"][idx][m] - g["cy"] + g["half"]) * k
            from PIL import Image

            thumb = np.asarray(Image.open(data / "thumbnails" / f"{sec}.png"))
            radius = 0.4 * g["spot_um"] / g["um_per_px"] * k  # 80 % of the spot diameter, in thumbnail pixels
            fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
            shown = set()
            for ax, y, title in ((axes[0], p["y_true"][m], "true label"), (axes[1], p["y_pred"][m], f"predicted ({method})")):
                ax.imshow(thumb)
                for c in [c for c in classes if c in set(y)]:
                    sel = y == c
                    shown.add(c)
                    ax.add_collection(PatchCollection([Circle((a, b), radius) for a, b in zip(u[sel], v[sel], strict=True)],
                                                      facecolor=colours.get(c, "k"), edgecolor="none", alpha=0.65))
                ax.set_title(f"{sec} (patient {g['patient']}): {title}")
                ax.axis("off")
            handles = [Line2D([], [], marker="o", ls="", color=colours.get(c, "k"), label=c) for c in classes if c in shown]
            fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
            fig.tight_layout(rect=(0, 0.06, 1, 1))
            paths.append(_save(fig, out_dir / f"spots_{sec}.png"))
    return paths


def write_figures(run_dir: str | PathLike, results: dict) -> dict[str, list[str]]:
    """Draw every figure a run's saved artefacts allow; returns {kind: [paths relative to the run]}."""
    run = Path(run_dir)
    fig_dir = run / "figures"
    fig_dir.mkdir(exist_ok=True)
    methods = list(results.get("methods", {}))
    classes = list(results.get("dataset", {}).get("classes", []))
    figs: dict[str, list[str]] = {}
    for kind, f in (("confusion", lambda: confusion_figure(run, methods, classes, fig_dir / "confusion.png")),
                    ("umap", lambda: umap_figure(run, methods, fig_dir / "umap.png")),
                    ("training", lambda: training_figure(run, methods, fig_dir / "training.png"))):
        p = f()
        if p:
            figs[kind] = [str(p.relative_to(run))]
    chosen = results.get("config", {}).get("report", {}).get("spot_map_method") or best_method(results)
    if chosen:
        spot = spot_map_figures(run, chosen, classes, fig_dir)
        if spot:
            figs["spots"] = [str(p.relative_to(run)) for p in spot]
            figs["spots_method"] = [chosen]
    return figs


def best_method(results: dict, metric: str = "bacc") -> str | None:
    """The method with the highest mean of ``metric`` (ties: the first)."""
    methods = results.get("methods", {})
    return max(methods, key=lambda m: methods[m]["mean"].get(metric, float("-inf"))) if methods else None
