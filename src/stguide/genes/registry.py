"""Gene encoders by name (timm-style: a string → a factory)."""
from __future__ import annotations

from typing import Any

from stguide.errors import InputError
from stguide.genes.base import GeneConfig, GeneEncoder
from stguide.genes.expression import HarmonyEncoder, LogExprEncoder, PCAEncoder
from stguide.genes.scvi import SCANVIEncoder, SCVIEncoder, SysVIEncoder

ENCODERS: dict[str, type[GeneEncoder]] = {
    c.name: c for c in (LogExprEncoder, PCAEncoder, HarmonyEncoder, SCVIEncoder, SCANVIEncoder, SysVIEncoder)
}


def get_encoder(name: str, config: GeneConfig | None = None, **overrides: Any) -> GeneEncoder:
    """A new, unfitted gene encoder: ``logexpr``, ``pca``, ``harmony``, ``scvi``, ``scanvi`` or ``sysvi``."""
    if name not in ENCODERS:
        raise InputError("config:gene_encoder", f"unknown gene encoder {name!r}", f"use one of {sorted(ENCODERS)}")
    return ENCODERS[name](config, **overrides)
