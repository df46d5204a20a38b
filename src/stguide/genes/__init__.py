"""Stage 1: gene encoders (``get_encoder``) with one interface: fit / transform / save / load."""
from stguide.genes.base import GeneConfig, GeneEncoder, select_genes
from stguide.genes.registry import ENCODERS, get_encoder

__all__ = ["ENCODERS", "GeneConfig", "GeneEncoder", "get_encoder", "select_genes"]
