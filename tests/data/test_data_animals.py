import gzip
import pickle

import numpy as np
import pytest

from excon.data.errors import DataError
from excon.data.prepare import prepare_dataset
from excon.data.prepared import load_prepared
from excon.data.sources import animals
from excon.data.sources.animals import CLASS_NAMES, read_animals

# Needs `pip install --no-deps animal-mnist==0.4` (a pinned dev dependency of this project).
pytest.importorskip("animal_mnist.data")


def test_real_embedded_animals(tmp_path):
    manifest = prepare_dataset("animals", tmp_path / "animals")
    assert manifest["splits"] == {"train": 8000, "val": 1000, "test": 1000}
    ds = load_prepared(tmp_path / "animals")
    assert ds.class_names == CLASS_NAMES and ds.num_classes == 10
    assert (ds.channels, ds.image_size) == (1, (28, 28))
    for name, per_class in (("train", 800), ("val", 100), ("test", 100)):
        split = ds.split(name)
        assert np.bincount(split.labels).tolist() == [per_class] * 10
        assert np.array_equal(split.masks, (split.images[..., 0] > 0).astype(np.uint8))
    assert 0.2 < ds.mean[0] < 0.35 and 0.3 < ds.std[0] < 0.5
    assert manifest["source"]["files"] == animals.EXPECTED_SHA256


def test_fixture_round_trip(tmp_path, animals_raw):
    root, info = animals_raw
    prepare_dataset("animals", tmp_path / "out", raw_dir=root, seed=5)
    ds = load_prepared(tmp_path / "out")
    images, labels = info["images"], info["labels"]
    seen = []
    for name, per_class in (("train", 8), ("val", 1), ("test", 1)):
        split = ds.split(name)
        assert np.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
        assert np.array_equal(split.masks, split.images[..., 0] > 0)
        # every stored image is one of the originals with the same label
        for img, lab in zip(split.images[..., 0], split.labels, strict=True):
            (idx,) = np.flatnonzero((images == img).all(axis=(1, 2)))
            assert labels[idx] == lab
            seen.append(idx)
    assert sorted(seen) == list(range(100))


def test_split_depends_only_on_seed(animals_raw):
    root, _ = animals_raw
    a, b = read_animals(root, seed=1), read_animals(root, seed=1)
    c = read_animals(root, seed=2)
    assert np.array_equal(a.splits["val"].images, b.splits["val"].images)
    assert not np.array_equal(a.splits["val"].images, c.splits["val"].images)


def test_wrong_checksum_is_refused(tmp_path, animals_raw):
    root, info = animals_raw
    with gzip.open(root / "animal_label_version_3.gz", "wb") as f:
        pickle.dump(np.roll(info["labels"], 1), f, protocol=4)
    with pytest.raises(DataError, match=r"animal_label_version_3.gz: sha256 .* does not match"):
        prepare_dataset("animals", tmp_path / "out", raw_dir=root)
    assert not (tmp_path / "out").exists()


def test_default_checksums_refuse_other_files(tmp_path, formats):
    root = tmp_path / "copy"
    formats.write_animals(root)
    with pytest.raises(DataError, match=r"does not match the published"):
        read_animals(root)


def test_malicious_pickle_is_refused(tmp_path, formats):
    root = tmp_path / "evil"
    info = formats.write_animals(root)
    marker = tmp_path / "pwned"
    with gzip.open(root / "animal_data_version_3.gz", "wb") as f:
        pickle.dump(formats.Evil(marker), f)
    expected = {
        **info["sha256"],
        "animal_data_version_3.gz": formats.sha256(root / "animal_data_version_3.gz"),
    }
    with pytest.raises(
        DataError, match=r"unsafe pickle, not loaded \(refusing to load global posix.system"
    ):
        read_animals(root, expected_sha256=expected)
    assert not marker.exists()


def test_truncated_gzip(tmp_path, formats):
    root = tmp_path / "cut"
    info = formats.write_animals(root)
    path = root / "animal_data_version_3.gz"
    path.write_bytes(path.read_bytes()[:5000])
    expected = {**info["sha256"], path.name: formats.sha256(path)}
    with pytest.raises(DataError, match=r"truncated or corrupt file"):
        read_animals(root, expected_sha256=expected)


def test_label_count_mismatch(tmp_path, formats):
    root = tmp_path / "short"
    info = formats.write_animals(root)
    path = root / "animal_label_version_3.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(info["labels"][:-3], f, protocol=4)
    expected = {**info["sha256"], path.name: formats.sha256(path)}
    with pytest.raises(DataError, match=r"97 labels for 100 images"):
        read_animals(root, expected_sha256=expected)


def test_missing_package(monkeypatch):
    monkeypatch.setattr(animals.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps animal-mnist==0.4"):
        read_animals()
