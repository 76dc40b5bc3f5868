"""The prepared on-disk format: plain .npy arrays per split plus a checksummed manifest.

This directory is what DVC versions and what training reads; it never depends on the
original source formats.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from excon.data.errors import DataError
from excon.data.splits import stratified_split
from excon.fs import check_free_space, clean_leftovers, dir_lock, no_space_as_error

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
RERUN = "rerun `excon prepare`"
_FILE_RE = re.compile(r"^(train|val|test)_(images|labels|masks|boxes)\.npy$")
_OPTIONAL = ("masks", "boxes")
# Beyond the arrays themselves: .npy headers, the manifest, filesystem rounding.
SPACE_MARGIN = 4 * 2**20


@dataclass
class Split:
    """One split: images uint8 [N,H,W,C], labels int64 [N], optional masks and boxes."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None  # uint8 [N,H,W], 1 = foreground
    boxes: np.ndarray | None = None  # int64 [N,4], (x0, y0, x1, y1) in image pixels

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Split":
        """The items at `index`, in that order."""
        return Split(
            images=self.images[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            boxes=None if self.boxes is None else self.boxes[index],
        )

    def validate(self, name: str, num_classes: int) -> None:
        """Raise DataError (prefixed with `name`) unless dtypes, shapes and labels are sound."""
        img = self.images
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 4:
            raise DataError(f"{name}: images must be uint8 [N,H,W,C], got {_describe(img)}")
        n, h, w, c = img.shape
        if c not in (1, 3):
            raise DataError(f"{name}: images must have 1 or 3 channels, got {c}")
        lab = self.labels
        if not isinstance(lab, np.ndarray) or lab.dtype != np.int64 or lab.ndim != 1:
            raise DataError(f"{name}: labels must be int64 [N], got {_describe(lab)}")
        if len(lab) != n:
            raise DataError(f"{name}: {len(lab)} labels for {n} images")
        if n and (lab.min() < 0 or lab.max() >= num_classes):
            raise DataError(
                f"{name}: labels span [{lab.min()}, {lab.max()}] but num_classes is {num_classes}"
            )
        if self.masks is not None:
            m = self.masks
            if not isinstance(m, np.ndarray) or m.dtype != np.uint8 or m.shape != (n, h, w):
                raise DataError(f"{name}: masks must be uint8 {[n, h, w]}, got {_describe(m)}")
            if n and m.max() > 1:
                raise DataError(f"{name}: masks must hold only 0 and 1, found {m.max()}")
        if self.boxes is not None:
            b = self.boxes
            if not isinstance(b, np.ndarray) or b.dtype != np.int64 or b.shape != (n, 4):
                raise DataError(f"{name}: boxes must be int64 {[n, 4]}, got {_describe(b)}")
            x0, y0, x1, y1 = b.T
            ok = (x0 >= 0) & (x0 <= x1) & (x1 <= w) & (y0 >= 0) & (y0 <= y1) & (y1 <= h)
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise DataError(
                    f"{name}: box {bad} {b[bad].tolist()} is not inside the {w}x{h} image"
                )


@dataclass
class RawDataset:
    """What a source reader returns: named classes and the three splits, ready to write."""

    name: str
    class_names: list[str]
    splits: dict[str, Split]
    source: dict = field(default_factory=dict)  # provenance, copied into the manifest

    def validate(self) -> None:
        """Raise DataError unless the dataset can be written as a prepared directory."""
        names = self.class_names
        if not names or not all(isinstance(c, str) and c for c in names):
            raise DataError(f"{self.name}: class names must be non-empty strings")
        if len(set(names)) != len(names):
            raise DataError(f"{self.name}: class names are not unique")
        if sorted(self.splits) != sorted(SPLITS):
            raise DataError(f"{self.name}: splits must be {list(SPLITS)}, got {list(self.splits)}")
        shapes = set()
        for split_name in SPLITS:
            split = self.splits[split_name]
            split.validate(f"{self.name}: {split_name} split", len(names))
            # val_fraction 0 (study.protocol=reference): no val split, by request
            wanted_empty = split_name == "val" and self.source.get("val_fraction") == 0
            if len(split) == 0 and not wanted_empty:
                raise DataError(
                    f"{self.name}: {split_name} split is empty (too few images for the "
                    "requested fractions / limit)"
                )
            shapes.add(split.images.shape[1:])
        if len(shapes) != 1:
            raise DataError(f"{self.name}: splits have different image shapes {sorted(shapes)}")


def with_val_from_train(
    name: str,
    class_names: list[str],
    train: Split,
    test: Split,
    val_fraction: float,
    seed: int,
    source_format: str,
) -> RawDataset:
    """A dataset with an official train/test pair: val is carved from train (stratified,
    seeded) and the official test split is kept as is."""
    keep, val = stratified_split(train.labels, [1.0 - val_fraction, val_fraction], seed)
    splits = {"train": train.take(keep), "val": train.take(val), "test": test}
    source = {"format": source_format, "seed": seed, "val_fraction": val_fraction}
    return RawDataset(name, class_names, splits, source)


class PreparedDataset:
    """A loaded prepared directory; arrays are read (and checked) per split on demand."""

    def __init__(self, path: Path, manifest: dict, mmap: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        self._mmap = mmap
        self._cache: dict[str, Split] = {}

    @property
    def name(self) -> str:
        return self.manifest["dataset"]

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def mean(self) -> list[float]:
        return list(self.manifest["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.manifest["std"])

    @property
    def channels(self) -> int:
        return self.manifest["channels"]

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.manifest["image_size"]
        return h, w

    def split(self, name: str) -> Split:
        """Arrays of split `name` (train, val or test), validated against the manifest."""
        if name not in SPLITS:
            raise DataError(f"{self.path}: unknown split {name!r}; expected one of {SPLITS}")
        if name not in self._cache:
            files = self.manifest["files"]
            arrays = {
                kind: self._load(f"{name}_{kind}.npy")
                for kind in ("images", "labels", *_OPTIONAL)
                if f"{name}_{kind}.npy" in files
            }
            split = Split(**arrays)
            split.validate(f"{self.path}: {name} split", self.num_classes)
            expected = (self.manifest["splits"][name], *self.image_size, self.channels)
            if split.images.shape != expected:
                raise DataError(
                    f"{self.path}: {name}_images.npy has shape {list(split.images.shape)}, "
                    f"manifest says {list(expected)}; {RERUN}"
                )
            self._cache[name] = split
        return self._cache[name]

    def _load(self, fname: str) -> np.ndarray:
        try:
            return np.load(
                self.path / fname, allow_pickle=False, mmap_mode="r" if self._mmap else None
            )
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{self.path}: {fname} is unreadable ({exc}); {RERUN}") from exc


@contextlib.contextmanager
def preparing(out: Path) -> Iterator[None]:
    """Own `out` while it is (re)written: a lock beside it (`.<name>.lock` in its parent, which
    other datasets share), so a second writer stops at once, and removal of what a killed
    write of `out` left (`.<name>.tmp-*` staging folders, `.<name>.old-*` swapped-out copies).
    """
    out = Path(out)
    with dir_lock(out.parent, f"prepare {out}", name=f".{out.name}.lock"):
        _recover(out)
        yield


def _recover(out: Path) -> None:
    name = glob.escape(out.name)
    olds = sorted(out.parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not (out.exists() or out.is_symlink()):
        # Killed between the two renames of the swap: the previous version goes back.
        os.replace(olds.pop(), out)
        print(f"{out}: restored the previous version from an interrupted swap", file=sys.stderr)
    clean_leftovers(out.parent, patterns=(f".{name}.tmp-*", f".{name}.old-*"))


def write_prepared(ds: RawDataset, out: Path, lock: bool = True) -> dict:
    """Validate `ds`, write it as a prepared directory at `out` atomically; return the manifest.

    Files go to a temp dir beside `out` (same filesystem, so renames are atomic); `out` is
    only swapped at the end, so a failure at any point leaves a previous `out` untouched.
    A filesystem without room for the arrays is refused before anything is written, and a
    disk that fills up meanwhile is a one-line FsError. `lock=False`: the caller already holds
    `preparing(out)`.
    """
    ds.validate()
    out = Path(out)
    with preparing(out) if lock else contextlib.nullcontext():
        return _write_checked(ds, out)


def _write_checked(ds: RawDataset, out: Path) -> dict:
    needed = SPACE_MARGIN + sum(
        arr.nbytes
        for split in ds.splits.values()
        for arr in (split.images, split.labels, split.masks, split.boxes)
        if arr is not None
    )
    check_free_space(out, needed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with no_space_as_error(out, needed):
            return _write_files(ds, tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_files(ds: RawDataset, tmp: Path, out: Path) -> dict:
    """The arrays and the manifest into `tmp` (made here, mode from the umask), then `tmp`
    renamed to `out`."""
    tmp.mkdir()
    files = {}
    for split_name in SPLITS:
        split = ds.splits[split_name]
        for kind in ("images", "labels", *_OPTIONAL):
            arr = getattr(split, kind)
            if arr is None:
                continue
            fname = f"{split_name}_{kind}.npy"
            np.save(tmp / fname, np.ascontiguousarray(arr), allow_pickle=False)
            files[fname] = sha256_file(tmp / fname)
    train = ds.splits["train"].images
    mean, std = channel_stats(train)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": ds.name,
        "num_classes": len(ds.class_names),
        "class_names": list(ds.class_names),
        "image_size": [int(train.shape[1]), int(train.shape[2])],
        "channels": int(train.shape[3]),
        "mean": mean,
        "std": std,
        "splits": {s: len(ds.splits[s]) for s in SPLITS},
        "files": files,
        "source": ds.source,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _swap_into_place(tmp, out)
    return manifest


def load_prepared(path: Path, verify: bool = True, mmap: bool = False) -> PreparedDataset:
    """Open a prepared directory; with `verify`, check every file against its sha256 first."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: prepared dataset not found; run `excon prepare`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{path}: {MANIFEST} missing (incomplete or not prepared); {RERUN}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{manifest_path}: unreadable ({exc}); {RERUN}") from exc
    _check_manifest(manifest, path)
    for fname, digest in manifest["files"].items():
        if not (path / fname).is_file():
            raise DataError(f"{path}: {fname} listed in the manifest is missing; {RERUN}")
        if verify and sha256_file(path / fname) != digest:
            raise DataError(f"{path}: {fname} checksum mismatch (file changed or corrupt); {RERUN}")
    return PreparedDataset(path, manifest, mmap=mmap)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 [N,H,W,C] images, in 0-1 units."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    # Chunked so a large train split is never converted to float64 all at once.
    step = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(images), step):
        x = images[start : start + step].reshape(-1, c).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous version back
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _check_manifest(m: object, path: Path) -> None:
    def bad(what: str) -> DataError:
        return DataError(f"{path}/{MANIFEST}: {what}; {RERUN}")

    if not isinstance(m, dict):
        raise bad("not a JSON object")
    if m.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {m.get('format_version')!r}, expected {FORMAT_VERSION}")
    required = ("dataset", "num_classes", "class_names", "image_size", "channels", "mean", "std")
    missing = [k for k in (*required, "splits", "files") if k not in m]
    if missing:
        raise bad(f"missing keys {missing}")
    if not isinstance(m["class_names"], list) or len(m["class_names"]) != m["num_classes"]:
        raise bad("class_names does not match num_classes")
    c = m["channels"]
    if c not in (1, 3) or len(m["mean"]) != c or len(m["std"]) != c:
        raise bad("channels, mean and std disagree")
    if not isinstance(m["image_size"], list) or len(m["image_size"]) != 2:
        raise bad("image_size must be [H, W]")
    files, splits = m["files"], m["splits"]
    if not isinstance(files, dict) or not isinstance(splits, dict):
        raise bad("files and splits must be objects")
    for fname in files:
        # Only the known names, so a tampered manifest cannot point outside the directory.
        if not _FILE_RE.match(fname):
            raise bad(f"unexpected file name {fname!r}")
    for s in SPLITS:
        if not isinstance(splits.get(s), int):
            raise bad(f"no size for split {s!r}")
        for kind in ("images", "labels"):
            if f"{s}_{kind}.npy" not in files:
                raise bad(f"{s}_{kind}.npy not listed")


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {list(x.shape)}"
    return type(x).__name__
