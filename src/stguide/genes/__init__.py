"""Stage 1: gene encoders by name (``get_encoder``) with one interface: fit / transform / save, and
``load_encoder`` for a saved one. Importing the package registers every family."""
from stguide.genes import expression, scvi  # noqa: F401  (registers the families)
from stguide.genes.base import FINETUNE, LABELS, PREDICT, GeneEncoder, select_genes
from stguide.genes.config import GeneConfig, HarmonyOptions, PcaOptions, ScanviOptions, ScviOptions, SysviOptions, auto_epochs
from stguide.genes.registry import ENCODERS, encoder_class, get_encoder, load_encoder, register

__all__ = ["ENCODERS", "FINETUNE", "LABELS", "PREDICT", "GeneConfig", "GeneEncoder", "HarmonyOptions", "PcaOptions",
           "ScanviOptions", "ScviOptions", "SysviOptions", "auto_epochs", "encoder_class", "get_encoder", "load_encoder", "register", "select_genes"]
