"""Any folder of images laid out as `root/<class>/<image>` (torchvision's ImageFolder).

If `root/train` exists, `root/train`, `root/val` and `root/test` are separate trees with the
same class folders; a missing val or test tree is carved from train (stratified, seeded).
Images are converted to RGB and resized to a square `image_size`.
"""

from pathlib import Path

import numpy as np

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split
from excon.data.sources.images import IMAGE_EXTENSIONS, confine_files, load_rgb_many
from excon.data.splits import stratified_split

NAME = "imagefolder"


def read_imagefolder(
    raw_dir: Path,
    image_size: int = 32,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    workers: int | None = None,
) -> RawDataset:
    """Read one tree (all carved) or train/val/test trees (missing ones carved from train)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: image folder not found")
    layout = raw_dir / "train"
    trees = {"train": layout} if layout.is_dir() else {"train": raw_dir}
    if layout.is_dir():
        trees |= {s: raw_dir / s for s in ("val", "test") if (raw_dir / s).is_dir()}

    scanned = {split: _scan(tree, raw_dir) for split, tree in trees.items()}
    class_names = sorted(scanned["train"])
    for split, files in scanned.items():
        if sorted(files) != class_names:
            missing = sorted(set(class_names) - set(files))
            extra = sorted(set(files) - set(class_names))
            raise DataError(
                f"{trees[split]}: class folders differ from train "
                f"(missing {missing}, extra {extra})"
            )

    splits = {}
    for split, files in scanned.items():
        paths = [p for c in class_names for p in files[c]]
        labels = [i for i, c in enumerate(class_names) for _ in files[c]]
        splits[split] = Split(
            images=load_rgb_many(paths, image_size, workers),
            labels=np.asarray(labels, dtype=np.int64),
        )

    carve = [s for s in ("val", "test") if s not in splits]
    if carve:
        wanted = {"val": val_fraction, "test": test_fraction}
        fractions = [wanted[s] for s in carve]
        train = splits["train"]
        parts = stratified_split(train.labels, [1.0 - sum(fractions), *fractions], seed)
        for split, idx in zip(["train", *carve], parts, strict=True):
            splits[split] = train.take(idx)

    source = {
        "format": "imagefolder",
        "root": str(raw_dir),
        "image_size": image_size,
        "seed": seed,
        "carved": carve,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    return RawDataset(NAME, class_names, splits, source)


def _scan(tree: Path, root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files (searched recursively) under tree/<class>/; a symlink
    leading out of `root` is refused."""
    classes = sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{tree}: no class folders")
    found = {}
    for folder in classes:
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(f"{folder}: class folder has no images")
        confine_files(root, files)
        found[folder.name] = files
    return found
