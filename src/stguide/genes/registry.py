"""Gene encoders by name (timm-style: a string → a factory). A family registers itself with :func:`register`;
the package ``stguide.genes`` imports every family, so the registry is full whenever it is importable."""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

from stguide.config import ConfigError, check_name, replace_config
from stguide.errors import InputError
from stguide.genes.base import GeneEncoder
from stguide.genes.config import GeneConfig

ENCODERS: dict[str, type[GeneEncoder]] = {}
E = TypeVar("E", bound=type[GeneEncoder])


def register(cls: E) -> E:
    """Class decorator: make ``cls`` the gene encoder named ``cls.name``."""
    ENCODERS[cls.name] = cls
    return cls


def encoder_class(name: str, key: str = "gene_encoder") -> type[GeneEncoder]:
    """The registered class of ``name``; :class:`ConfigError` at ``key`` listing the known names otherwise."""
    check_name(key, name, ENCODERS, "gene encoder")
    return ENCODERS[name]


def get_encoder(name: str, config: GeneConfig | None = None, **changes: Any) -> GeneEncoder:
    """A new, unfitted gene encoder by name (``ENCODERS``: logexpr, pca, harmony, scvi, scanvi, sysvi).

    ``changes`` edit ``config`` like its YAML section, e.g. ``scvi={"max_epochs": 50}`` or ``n_top_genes=500``.
    """
    try:
        cls = encoder_class(name)
    except ConfigError as e:
        raise InputError("config:gene_encoder", e.problem, e.fix) from None
    cfg = config or GeneConfig()
    return cls(replace_config(cfg, **changes) if changes else cfg)


def load_encoder(path: str | PathLike) -> GeneEncoder:
    """Open an encoder folder written by ``GeneEncoder.save`` (any family)."""
    path = Path(path)
    meta_file = path / "stguide.json"
    if not meta_file.is_file():
        raise InputError(path, "not a stguide gene-encoder folder (stguide.json is missing)", "fit one with `stguide genes fit`")
    meta = json.loads(meta_file.read_text())
    cls = ENCODERS.get(meta.get("encoder", ""))
    if cls is None:
        raise InputError(meta_file, f"unknown gene encoder {meta.get('encoder')!r}", f"known: {sorted(ENCODERS)}; refit the encoder")
    try:
        cfg = GeneConfig.from_dict(meta["config"], str(meta_file))
    except InputError as e:
        raise InputError(meta_file, f"its settings do not match this stguide version ({e.problem})",
                         "refit the encoder with `stguide genes fit`") from None
    enc = cls(cfg)
    enc.genes, enc.fitted_on = list(meta["genes"]), dict(meta["fitted_on"])
    enc._load(path)
    return enc
