"""Distribution-shift sets: every corruption on small gray and RGB images, cache, CIFAR-100-C."""

from __future__ import annotations

import random
import zipfile

import imagecorruptions
import numpy as np
import pytest

from excon.data.errors import DataError
from excon.evaluate import shift
from excon.evaluate.shift import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    SEVERITIES,
    array_digest,
    cifar100c_available,
    corrupt_images,
    image_seeds,
    iter_shift_sets,
    read_cifar100c,
    shift_set,
)

GRAY_28 = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
RGB_32 = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def test_corruption_lists_match_the_library():
    assert list(BENCHMARK_CORRUPTIONS) == imagecorruptions.get_corruption_names("common")
    assert list(EXTRA_CORRUPTIONS) == imagecorruptions.get_corruption_names("validation")
    assert len(BENCHMARK_CORRUPTIONS) == 15 and len(ALL_CORRUPTIONS) == 19


@pytest.mark.parametrize("images", [GRAY_28, RGB_32], ids=["gray28", "rgb32"])
@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_every_corruption_and_severity_runs_deterministically(name, images):
    for severity in SEVERITIES:
        out = corrupt_images(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.array_equal(out, corrupt_images(images, name, severity, seed=3))
    # Saturation is undefined for gray pixels: the one corruption that leaves them as they are.
    if name == "saturate" and images.shape[-1] == 1:
        assert np.array_equal(out, images)
    else:
        assert np.abs(out.astype(int) - images).mean() > 5, "severity 5 should change the images"


def test_seed_changes_random_corruptions_only():
    a = corrupt_images(RGB_32, "gaussian_noise", 3, seed=0)
    assert not np.array_equal(a, corrupt_images(RGB_32, "gaussian_noise", 3, seed=1))
    # glass_blur and impulse_noise take their seed as an argument, not from np.random.
    for name in ("glass_blur", "impulse_noise"):
        assert not np.array_equal(
            corrupt_images(RGB_32, name, 3, seed=0), corrupt_images(RGB_32, name, 3, seed=1)
        )
    b = corrupt_images(RGB_32, "contrast", 3, seed=0)
    assert np.array_equal(b, corrupt_images(RGB_32, "contrast", 3, seed=1))


def test_image_result_depends_on_its_index_not_on_the_set_size():
    full = corrupt_images(RGB_32, "frost", 4, seed=7)
    assert np.array_equal(corrupt_images(RGB_32[:1], "frost", 4, seed=7), full[:1])
    assert np.array_equal(image_seeds(5, "frost", 4, 7)[:2], image_seeds(2, "frost", 4, 7))
    # Distinct streams per corruption and per severity, and per image.
    seeds = image_seeds(3, "frost", 4, 7)
    assert len(set(seeds.tolist())) == 3
    assert not np.array_equal(seeds, image_seeds(3, "fog", 4, 7))
    assert not np.array_equal(seeds, image_seeds(3, "frost", 3, 7))


def test_seeding_pinned_against_the_library_called_by_hand():
    expected = []
    for img, s in zip(RGB_32, image_seeds(2, "gaussian_noise", 2, seed=5).tolist(), strict=True):
        np.random.seed(s)
        expected.append(imagecorruptions.corrupt(img, corruption_name="gaussian_noise", severity=2))
    assert np.array_equal(corrupt_images(RGB_32, "gaussian_noise", 2, seed=5), np.stack(expected))


def test_callers_global_generators_are_left_alone():
    np.random.seed(11)
    random.seed(11)
    expected = (np.random.rand(), random.random())
    np.random.seed(11)
    random.seed(11)
    corrupt_images(RGB_32, "snow", 2, seed=0)
    assert (np.random.rand(), random.random()) == expected


def test_small_images_are_reflect_padded_to_32_then_cropped():
    # 28 -> 2 + 2 pixels; 29 -> 1 before, 2 after (the odd pixel after).
    for size, before in [(28, 2), (29, 1)]:
        img = np.random.default_rng(size).integers(0, 256, (1, size, size, 1), dtype=np.uint8)
        after = 32 - size - before
        padded = np.pad(
            np.repeat(img[0], 3, axis=-1), ((before, after), (before, after), (0, 0)), "reflect"
        )
        assert padded.shape == (32, 32, 3)
        # contrast uses the image mean, defocus blur the neighbours: both see the padding.
        for name in ("contrast", "defocus_blur"):
            full = imagecorruptions.corrupt(padded, corruption_name=name, severity=5)
            want = full[before : before + size, before : before + size, :1]
            assert np.array_equal(corrupt_images(img, name, 5, seed=0)[0], want)


def test_golden_brightness_and_contrast():
    # brightness s1 adds 0.1 to V (gray: every channel), uint8 truncation: 100 -> 125.5 -> 125.
    gray = np.array([100, 240], dtype=np.uint8).reshape(2, 1, 1, 1) * np.ones(
        (1, 32, 32, 1), np.uint8
    )
    out = corrupt_images(gray, "brightness", 1, seed=0)
    assert (out[0] == 125).all() and (out[1] == 255).all()
    # contrast s5: (x - mean) * 0.05 + mean; halves 0 / 210 -> mean 105 -> 99.75, 110.25.
    rgb = np.zeros((1, 32, 32, 3), np.uint8)
    rgb[:, :, 16:] = 210
    out = corrupt_images(rgb, "contrast", 5, seed=0)
    assert (out[:, :, :16] == 99).all() and (out[:, :, 16:] == 110).all()


def test_gray_keeps_the_per_pixel_noise_strength():
    # Severity 5 Gaussian noise has sigma 0.38 * 255 = 97 (less after clipping to 0-255); the
    # mean of three independent channels would divide it by sqrt(3) (about 47 here).
    flat = np.full((4, 28, 28, 1), 128, np.uint8)
    noisy = corrupt_images(flat, "gaussian_noise", 5, seed=0).astype(float)
    assert 75 < noisy.std() < 97


@pytest.mark.parametrize(
    ("images", "name", "severity", "seed"),
    [
        (RGB_32.astype(np.float32), "fog", 1, 0),
        (RGB_32[..., :2], "fog", 1, 0),
        (RGB_32[0], "fog", 1, 0),
        (RGB_32, "blur", 1, 0),
        (RGB_32, "fog", 0, 0),
        (RGB_32, "fog", 6, 0),
        (RGB_32, "fog", 1, -1),
    ],
)
def test_bad_arguments_raise(images, name, severity, seed):
    with pytest.raises(ValueError):
        corrupt_images(images, name, severity, seed)


# ---- cache ----


def _labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 3


def _fail(*args, **kwargs):
    raise AssertionError("recomputed although the cache should have been used")


def test_cache_hit_returns_identical_arrays_without_recomputing(tmp_path, monkeypatch):
    labels = _labels(2)
    images, got_labels = shift_set(tmp_path, GRAY_28, labels, "fog", 3, 0, "k1")
    assert np.array_equal(images, corrupt_images(GRAY_28, "fog", 3, 0))
    assert np.array_equal(got_labels, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fog_s3.npz"]  # no temp file left
    np.load(tmp_path / "fog_s3.npz", allow_pickle=False).close()

    monkeypatch.setattr(shift, "corrupt_images", _fail)
    again, again_labels = shift_set(tmp_path, GRAY_28, labels, "fog", 3, 0, "k1")
    assert np.array_equal(again, images) and again.dtype == np.uint8
    assert np.array_equal(again_labels, labels)


def _counting(monkeypatch) -> list:
    calls = []
    real = shift.corrupt_images

    def counted(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(shift, "corrupt_images", counted)
    return calls


@pytest.mark.parametrize(
    "change",
    [
        {"source_key": "k2"},
        {"seed": 1},
        {"images": RGB_32[:, :28, :28, :1]},  # same shape, other pixels: caught only by the key
        {"labels": _labels(2) + 1},
    ],
    ids=["source_key", "seed", "images_same_key", "labels"],
)
def test_cache_invalidation(tmp_path, monkeypatch, change):
    args = {"images": GRAY_28, "labels": _labels(2), "seed": 0, "source_key": "k1"}
    first, _ = shift_set(tmp_path, name="gaussian_noise", severity=2, **args)
    calls = _counting(monkeypatch)
    second, _ = shift_set(tmp_path, name="gaussian_noise", severity=2, **{**args, **change})
    if "images" in change:
        # The caller's key is the contract: unchanged key, so the cached set comes back.
        assert calls == [] and np.array_equal(second, first)
    else:
        assert calls == [("gaussian_noise", 2, {**args, **change}["seed"])]
        # And the new set replaced the old: a third call with the new arguments is a hit.
        shift_set(tmp_path, name="gaussian_noise", severity=2, **{**args, **change})
        assert len(calls) == 1


def test_damaged_cache_files_are_recomputed(tmp_path, monkeypatch):
    labels = _labels(2)
    good, _ = shift_set(tmp_path, RGB_32, labels, "pixelate", 5, 0, "k")
    path = tmp_path / "pixelate_s5.npz"
    calls = _counting(monkeypatch)

    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert np.array_equal(shift_set(tmp_path, RGB_32, labels, "pixelate", 5, 0, "k")[0], good)
    assert len(calls) == 1

    # A well-formed file whose data does not match its recorded sha256.
    with np.load(path, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    parts["images"] = parts["images"] ^ 1
    np.savez(path, **parts)
    assert np.array_equal(shift_set(tmp_path, RGB_32, labels, "pixelate", 5, 0, "k")[0], good)
    assert len(calls) == 2
    assert zipfile.is_zipfile(path)


def test_iter_shift_sets_covers_every_pair_and_reuses_the_cache(tmp_path, monkeypatch):
    labels = _labels(2)
    pairs = [
        (n, s)
        for n, s, *_ in iter_shift_sets(tmp_path, GRAY_28, labels, ["fog", "snow"], [1, 5], 0, "k")
    ]
    assert pairs == [("fog", 1), ("fog", 5), ("snow", 1), ("snow", 5)]
    monkeypatch.setattr(shift, "corrupt_images", _fail)
    for name, severity, images, got in iter_shift_sets(
        tmp_path, GRAY_28, labels, ["snow"], [5], 0, "k"
    ):
        assert (name, severity) == ("snow", 5)
        assert images.shape == GRAY_28.shape and np.array_equal(got, labels)


def test_array_digest_sees_bytes_dtype_and_shape():
    a = np.arange(6, dtype=np.uint8)
    assert array_digest(a) == array_digest(a.copy())
    assert array_digest(a) != array_digest(a.reshape(2, 3))
    assert array_digest(a) != array_digest(a.astype(np.int8))
    assert array_digest(a) != array_digest(a[::-1])


# ---- CIFAR-100-C ----

M = 4  # images per severity in the fixture (10,000 in the release)


def _write_cifar_c(root, names=("fog", "snow"), m=M):
    root.mkdir(exist_ok=True)
    base = np.array([3, 1, 4, 1][:m] + [5] * max(0, m - 4), dtype=np.uint8)
    np.save(root / "labels.npy", np.tile(base, 5))
    for k, name in enumerate(names):
        # Pixel value encodes (file, row) so slicing mistakes show.
        rows = np.arange(5 * m, dtype=np.uint8) + 50 * k
        np.save(
            root / f"{name}.npy", np.broadcast_to(rows[:, None, None, None], (5 * m, 32, 32, 3))
        )
    return base


def test_read_cifar100c_slices_the_severity_rows(tmp_path):
    base = _write_cifar_c(tmp_path)
    images, labels = read_cifar100c(tmp_path, "snow", 3)
    assert images.shape == (M, 32, 32, 3) and images.dtype == np.uint8
    assert type(images) is np.ndarray  # a copy, not a view of the memory map
    assert np.array_equal(images[:, 0, 0, 0], 50 + np.arange(2 * M, 3 * M))
    assert labels.dtype == np.int64 and np.array_equal(labels, base)
    first, _ = read_cifar100c(tmp_path, "fog", 1)
    assert np.array_equal(first[:, 5, 7, 2], np.arange(M))
    assert cifar100c_available(tmp_path) == ["snow", "fog"]  # ALL_CORRUPTIONS order
    assert cifar100c_available(tmp_path / "absent") == []


def _corrupt(root, what):
    if what == "missing_file":
        (root / "fog.npy").unlink()
    elif what == "missing_labels":
        (root / "labels.npy").unlink()
    elif what == "float_images":
        np.save(root / "fog.npy", np.zeros((5 * M, 32, 32, 3), np.float32))
    elif what == "wrong_size":
        np.save(root / "fog.npy", np.zeros((5 * M, 28, 28, 3), np.uint8))
    elif what == "not_multiple_of_5":
        np.save(root / "fog.npy", np.zeros((5 * M + 1, 32, 32, 3), np.uint8))
    elif what == "labels_length":
        np.save(root / "labels.npy", np.zeros(5 * M - 5, np.int64))
    elif what == "labels_not_repeated":
        labels = np.load(root / "labels.npy")
        labels[-1] += 1
        np.save(root / "labels.npy", labels)
    elif what == "float_labels":
        np.save(root / "labels.npy", np.zeros(5 * M, np.float32))
    elif what == "pickled":
        np.save(root / "fog.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    elif what == "garbage":
        (root / "fog.npy").write_bytes(b"not an npy file")


@pytest.mark.parametrize(
    "what",
    [
        "missing_file",
        "missing_labels",
        "float_images",
        "wrong_size",
        "not_multiple_of_5",
        "labels_length",
        "labels_not_repeated",
        "float_labels",
        "pickled",
        "garbage",
    ],
)
def test_read_cifar100c_bad_files_raise_one_line_data_error(tmp_path, what):
    _write_cifar_c(tmp_path)
    _corrupt(tmp_path, what)
    with pytest.raises(DataError) as err:
        read_cifar100c(tmp_path, "fog", 2)
    assert "\n" not in str(err.value) and "CIFAR-100-C" in str(err.value)


def test_read_cifar100c_rejects_unknown_names(tmp_path):
    _write_cifar_c(tmp_path)
    with pytest.raises(ValueError):
        read_cifar100c(tmp_path, "not_a_corruption", 1)
