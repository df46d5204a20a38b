"""Readers for the layouts users download (HER2ST, HEST-1k, 10x Visium ``outs/``, any AnnData, a SpatialData store), a dataset written
by stguide (``h5ad``) and the embedded synthetic generator, all by name: ``read(format, path, **options)``."""
from stguide.data.model import read_dataset
from stguide.data.readers.anndata import read_anndata
from stguide.data.readers.her2st import read_her2st
from stguide.data.readers.hest import read_hest
from stguide.data.readers.registry import READERS, check_read, read, register_reader
from stguide.data.readers.spatialdata import read_spatialdata
from stguide.data.readers.visium import read_visium
from stguide.data.synthetic import make_synthetic

register_reader("h5ad")(read_dataset)
register_reader("synthetic", takes_path=False)(make_synthetic)

__all__ = ["READERS", "check_read", "read", "read_anndata", "read_hest", "read_her2st", "read_spatialdata", "read_visium", "register_reader"]
