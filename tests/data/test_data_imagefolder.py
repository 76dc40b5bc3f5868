import numpy as np
import pytest
from PIL import Image

from excon.data.errors import DataError
from excon.data.prepare import prepare_dataset
from excon.data.prepared import load_prepared
from excon.data.sources.imagefolder import read_imagefolder


def _pool(ds):
    return {
        split.images[i].tobytes(): int(split.labels[i])
        for split in ds.splits.values()
        for i in range(len(split))
    }


def test_flat_tree_is_carved_into_three_splits(tmp_path, formats):
    written = formats.write_imagefolder(tmp_path / "raw", {"cat": 10, "dog": 10}, size=8)
    manifest = prepare_dataset(
        "imagefolder",
        tmp_path / "out",
        raw_dir=tmp_path / "raw",
        image_size=8,
        val_fraction=0.2,
        test_fraction=0.1,
    )
    assert manifest["splits"] == {"train": 14, "val": 4, "test": 2}
    ds = load_prepared(tmp_path / "out")
    assert ds.class_names == ["cat", "dog"] and ds.image_size == (8, 8)
    got = {}
    for name in ("train", "val", "test"):
        split = ds.split(name)
        got |= {split.images[i].tobytes(): int(split.labels[i]) for i in range(len(split))}
    want = {px.tobytes(): ["cat", "dog"].index(p.parent.name) for p, px in written.items()}
    assert got == want


def test_split_tree_with_missing_test_and_resizing(tmp_path, formats):
    raw = tmp_path / "raw"
    formats.write_imagefolder(raw / "train", {"a": 6, "b": 6}, size=8)
    formats.write_imagefolder(raw / "val", {"a": 2, "b": 1}, size=8, seed=1)
    Image.fromarray(np.full((20, 12), 200, dtype=np.uint8)).save(raw / "train" / "a" / "gray.png")
    rgba = np.zeros((5, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(raw / "train" / "b" / "alpha.png")
    (raw / "train" / "a" / "notes.txt").write_text("not an image, ignored")
    ds = read_imagefolder(raw, image_size=8, val_fraction=0.1, test_fraction=0.3)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 10, "val": 3, "test": 4}
    assert ds.source["carved"] == ["test"]
    assert all(s.images.shape[1:] == (8, 8, 3) for s in ds.splits.values())
    gray = np.full((8, 8, 3), 200, dtype=np.uint8).tobytes()
    assert _pool(ds)[gray] == 0


def test_class_sets_must_match(tmp_path, formats):
    raw = tmp_path / "raw"
    formats.write_imagefolder(raw / "train", {"a": 4, "b": 4})
    formats.write_imagefolder(raw / "test", {"a": 1, "c": 1})
    with pytest.raises(
        DataError, match=r"test: class folders differ from train \(missing \['b'\], extra \['c'\]\)"
    ):
        read_imagefolder(raw)


def test_unreadable_image_names_the_file(tmp_path, formats):
    raw = tmp_path / "raw"
    formats.write_imagefolder(raw, {"a": 4, "b": 4})
    (raw / "b" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"b/broken.png: not a readable image"):
        prepare_dataset("imagefolder", tmp_path / "out", raw_dir=raw)
    assert not (tmp_path / "out").exists()


def test_empty_class_folder(tmp_path, formats):
    formats.write_imagefolder(tmp_path / "raw", {"a": 4})
    (tmp_path / "raw" / "b").mkdir()
    with pytest.raises(DataError, match=r"b: class folder has no images"):
        read_imagefolder(tmp_path / "raw")


def test_16bit_pngs_are_scaled_not_clipped(tmp_path, formats):
    raw = tmp_path / "raw"
    formats.write_imagefolder(raw, {"a": 4, "b": 4})
    ramp = np.linspace(0, 65535, 8).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (8, 1))).save(raw / "a" / "deep.png")  # 16-bit grayscale
    ds = read_imagefolder(raw, image_size=8, val_fraction=0.1, test_fraction=0.1)
    want = np.repeat(np.tile(np.rint(ramp / 257).astype(np.uint8), (8, 1))[..., None], 3, -1)
    assert _pool(ds)[want.tobytes()] == 0  # mid-grey 32768 -> 128, not 255


def test_symlinks_out_of_the_root_are_refused(tmp_path, formats):
    raw = tmp_path / "raw"
    formats.write_imagefolder(raw, {"a": 4, "b": 4})
    formats.write_imagefolder(tmp_path / "private", {"c": 1})
    (raw / "a" / "inside.png").symlink_to(raw / "b" / "img_0.png")  # stays in the dataset: read
    assert len(_pool(read_imagefolder(raw, image_size=8))) == 8
    (raw / "a" / "leak.png").symlink_to(tmp_path / "private" / "c" / "img_0.png")
    with pytest.raises(DataError, match=r"raw/a/leak.png: path 'a/leak.png' points outside"):
        prepare_dataset("imagefolder", tmp_path / "out", raw_dir=raw, image_size=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private", "raw"]
    (raw / "a" / "leak.png").unlink()
    (raw / "c").symlink_to(tmp_path / "private" / "c")  # a whole class folder elsewhere
    with pytest.raises(DataError, match=r"raw/c: path 'c' points outside"):
        read_imagefolder(raw, image_size=8)
