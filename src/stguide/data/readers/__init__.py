"""Readers for the layouts users download: HER2ST, HEST-1k, 10x Visium ``outs/`` and any AnnData."""
from stguide.data.readers.anndata import read_anndata
from stguide.data.readers.hest import read_hest
from stguide.data.readers.her2st import read_her2st
from stguide.data.readers.visium import read_visium

__all__ = ["read_her2st", "read_hest", "read_visium", "read_anndata"]
