import json

import numpy as np
import pytest

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split, load_prepared, write_prepared


def _split(n, num_classes=3, size=6, channels=3, seed=0, boxes=True):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % num_classes
    b = np.tile(np.array([[0, 1, 4, 5]], dtype=np.int64), (n, 1)) if boxes else None
    return Split(images, labels, masks=(images[..., 0] > 127).astype(np.uint8), boxes=b)


def _dataset(**kw):
    splits = {"train": _split(12, **kw), "val": _split(6, seed=1, **kw)}
    splits["test"] = _split(6, seed=2, **kw)
    return RawDataset("toy", ["a", "b", "c"], splits, {"seed": 0})


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_round_trip_and_manifest(tmp_path):
    ds = _dataset()
    manifest = write_prepared(ds, tmp_path / "toy")
    loaded = load_prepared(tmp_path / "toy")
    assert loaded.manifest == manifest == json.loads((tmp_path / "toy/manifest.json").read_text())
    assert manifest["splits"] == {"train": 12, "val": 6, "test": 6}
    assert sorted(manifest["files"]) == sorted(
        f"{s}_{k}.npy"
        for s in ("train", "val", "test")
        for k in ("images", "labels", "masks", "boxes")
    )
    assert (loaded.num_classes, loaded.class_names, loaded.channels) == (3, ["a", "b", "c"], 3)
    assert loaded.image_size == (6, 6)
    train = ds.splits["train"].images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(loaded.mean, train.mean(0))
    np.testing.assert_allclose(loaded.std, train.std(0))
    for name, split in ds.splits.items():
        got = loaded.split(name)
        for kind in ("images", "labels", "masks", "boxes"):
            assert np.array_equal(getattr(got, kind), getattr(split, kind))
    assert _leftovers(tmp_path) == []


def test_optional_arrays_and_mmap(tmp_path):
    ds = _dataset(boxes=False, channels=1)
    write_prepared(ds, tmp_path / "toy")
    loaded = load_prepared(tmp_path / "toy", mmap=True)
    split = loaded.split("val")
    assert split.boxes is None and split.masks is not None
    assert isinstance(split.images, np.memmap) and split.images.shape == (6, 6, 6, 1)


def test_writing_is_reproducible(tmp_path):
    a = write_prepared(_dataset(), tmp_path / "a")
    b = write_prepared(_dataset(), tmp_path / "b")
    assert a["files"] == b["files"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: setattr(s, "labels", s.labels[:-1]), "5 labels for 6 images"),
        (lambda s: setattr(s, "labels", s.labels + 5), "num_classes is 3"),
        (lambda s: setattr(s, "labels", s.labels.astype(np.int32)), "labels must be int64"),
        (lambda s: setattr(s, "images", s.images.astype(np.float32)), "images must be uint8"),
        (lambda s: setattr(s, "images", s.images[..., :2]), "1 or 3 channels"),
        (lambda s: setattr(s, "masks", s.masks[:, :3]), "masks must be uint8"),
        (lambda s: setattr(s, "masks", s.masks * 3), "only 0 and 1"),
        (lambda s: s.boxes.__setitem__((2, 2), 7), "box 2 .* is not inside the 6x6 image"),
    ],
)
def test_invalid_split_is_refused_before_writing(tmp_path, mutate, message):
    ds = _dataset()
    mutate(ds.splits["val"])
    with pytest.raises(DataError, match=f"toy: val split: .*{message}"):
        write_prepared(ds, tmp_path / "toy")
    assert list(tmp_path.iterdir()) == []


def test_invalid_dataset_is_refused(tmp_path):
    ds = _dataset()
    del ds.splits["test"]
    with pytest.raises(DataError, match=r"splits must be"):
        write_prepared(ds, tmp_path / "x")
    ds = _dataset()
    ds.class_names = ["a", "a", "b"]
    with pytest.raises(DataError, match=r"not unique"):
        write_prepared(ds, tmp_path / "x")
    ds = _dataset()
    ds.splits["test"] = ds.splits["test"].take(np.array([], dtype=np.int64))
    with pytest.raises(DataError, match=r"test split is empty"):
        write_prepared(ds, tmp_path / "x")


def test_replacing_an_existing_dir(tmp_path):
    out = tmp_path / "toy"
    write_prepared(_dataset(), out)
    (out / "stale.txt").write_text("from the old version")
    ds = _dataset()
    ds.class_names = ["x", "y", "z"]
    write_prepared(ds, out)
    assert load_prepared(out).class_names == ["x", "y", "z"]
    assert not (out / "stale.txt").exists()
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_old_dir_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    old = write_prepared(_dataset(), out)
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    real_save = np.save
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match=r"disk full"):
        write_prepared(_dataset(boxes=False), out)
    monkeypatch.undo()
    assert load_prepared(out).manifest == old
    assert _leftovers(tmp_path) == []


def test_tampered_file_fails_checksum(tmp_path):
    out = tmp_path / "toy"
    write_prepared(_dataset(), out)
    labels = np.load(out / "train_labels.npy")
    labels[0] = (labels[0] + 1) % 3
    np.save(out / "train_labels.npy", labels)
    with pytest.raises(DataError, match=r"train_labels.npy checksum mismatch .*excon prepare"):
        load_prepared(out)
    assert load_prepared(out, verify=False).split("train").labels[0] == labels[0]


def test_truncated_file_is_unreadable_without_verify(tmp_path):
    out = tmp_path / "toy"
    write_prepared(_dataset(), out)
    data = (out / "val_images.npy").read_bytes()
    (out / "val_images.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"val_images.npy checksum mismatch"):
        load_prepared(out)
    with pytest.raises(DataError, match=r"val_images.npy is unreadable"):
        load_prepared(out, verify=False).split("val")


def test_missing_or_broken_prepared_dir(tmp_path):
    with pytest.raises(DataError, match=r"prepared dataset not found"):
        load_prepared(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"manifest.json missing"):
        load_prepared(tmp_path / "empty")
    out = tmp_path / "toy"
    write_prepared(_dataset(), out)
    (out / "test_masks.npy").unlink()
    with pytest.raises(DataError, match=r"test_masks.npy listed in the manifest is missing"):
        load_prepared(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=2), "format_version 2"),
        (lambda m: m.pop("mean"), "missing keys"),
        (lambda m: m["files"].update({"../../etc/passwd": "0"}), "unexpected file name"),
        (lambda m: m["files"].pop("val_labels.npy"), "val_labels.npy not listed"),
        (lambda m: m.update(num_classes=4), "class_names does not match"),
    ],
)
def test_bad_manifest(tmp_path, edit, message):
    out = tmp_path / "toy"
    manifest = write_prepared(_dataset(), out)
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        load_prepared(out)


def test_manifest_disagreeing_with_arrays(tmp_path):
    out = tmp_path / "toy"
    manifest = write_prepared(_dataset(), out)
    manifest["splits"]["val"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"val_images.npy has shape"):
        load_prepared(out).split("val")
