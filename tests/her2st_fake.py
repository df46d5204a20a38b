"""A tiny HER2ST-layout folder, for bad-input tests."""
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SPOTS = [(1, 1), (2, 1), (1, 2), (2, 2), (3, 3)]
PITCH_PX = 100.0  # 200 µm grid → 2 µm/px


def make(root: Path, counts: np.ndarray | None = None, labels: list[str] | None = None, image: bool = True,
         spots=SPOTS, pixel_offset: float = 50.0) -> Path:
    (root / "ST-cnts").mkdir(parents=True)
    (root / "ST-spotfiles").mkdir()
    counts = np.arange(len(spots) * 3).reshape(len(spots), 3) if counts is None else counts
    rows = ["\tG1\tG2\tG3"] + [f"{x}x{y}\t" + "\t".join(str(v) for v in c) for (x, y), c in zip(spots, counts, strict=True)]
    with gzip.open(root / "ST-cnts" / "A1.tsv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    sel = ["x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected"]
    sel += [f"{x}\t{y}\t{x}\t{y}\t{x * PITCH_PX + pixel_offset}\t{y * PITCH_PX + pixel_offset}\t1" for x, y in dict.fromkeys(spots)]
    (root / "ST-spotfiles" / "A1_selection.tsv").write_text("\n".join(sel) + "\n")
    if image:
        d = root / "ST-imgs" / "A" / "A1"
        d.mkdir(parents=True)
        Image.fromarray(np.full((500, 500, 3), 200, np.uint8)).save(d / "HE.jpg")
    if labels is not None:
        (root / "ST-pat" / "lbl").mkdir(parents=True)
        lines = ["Row.names\tx\ty\tpixel_x\tpixel_y\tlabel"]
        lines += [f"r{i}\t{x + 0.02}\t{y - 0.03}\t0\t0\t{lab}" for i, ((x, y), lab) in enumerate(zip(spots, labels, strict=True))]
        (root / "ST-pat" / "lbl" / "A1_labeled_coordinates.tsv").write_text("\n".join(lines) + "\n")
    return root
