import errno
import json
import os
import re
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from excon.data.errors import DataError
from excon.data.prepared import RawDataset, Split, load_prepared, preparing, write_prepared
from excon.fs import FsError


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


def test_disk_full_mid_write_is_one_line_and_leaves_old_dir(tmp_path, monkeypatch):
    out = tmp_path / "toy"
    old = write_prepared(_dataset(), out)
    real_save = np.save

    def full_disk(path, *args, **kwargs):
        if "val_" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(FsError) as e:
        write_prepared(_dataset(), out)
    assert re.fullmatch(rf"no space left on {out} \(needs about \d+ MB\)", str(e.value))
    monkeypatch.undo()
    assert load_prepared(out).manifest == old
    assert _leftovers(tmp_path) == []


def test_too_little_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=3 * 2**20))
    with pytest.raises(FsError, match=rf"^no space left on {tmp_path / 'toy'} \(needs about 4 MB"):
        write_prepared(_dataset(), tmp_path / "toy")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_second_writer_stops_at_once(tmp_path):
    out = tmp_path / "toy"
    with preparing(out), pytest.raises(FsError) as e:
        write_prepared(_dataset(), out)
    assert str(e.value).startswith(f"{tmp_path} is in use by PID {os.getpid()} on ")
    assert f"(prepare {out}); wait for it, or remove {tmp_path / '.toy.lock'}" in str(e.value)
    assert not out.exists() and _leftovers(tmp_path) == []
    write_prepared(_dataset(), out)  # the lock went with its holder
    with preparing(tmp_path / "other"):  # a sibling dataset has its own lock
        write_prepared(_dataset(), out)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_write_are_removed(tmp_path, capfd):
    out = tmp_path / "toy"
    write_prepared(_dataset(), out)
    # What kill -9 in the middle of a write leaves: its lock, a staging folder, and (killed while
    # deleting the swapped-out copy) an old one; another dataset's staging folder is not ours.
    lock = {"pid": _dead_pid(), "host": socket.gethostname(), "what": "prepare", "since": 0}
    (tmp_path / ".toy.lock").write_text(json.dumps(lock))
    for name in (".toy.tmp-0123abcd", ".toy.old-0123abcd", ".other.tmp-0123abcd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_images.npy").write_bytes(b"x" * 100)
    capfd.readouterr()
    write_prepared(_dataset(), out)
    assert _leftovers(tmp_path) == [".other.tmp-0123abcd"]
    err = capfd.readouterr().err
    assert "taking over a stale lock" in err and "removed 2 leftover(s)" in err


def test_killed_between_the_swap_renames_restores_the_old_version(tmp_path):
    out = tmp_path / "toy"
    old = write_prepared(_dataset(), out)
    os.replace(out, tmp_path / ".toy.old-0123abcd")  # the first rename done, the second not
    with preparing(out):
        pass
    assert load_prepared(out).manifest == old and _leftovers(tmp_path) == []


def test_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_prepared(_dataset(), tmp_path / "toy")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "toy").stat().st_mode) == 0o750
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "toy").iterdir()}
    assert modes == {0o640}
