"""Data layer: readers into one AnnData data model, the synthetic default, µm-based patches and LOPO folds."""
from stguide.data.model import (
    HER2ST_CLASSES,
    SectionInfo,
    labelled_mask,
    read_dataset,
    section_info,
    validate_dataset,
    write_dataset,
)
from stguide.data.readers import read_anndata, read_hest, read_her2st, read_visium
from stguide.data.synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "HER2ST_CLASSES", "SectionInfo", "SyntheticConfig", "labelled_mask", "make_synthetic", "read_anndata",
    "read_dataset", "read_hest", "read_her2st", "read_visium", "section_info", "validate_dataset", "write_dataset",
]
