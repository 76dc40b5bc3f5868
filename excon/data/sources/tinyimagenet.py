"""Tiny ImageNet in its original `tiny-imagenet-200` folder format.

wnids.txt lists the 200 class ids (label order); words.txt maps ids to synonyms;
train/<wnid>/images/*.JPEG with train/<wnid>/<wnid>_boxes.txt; val/images/*.JPEG with
val/val_annotations.txt (file, wnid, x0, y0, x1, y1; tab-separated). The official val set
has labels (the official test set does not), so it becomes our test split; our val split
is carved from train.
"""

from pathlib import Path

import numpy as np

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split, with_val_from_train
from excon.data.sources.download import download_and_extract
from excon.data.sources.images import IMAGE_EXTENSIONS, confine_files, load_rgb_many
from excon.fs import confined

NAME = "tinyimagenet"
BASE_FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
SIDE = 64

Box = tuple[int, int, int, int]


def download_tinyimagenet(raw_dir: Path) -> None:
    """Fetch and unpack the official zip into `raw_dir` unless it is already unpacked."""
    if (raw_dir / BASE_FOLDER / "wnids.txt").is_file():
        return
    download_and_extract(URL, raw_dir, ARCHIVE, ZIP_MD5, BASE_FOLDER)


def read_tinyimagenet(
    raw_dir: Path, seed: int = 0, val_fraction: float = 0.1, workers: int | None = None
) -> RawDataset:
    """Read train (with boxes when every class has its boxes file) and official val."""
    root = find_root(Path(raw_dir))
    wnids = _read_wnids(root / "wnids.txt")
    class_names = _class_names(root / "words.txt", wnids)
    index = {w: i for i, w in enumerate(wnids)}

    train_paths, train_labels, train_boxes = _train_items(root, wnids)
    test_paths, test_labels, test_boxes = _val_items(root, index)
    confine_files(root, [*train_paths, *test_paths])

    train = Split(
        images=load_rgb_many(train_paths, SIDE, workers),
        labels=np.asarray(train_labels, dtype=np.int64),
        boxes=None if train_boxes is None else np.asarray(train_boxes, dtype=np.int64),
    )
    test = Split(
        images=load_rgb_many(test_paths, SIDE, workers),
        labels=np.asarray(test_labels, dtype=np.int64),
        boxes=np.asarray(test_boxes, dtype=np.int64).reshape(-1, 4),
    )
    return with_val_from_train(NAME, class_names, train, test, val_fraction, seed, BASE_FOLDER)


def find_root(raw_dir: Path) -> Path:
    """`raw_dir/tiny-imagenet-200`, or `raw_dir` itself when it is that folder."""
    for candidate in (raw_dir / BASE_FOLDER, raw_dir):
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise DataError(
        f"{raw_dir}: no {BASE_FOLDER}/ folder with wnids.txt; "
        "pass --download or point --raw-dir at it"
    )


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in _lines(path) if line.strip()]
    if not wnids:
        raise DataError(f"{path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: duplicate class ids")
    return wnids


def _class_names(words: Path, wnids: list[str]) -> list[str]:
    """First synonym of each wnid; a name shared by two wnids gets the wnid appended."""
    wanted = set(wnids)
    first: dict[str, str] = {}
    for line in _lines(words):
        wnid, _, synonyms = line.partition("\t")
        if wnid in wanted:
            first[wnid] = synonyms.split(",")[0].strip()
    missing = [w for w in wnids if not first.get(w)]
    if missing:
        raise DataError(f"{words}: no name for {len(missing)} class ids, e.g. {missing[0]}")
    names = [first[w] for w in wnids]
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids, strict=True)]


def _train_items(root: Path, wnids: list[str]) -> tuple[list[Path], list[int], list[Box] | None]:
    paths: list[Path] = []
    labels: list[int] = []
    boxes: list[Box] = []
    box_files = [root / "train" / w / f"{w}_boxes.txt" for w in wnids]
    have_boxes = [f.is_file() for f in box_files]
    if any(have_boxes) and not all(have_boxes):
        missing = box_files[have_boxes.index(False)]
        raise DataError(f"{missing}: missing, while other classes have their boxes file")
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        files = _image_files(folder)
        if not files:
            raise DataError(f"{folder}: no training images for class {wnid}")
        paths += files
        labels += [label] * len(files)
        if all(have_boxes):
            table = _box_table(box_files[label])
            for p in files:
                if p.name not in table:
                    raise DataError(f"{box_files[label]}: no box for {p.name}")
                boxes.append(table[p.name])
    return paths, labels, boxes if all(have_boxes) else None


def _val_items(root: Path, index: dict[str, int]) -> tuple[list[Path], list[int], list[Box]]:
    ann = root / "val" / "val_annotations.txt"
    images = root / "val" / "images"
    paths: list[Path] = []
    labels: list[int] = []
    boxes: list[Box] = []
    for n, line in enumerate(_lines(ann), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 6:
            raise DataError(f"{ann}:{n}: expected 6 tab-separated fields, got {len(fields)}")
        fname, wnid = fields[0], fields[1]
        if wnid not in index:
            raise DataError(f"{ann}:{n}: class id {wnid} is not in wnids.txt")
        # A name is a file of val/images: an absolute one or one with `..` is refused.
        confined(images, fname, f"{ann}:{n}", error=DataError)
        paths.append(images / fname)
        labels.append(index[wnid])
        boxes.append(_box(fields[2:6], f"{ann}:{n}"))
    if not paths:
        raise DataError(f"{ann}: no annotated images")
    return paths, labels, boxes


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _box_table(path: Path) -> dict[str, Box]:
    table = {}
    for n, line in enumerate(_lines(path), start=1):
        if line.strip():
            fields = line.split("\t")
            table[fields[0]] = _box(fields[1:5], f"{path}:{n}")
    return table


def _box(fields: list[str], where: str) -> Box:
    try:
        x0, y0, x1, y1 = (int(v) for v in fields)
    except ValueError as exc:
        raise DataError(f"{where}: expected 4 integer box coordinates, got {fields}") from exc
    return x0, y0, x1, y1


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from exc
