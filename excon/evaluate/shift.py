"""Distribution-shift test sets: the Hendrycks & Dietterich corruptions at severities 1-5.

Two sources of the same thing: the released CIFAR-100-C files when present (`read_cifar100c`),
otherwise the project's own corruptions of any prepared test set (`corrupt_images`, cached on
disk by `shift_set`). Both use the `imagecorruptions` implementation of the benchmark, so a set
made here follows the published recipe. This is data preparation, not a training hot path: the
library works on one numpy image at a time and we let it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import random
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import imagecorruptions
import numpy as np
from tqdm import tqdm

from excon.artifacts import atomic_path
from excon.data.errors import DataError

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# Hendrycks & Dietterich's held-out "validation" corruptions (also released in CIFAR-100-C).
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

MIN_SIDE = 32  # imagecorruptions refuses smaller images
CACHE_VERSION = 1
# These two draw from their own generator unless given a seed, so np.random.seed alone would
# leave them non-deterministic.
_SEEDED_BY_ARGUMENT = frozenset({"glass_blur", "impulse_noise"})


def _check_name_severity(name: str, severity: int) -> None:
    if name not in ALL_CORRUPTIONS:
        raise ValueError(
            f"unknown corruption {name!r}; expected one of {', '.join(ALL_CORRUPTIONS)}"
        )
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")


def image_seeds(n: int, name: str, severity: int, seed: int) -> np.ndarray:
    """One uint32 seed per image for (seed, name, severity).

    Image i's seed depends on its index only, not on n, so the first k images of a set are
    corrupted identically whatever the set size. crc32, not hash(): str hashes are salted per
    process.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    entropy = [seed, zlib.crc32(name.encode()), severity]
    return np.random.SeedSequence(entropy).generate_state(n, dtype=np.uint32)


def _pad_widths(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    return (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)


@contextlib.contextmanager
def _preserved_global_rngs() -> Iterator[None]:
    # The library draws from the global generators; seeding them must not change the
    # randomness of whoever called us.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt uint8 [N,H,W,C] images (C = 1 or 3) with `imagecorruptions.corrupt`.

    Deterministic: before each image, numpy's and Python's global generators are seeded from
    (seed, name, severity, image index) (see `image_seeds`), and glass_blur / impulse_noise get
    that seed as an argument; the callers' generator states are restored afterwards.
    Grayscale images are replicated to 3 channels and the first channel is kept: unlike the
    channel mean, it keeps each severity's per-pixel noise strength (the three replicas get
    independent noise). Images smaller than 32x32 (the library's minimum) are reflect-padded
    to 32 (padding split evenly, the extra pixel after), corrupted at 32 and cropped back, so
    e.g. a 28x28 image sees the corruption of its 32x32 reflection. Every library corruption
    clips to [0, 255] before its uint8 cast. Returns a new uint8 array of the input's shape.
    """
    _check_name_severity(name, severity)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 [N,H,W,C] array, got {_describe(images)}")
    n, h, w, c = images.shape
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    pad = _pad_widths(h, w)
    top, left = pad[0][0], pad[1][0]
    out = np.empty_like(images)
    seeds = image_seeds(n, name, severity, seed)
    with _preserved_global_rngs():
        for i, image_seed in enumerate(seeds.tolist()):
            img = images[i] if c == 3 else np.repeat(images[i], 3, axis=-1)
            img = np.pad(img, (*pad, (0, 0)), mode="reflect")
            np.random.seed(image_seed)
            random.seed(image_seed)
            kwargs = {"seed": image_seed} if name in _SEEDED_BY_ARGUMENT else {}
            res = imagecorruptions.corrupt(img, corruption_name=name, severity=severity, **kwargs)
            out[i] = res[top : top + h, left : left + w, :c]
    return out


def array_digest(*arrays: np.ndarray) -> str:
    """sha256 over the dtypes, shapes and bytes of `arrays` (e.g. to build a `source_key`)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape};".encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()


