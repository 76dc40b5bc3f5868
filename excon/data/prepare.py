"""`excon prepare`: read an original dataset, optionally subsample, write the prepared dir."""

from pathlib import Path

from excon.config import DATASETS
from excon.data.errors import DataError
from excon.data.prepared import SPLITS, RawDataset, preparing, write_prepared
from excon.data.sources.animals import read_animals
from excon.data.sources.cifar100 import download_cifar100, read_cifar100
from excon.data.sources.imagefolder import read_imagefolder
from excon.data.sources.tinyimagenet import download_tinyimagenet, read_tinyimagenet
from excon.data.splits import subsample_per_class

# Where downloads go (and are looked for) when no raw_dir is given; relative to the
# working directory, which is the repository root for DVC stages.
DEFAULT_RAW_ROOT = Path("data/raw")


def prepare_dataset(
    name: str,
    out: Path,
    raw_dir: Path | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int = 32,
    limit_per_class: int | None = None,
) -> dict:
    """Prepare dataset `name` into `out` and return its manifest.

    `raw_dir`: the original files (animals: defaults to the installed package; cifar100 and
    tinyimagenet: defaults to data/raw/<name>; imagefolder: required). `download` fetches
    cifar100/tinyimagenet first. `test_fraction` applies where no official test split
    exists (animals, imagefolder); `image_size` to imagefolder only (the others keep their
    native size). `limit_per_class` keeps at most that many seeded-random items per class
    in every split, for quick runs.
    """
    # Locked from the start: a second `prepare` of the same `out` stops at once, not after
    # reading the whole source.
    with preparing(Path(out)):
        ds = read_raw(name, raw_dir, download, seed, val_fraction, test_fraction, image_size)
        if limit_per_class is not None:
            ds = limit_classes(ds, limit_per_class, seed)
        return write_prepared(ds, Path(out), lock=False)


def read_raw(
    name: str,
    raw_dir: Path | None = None,
    download: bool = False,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    image_size: int = 32,
) -> RawDataset:
    """Dispatch to the reader of `name` (see prepare_dataset for the arguments)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    # val_fraction 0: the whole training split trains (study.protocol=reference); val is empty
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be "
            "non-negative and sum to less than 1"
        )
    if image_size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    raw = None if raw_dir is None else Path(raw_dir)

    if name == "animals":
        return read_animals(raw, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    if name == "imagefolder":
        if raw is None:
            raise DataError("imagefolder needs a raw directory of <class>/<image> folders")
        return read_imagefolder(raw, image_size, seed, val_fraction, test_fraction)
    raw = DEFAULT_RAW_ROOT / name if raw is None else raw
    if name == "cifar100":
        if download:
            download_cifar100(raw)
        return read_cifar100(raw, seed, val_fraction)
    if download:
        download_tinyimagenet(raw)
    return read_tinyimagenet(raw, seed, val_fraction)


def limit_classes(ds: RawDataset, limit: int, seed: int) -> RawDataset:
    """A copy of `ds` with at most `limit` items per class in each split."""
    if limit < 1:
        raise DataError(f"limit_per_class must be >= 1, got {limit}")
    splits = {
        s: ds.splits[s].take(subsample_per_class(ds.splits[s].labels, limit, seed)) for s in SPLITS
    }
    return RawDataset(ds.name, ds.class_names, splits, {**ds.source, "limit_per_class": limit})
