import pickle

import numpy as np
import pytest

from excon.data.errors import DataError
from excon.data.prepare import prepare_dataset
from excon.data.prepared import load_prepared
from excon.data.sources.cifar100 import read_cifar100


@pytest.fixture
def cifar(tmp_path, formats):
    raw = tmp_path / "raw"
    return raw, formats.write_cifar100(raw)


def test_round_trip(tmp_path, cifar, no_download):
    raw, written = cifar
    manifest = prepare_dataset("cifar100", tmp_path / "out", raw_dir=raw, val_fraction=0.25)
    assert manifest["splits"] == {"train": 300, "val": 100, "test": 200}
    ds = load_prepared(tmp_path / "out")
    assert ds.class_names == [f"fine{i:02d}" for i in range(100)]
    assert (ds.channels, ds.image_size) == (3, (32, 32))
    test = ds.split("test")
    assert np.array_equal(test.images, written["test_images"])
    assert np.array_equal(test.labels, written["test_labels"])
    assert test.masks is None and test.boxes is None
    train, val = ds.split("train"), ds.split("val")
    assert np.bincount(val.labels).tolist() == [1] * 100  # stratified carve-out
    images = np.concatenate([train.images, val.images])
    labels = np.concatenate([train.labels, val.labels])
    order = np.lexsort(images.reshape(len(images), -1).T)
    want = np.lexsort(written["train_images"].reshape(400, -1).T)
    assert np.array_equal(images[order], written["train_images"][want])
    assert np.array_equal(labels[order], written["train_labels"][want])


def test_raw_dir_can_be_the_cifar_folder_itself(cifar):
    raw, _ = cifar
    a = read_cifar100(raw, val_fraction=0.25)
    b = read_cifar100(raw / "cifar-100-python", val_fraction=0.25)
    assert np.array_equal(a.splits["val"].images, b.splits["val"].images)


def test_python3_str_keyed_copy_is_read(tmp_path, cifar):
    # e.g. a copy re-saved from Python 3 (str keys, numpy 2 pickle): same content
    raw, written = cifar
    root = raw / "cifar-100-python"
    n = len(written["test_labels"])
    batch = {
        "data": written["test_images"].transpose(0, 3, 1, 2).reshape(n, -1),
        "fine_labels": written["test_labels"].tolist(),
    }
    (root / "test").write_bytes(pickle.dumps(batch, protocol=5))
    ds = read_cifar100(raw, val_fraction=0.25)
    assert np.array_equal(ds.splits["test"].images, written["test_images"])


def test_missing_folder_mentions_download(tmp_path, no_download):
    with pytest.raises(DataError, match=r"no cifar-100-python/ folder .* --download"):
        prepare_dataset("cifar100", tmp_path / "out", raw_dir=tmp_path)


def test_download_uses_torchvision_then_reads_files(tmp_path, monkeypatch, formats):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, filename, md5))
        formats.write_cifar100(tmp_path / download_root)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    prepare_dataset(
        "cifar100", tmp_path / "out", raw_dir=tmp_path / "dl", download=True, val_fraction=0.25
    )
    assert calls == [
        (
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
        )
    ]
    assert load_prepared(tmp_path / "out").num_classes == 100


def test_truncated_pickle_leaves_no_output(tmp_path, cifar):
    raw, _ = cifar
    train = raw / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:100_000])
    with pytest.raises(DataError, match=r"cifar-100-python/train: truncated or corrupt file"):
        prepare_dataset("cifar100", tmp_path / "out", raw_dir=raw, val_fraction=0.25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_failing_source_keeps_existing_prepared_dir(tmp_path, cifar):
    raw, _ = cifar
    out = tmp_path / "out"
    good = prepare_dataset("cifar100", out, raw_dir=raw, val_fraction=0.25)
    (raw / "cifar-100-python" / "test").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError):
        prepare_dataset("cifar100", out, raw_dir=raw, val_fraction=0.25)
    assert load_prepared(out).manifest == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def test_malicious_pickle_is_refused(tmp_path, cifar, formats):
    raw, _ = cifar
    marker = tmp_path / "pwned"
    (raw / "cifar-100-python" / "meta").write_bytes(pickle.dumps(formats.Evil(marker), protocol=2))
    with pytest.raises(
        DataError, match=r"meta: unsafe pickle, not loaded \(refusing to load global"
    ):
        read_cifar100(raw)
    assert not marker.exists()


def _rewrite(path, formats, **changes):
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    batch.update({k.encode(): v for k, v in changes.items()})
    path.write_bytes(formats.py2_pickle(batch))
    return batch


def test_label_length_mismatch(cifar, formats):
    raw, written = cifar
    labels = written["test_labels"].tolist()[:-1]
    _rewrite(raw / "cifar-100-python" / "test", formats, fine_labels=labels)
    with pytest.raises(DataError, match=r"test: 'data' holds 614400 values, expected 199 x 3072"):
        read_cifar100(raw)


def test_wrong_class_count(cifar, formats):
    raw, _ = cifar
    names = [f"n{i}".encode() for i in range(99)]
    _rewrite(raw / "cifar-100-python" / "meta", formats, fine_label_names=names)
    with pytest.raises(DataError, match=r"meta: expected 100 fine_label_names, found 99"):
        read_cifar100(raw)


def test_label_out_of_range(cifar, formats):
    raw, written = cifar
    labels = written["test_labels"].tolist()
    labels[3] = 100
    _rewrite(raw / "cifar-100-python" / "test", formats, fine_labels=labels)
    with pytest.raises(DataError, match=r"fine_labels outside 0..99"):
        read_cifar100(raw)
