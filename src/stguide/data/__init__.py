"""Data layer: readers by name into one AnnData data model, the synthetic default, µm-based patches and LOPO folds."""
from stguide.data.model import (
    EXCLUDED_LABELS,
    HER2ST_CLASSES,
    SectionInfo,
    dataset_summary,
    labelled_mask,
    read_dataset,
    section_info,
    validate_dataset,
    write_dataset,
)
from stguide.data.readers import READERS, read, read_anndata, read_her2st, read_hest, read_visium
from stguide.data.synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "EXCLUDED_LABELS", "HER2ST_CLASSES", "READERS", "SectionInfo", "SyntheticConfig", "dataset_summary", "labelled_mask",
    "make_synthetic", "read", "read_anndata", "read_dataset", "read_hest", "read_her2st", "read_visium", "section_info",
    "validate_dataset", "write_dataset",
]
