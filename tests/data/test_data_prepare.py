import numpy as np
import pytest

from excon.data import DATASETS, DataError, load_prepared, prepare_dataset


def test_public_names():
    assert DATASETS == ("animals", "cifar100", "tinyimagenet", "imagefolder")


def test_limit_per_class(tmp_path, formats):
    formats.write_imagefolder(tmp_path / "raw", {"a": 12, "b": 20, "c": 3})
    kw = {"raw_dir": tmp_path / "raw", "image_size": 8, "seed": 4, "limit_per_class": 2}
    manifest = prepare_dataset("imagefolder", tmp_path / "out", **kw)
    again = prepare_dataset("imagefolder", tmp_path / "again", **kw)
    assert manifest["files"] == again["files"]
    assert manifest["source"]["limit_per_class"] == 2
    ds = load_prepared(tmp_path / "out")
    assert np.bincount(ds.split("train").labels).tolist() == [2, 2, 2]
    # per class, the 80/10/10 split happens first (c: 2/1/0), then each split is capped
    assert np.bincount(ds.split("val").labels).tolist() == [1, 2, 1]
    assert np.bincount(ds.split("test").labels).tolist() == [1, 2]


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'; choose from animals"):
        prepare_dataset("mnist", tmp_path / "out")


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, -0.1)])
def test_bad_fractions(tmp_path, val, test):
    with pytest.raises(DataError, match=r"val_fraction"):
        prepare_dataset("animals", tmp_path / "out", val_fraction=val, test_fraction=test)


def test_val_fraction_zero_trains_on_the_whole_training_split(tmp_path, formats):
    """study.protocol=reference: no val split is carved; any other empty split stays an error."""
    formats.write_imagefolder(tmp_path / "raw", {"a": 10, "b": 10})
    kw = {"raw_dir": tmp_path / "raw", "image_size": 8, "test_fraction": 0.2}
    manifest = prepare_dataset("imagefolder", tmp_path / "out", val_fraction=0.0, **kw)
    assert manifest["splits"] == {"train": 16, "val": 0, "test": 4}
    assert load_prepared(tmp_path / "out").split("val").images.shape == (0, 8, 8, 3)
    with pytest.raises(DataError, match=r"test split is empty"):
        prepare_dataset(
            "imagefolder",
            tmp_path / "no",
            val_fraction=0.0,
            raw_dir=kw["raw_dir"],
            image_size=8,
            test_fraction=0.0,
        )


def test_imagefolder_needs_raw_dir(tmp_path):
    with pytest.raises(DataError, match=r"imagefolder needs a raw directory"):
        prepare_dataset("imagefolder", tmp_path / "out")


def test_failing_source_keeps_existing_prepared_dir(tmp_path, animals_raw, formats):
    root, _ = animals_raw
    out = tmp_path / "prepared"
    good = prepare_dataset("animals", out, raw_dir=root)
    formats.write_imagefolder(tmp_path / "bad", {"a": 3, "b": 3})
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"x.png: not a readable image"):
        prepare_dataset("imagefolder", out, raw_dir=tmp_path / "bad")
    assert load_prepared(out).manifest == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_second_prepare_of_the_same_out_stops_before_reading(tmp_path):
    from excon.data.prepared import preparing
    from excon.fs import FsError

    out = tmp_path / "prepared" / "animals"
    # raw_dir does not exist: reading would be a DataError, the lock is checked first
    busy = r"prepared is in use by PID \d+ on .*\(prepare "
    with preparing(out), pytest.raises(FsError, match=busy):
        prepare_dataset("imagefolder", out, raw_dir=tmp_path / "missing")
    assert not out.exists()
