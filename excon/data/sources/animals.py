"""Animal-MNIST: 10,000 28x28 grayscale animal silhouettes shipped in the PyPI package
`animal-mnist==0.4` (the embedded default dataset).

The package is only located, never imported: its modules import tensorflow.
"""

import gzip
import importlib.util
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split, sha256_file
from excon.data.safe_pickle import safe_load
from excon.data.splits import stratified_split

NAME = "animals"
PACKAGE = "animal_mnist"
INSTALL_HINT = "pip install --no-deps animal-mnist==0.4"
DATA_FILE = "animal_data_version_3.gz"
LABEL_FILE = "animal_label_version_3.gz"
EXPECTED_SHA256 = {
    DATA_FILE: "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    LABEL_FILE: "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
# Label order as listed in the package description; checked by eye against the images
# (labels come in sorted blocks of 1000, block k shows the k-th animal).
CLASS_NAMES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]


def package_data_dir() -> Path:
    """The installed package's data folder, or DataError telling how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {PACKAGE} is not installed; run `{INSTALL_HINT}`")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal_MNIST"


def read_animals(
    root: Path | None = None,
    expected_sha256: Mapping[str, str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> RawDataset:
    """Read the two gzip'd pickles (from `root` or the installed package) and split them
    stratified and seeded into train/val/test. Masks are the silhouettes (pixel > 0)."""
    root = package_data_dir() if root is None else Path(root)
    expected = EXPECTED_SHA256 if expected_sha256 is None else expected_sha256
    images = _read_array(root / DATA_FILE, expected[DATA_FILE])
    labels = _read_array(root / LABEL_FILE, expected[LABEL_FILE])
    if images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}"
        raise DataError(f"{root / DATA_FILE}: expected uint8 [N,H,W], got {got}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        got = f"{labels.dtype} {list(labels.shape)}"
        raise DataError(f"{root / LABEL_FILE}: expected integer [N], got {got}")
    if len(labels) != len(images):
        raise DataError(f"{root}: {len(labels)} labels for {len(images)} images")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{root / LABEL_FILE}: labels outside 0..{len(CLASS_NAMES) - 1}")

    fractions = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
    parts = stratified_split(labels, fractions, seed)
    splits = {}
    for name, idx in zip(("train", "val", "test"), parts, strict=True):
        imgs = images[idx]
        splits[name] = Split(
            images=imgs[..., None], labels=labels[idx], masks=(imgs > 0).astype(np.uint8)
        )
    source = {
        "package": "animal-mnist==0.4",
        "files": {f: expected[f] for f in (DATA_FILE, LABEL_FILE)},
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    return RawDataset(NAME, list(CLASS_NAMES), splits, source)


def _read_array(path: Path, sha256: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found; reinstall with `{INSTALL_HINT}`")
    actual = sha256_file(path)
    # Checked before unpickling: a file that is not the published one is never parsed.
    if actual != sha256:
        raise DataError(
            f"{path}: sha256 {actual[:12]}… does not match the published {sha256[:12]}…; "
            f"reinstall with `{INSTALL_HINT}`"
        )
    with gzip.open(path, "rb") as f:
        obj = safe_load(f, str(path))
    if not isinstance(obj, np.ndarray):
        raise DataError(f"{path}: expected a numpy array, got {type(obj).__name__}")
    return obj
