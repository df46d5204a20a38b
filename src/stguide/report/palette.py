"""One colour per tissue class for every figure of the product (UMAPs, spot maps, subtype maps), so a class looks
the same wherever it is drawn. The HER2ST classes have fixed colours; any other class name gets a stable colour from
its name (the same name, the same colour, in every run)."""
from __future__ import annotations

import zlib
from collections.abc import Iterable

CLASS_COLOURS: dict[str, str] = {
    "invasive cancer": "#d62728",
    "cancer in situ": "#ff7f0e",
    "immune infiltrate": "#9467bd",
    "breast glands": "#2ca02c",
    "connective tissue": "#e377c2",
    "adipose tissue": "#bcbd22",
    "undetermined": "#7f7f7f",
    "other": "#17becf",  # the 3-class view's "everything else"
    "unlabelled": "#d3d3d3",
}
_EXTRA = ("#1f77b4", "#8c564b", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354",
          "#756bb1", "#636363", "#e6550d", "#969696")


def class_colour(name: str) -> str:
    """The colour of class ``name`` (hex)."""
    return CLASS_COLOURS.get(name) or _EXTRA[zlib.crc32(name.encode()) % len(_EXTRA)]


def class_colours(classes: Iterable[str]) -> dict[str, str]:
    """``{class: colour}`` for the classes given."""
    return {c: class_colour(c) for c in classes}
