"""CIFAR-100 in its original `cifar-100-python` format (as torchvision downloads it).

`train`, `test` and `meta` are Python 2 pickles of dicts: b'data' uint8 [N, 3072] (1024 red,
then green, then blue values per image, row-major 32x32), b'fine_labels' list[int] and, in
meta, b'fine_label_names'. They are read with the numpy-only unpickler.
"""

from pathlib import Path

import numpy as np

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split, with_val_from_train
from excon.data.safe_pickle import safe_load
from excon.data.sources.download import download_and_extract

NAME = "cifar100"
BASE_FOLDER = "cifar-100-python"
# The archive torchvision's CIFAR100 fetches (the same URL, name and md5).
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
NUM_CLASSES = 100
SIDE = 32
ROW = 3 * SIDE * SIDE


def download_cifar100(raw_dir: Path) -> None:
    """Fetch and unpack the official archive into `raw_dir` unless intact files are there."""
    from torchvision.datasets import CIFAR100
    from torchvision.datasets.utils import check_integrity

    meta = (CIFAR100.meta["filename"], CIFAR100.meta["md5"])
    expected = [*CIFAR100.train_list, *CIFAR100.test_list, meta]
    if all(check_integrity(str(raw_dir / BASE_FOLDER / f), md5) for f, md5 in expected):
        return
    download_and_extract(URL, raw_dir, ARCHIVE, ARCHIVE_MD5, BASE_FOLDER)


def read_cifar100(raw_dir: Path, seed: int = 0, val_fraction: float = 0.1) -> RawDataset:
    """Official train minus a stratified, seeded val carve-out; official test as test."""
    root = find_root(Path(raw_dir))
    meta = _read_dict(root / "meta")
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        count = len(names) if isinstance(names, list) else "no"
        raise DataError(f"{root / 'meta'}: expected {NUM_CLASSES} fine_label_names, found {count}")
    class_names = [_text(n) for n in names]

    train = _read_batch(root / "train")
    test = _read_batch(root / "test")
    return with_val_from_train(NAME, class_names, train, test, val_fraction, seed, BASE_FOLDER)


def find_root(raw_dir: Path) -> Path:
    """`raw_dir/cifar-100-python`, or `raw_dir` itself when it is that folder."""
    for candidate in (raw_dir / BASE_FOLDER, raw_dir):
        if (candidate / "meta").is_file():
            return candidate
    raise DataError(
        f"{raw_dir}: no {BASE_FOLDER}/ folder with train, test and meta; "
        "pass --download or point --raw-dir at it"
    )


def _read_batch(path: Path) -> Split:
    d = _read_dict(path)
    data, labels = d.get("data"), d.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' is missing or not a uint8 array")
    if not isinstance(labels, list):
        raise DataError(f"{path}: 'fine_labels' is missing or not a list")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: 'fine_labels' are not integers") from exc
    n = len(y)
    if data.size != n * ROW:
        raise DataError(
            f"{path}: 'data' holds {data.size} values, expected {n} x {ROW} for {n} labels"
        )
    if n and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{path}: fine_labels outside 0..{NUM_CLASSES - 1}")
    # Planar CHW rows -> HWC images.
    images = np.ascontiguousarray(data.reshape(n, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return Split(images=images, labels=y)


def _read_dict(path: Path) -> dict[str, object]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        obj = safe_load(f, str(path))
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    # Python 2 pickles give bytes keys under encoding="bytes"; newer copies may use str.
    return {_text(k): v for k, v in obj.items()}


def _text(value: object) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
