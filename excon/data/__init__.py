"""Data layer: original formats -> prepared (DVC-versioned) arrays -> loaded splits."""

from excon.data.errors import DataError
from excon.data.prepare import DATASETS, prepare_dataset
from excon.data.prepared import PreparedDataset, RawDataset, Split, load_prepared, write_prepared

__all__ = [
    "DATASETS",
    "DataError",
    "PreparedDataset",
    "RawDataset",
    "Split",
    "load_prepared",
    "prepare_dataset",
    "write_prepared",
]