def _library_version() -> str:
    for dist in ("imagecorruptions-imaug", "imagecorruptions"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return f"{dist}=={importlib.metadata.version(dist)}"
    return "unknown"


def _cache_header(images: np.ndarray, name: str, severity: int, seed: int, key: str) -> dict:
    # Everything that determines the output; a new library version may corrupt differently.
    return {
        "version": CACHE_VERSION,
        "library": _library_version(),
        "source_key": key,
        "seed": int(seed),
        "n": int(images.shape[0]),
        "shape": list(images.shape),
        "name": name,
        "severity": int(severity),
    }


def _read_cache(
    path: Path, expected: dict, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached set if `path` holds exactly `expected` with intact data, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            images, cached_labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, truncated or not ours: recompute
    sha = header.pop("sha256", None) if isinstance(header, dict) else None
    if header != expected or sha != array_digest(images, cached_labels):
        return None
    if not np.array_equal(cached_labels, labels):
        return None
    return images, cached_labels


def shift_set(
    cache_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    name: str,
    severity: int,
    seed: int,
    source_key: str,
) -> tuple[np.ndarray, np.ndarray]:
    """`corrupt_images(images, name, severity, seed)` and `labels`, cached in `cache_dir`.

    The cache file `<name>_s<severity>.npz` is used only when its header (source_key, seed, n,
    shape, name, severity, cache and library versions) matches and its sha256 checks out;
    otherwise the set is recomputed and the file replaced atomically. `source_key` must change
    whenever the source images do (e.g. `array_digest` of the test images and subset indices).
    """
    _check_name_severity(name, severity)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be [N] with N = {len(images)}, got {_describe(labels)}")
    path = Path(cache_dir) / f"{name}_s{severity}.npz"
    expected = _cache_header(images, name, severity, seed, source_key)
    cached = _read_cache(path, expected, labels)
    if cached is not None:
        return cached
    corrupted = corrupt_images(images, name, severity, seed)
    header = {**expected, "sha256": array_digest(corrupted, labels)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, so numpy does not append ".npz" to the temp name.
        np.savez_compressed(f, images=corrupted, labels=labels, header=np.array(json.dumps(header)))
    return corrupted, labels


def iter_shift_sets(
    cache_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    severities: Sequence[int],
    seed: int,
    source_key: str,
) -> Iterator[tuple[str, int, np.ndarray, np.ndarray]]:
    """Yield (name, severity, images, labels) for every pair via `shift_set`, one set in
    memory at a time; a progress bar over the pairs on a terminal only."""
    pairs = [(name, s) for name in names for s in severities]
    for name, s in tqdm(pairs, desc="shift sets", leave=False, disable=not sys.stderr.isatty()):
        yield (name, s, *shift_set(cache_dir, images, labels, name, s, seed, source_key))


# CIFAR-100-C, as released: <root>/<corruption>.npy uint8 [5*M,32,32,3] with severity s in rows
# (s-1)*M : s*M (M = 10,000), and <root>/labels.npy [5*M], the M test labels repeated 5 times.
CIFAR_C_LABELS = "labels.npy"
CIFAR_C_SHAPE = (32, 32, 3)


def cifar100c_available(root: Path) -> list[str]:
    """The corruptions whose `<name>.npy` file is present under `root`, in ALL_CORRUPTIONS order."""
    return [name for name in ALL_CORRUPTIONS if (Path(root) / f"{name}.npy").is_file()]


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"CIFAR-100-C: missing {path}")
    try:
        # mmap: a corruption file is 150 MB and we need one fifth of it.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"CIFAR-100-C: {path} is not a readable .npy array ({e})") from None


def read_cifar100c(root: Path, name: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [M,32,32,3] and labels int64 [M] of one corruption at one severity.

    M is the file length / 5 (10,000 for the release). Raises DataError (one line) for a
    missing file, a wrong shape or dtype, mismatched lengths, or labels that are not the same
    M labels repeated 5 times.
    """
    _check_name_severity(name, severity)
    root = Path(root)
    images = _open_npy(root / f"{name}.npy")
    labels = _open_npy(root / CIFAR_C_LABELS)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != CIFAR_C_SHAPE:
        raise DataError(
            f"CIFAR-100-C: {root / name}.npy must be uint8 [N,32,32,3], got {_describe(images)}"
        )
    n = len(images)
    if n == 0 or n % len(SEVERITIES):
        raise DataError(
            f"CIFAR-100-C: {root / name}.npy has {n} rows, not a positive multiple of 5"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"CIFAR-100-C: {root / CIFAR_C_LABELS} must be integer [N], got {_describe(labels)}"
        )
    if len(labels) != n:
        raise DataError(
            f"CIFAR-100-C: {root / CIFAR_C_LABELS} has {len(labels)} labels"
            f" for {n} images in {name}.npy"
        )
    m = n // len(SEVERITIES)
    per_severity = np.asarray(labels).reshape(len(SEVERITIES), m)
    if not (per_severity == per_severity[0]).all():
        raise DataError(
            f"CIFAR-100-C: {root / CIFAR_C_LABELS} is not one label set repeated 5 times"
        )
    lo = (severity - 1) * m
    # Copies, so no open memory map outlives the call.
    return np.array(images[lo : lo + m]), per_severity[severity - 1].astype(np.int64)


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {list(x.shape)}"
    return type(x).__name__
