import numpy as np
import pytest

from excon.data.errors import DataError
from excon.data.prepare import prepare_dataset
from excon.data.prepared import load_prepared
from excon.data.sources.tinyimagenet import read_tinyimagenet


@pytest.fixture
def tiny(tmp_path, formats):
    return formats.write_tinyimagenet(tmp_path / "raw")


def _find(images, img):
    (idx,) = np.flatnonzero((images == img).all(axis=(1, 2, 3)))
    return int(idx)


def test_round_trip(tmp_path, tiny, formats, no_download):
    manifest = prepare_dataset(
        "tinyimagenet", tmp_path / "out", raw_dir=tiny.parent, val_fraction=0.2
    )
    assert manifest["splits"] == {"train": 12, "val": 3, "test": 6}
    ds = load_prepared(tmp_path / "out")
    assert ds.class_names == ["goldfish", "European fire salamander", "bullfrog"]
    assert (ds.channels, ds.image_size) == (3, (64, 64))

    test = ds.split("test")  # the official val set, in annotation order
    for j in range(6):
        want = formats.decode_rgb(tiny / "val" / "images" / f"val_{j}.JPEG")
        assert np.array_equal(test.images[j], want)
        assert test.labels[j] == j % 3
        assert test.boxes[j].tolist() == [j, j + 1, 30 + j, 63 - j]

    train, val = ds.split("train"), ds.split("val")
    assert np.bincount(val.labels).tolist() == [1, 1, 1]
    images = np.concatenate([train.images, val.images])
    labels = np.concatenate([train.labels, val.labels])
    boxes = np.concatenate([train.boxes, val.boxes])
    for c, wnid in enumerate(formats.tiny_wnids):
        for i in range(5):
            idx = _find(
                images, formats.decode_rgb(tiny / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
            )
            assert labels[idx] == c
            assert boxes[idx].tolist() == [i, c, 40 + i, 50 + c]


def test_grayscale_jpeg_becomes_rgb(tiny, formats):
    wnid = formats.tiny_wnids[1]
    gray = formats.decode_rgb(tiny / "train" / wnid / "images" / f"{wnid}_0.JPEG")
    assert (gray[..., 0] == gray[..., 1]).all()
    ds = read_tinyimagenet(tiny, val_fraction=0.2)
    pool = np.concatenate([ds.splits["train"].images, ds.splits["val"].images])
    assert _find(pool, gray) >= 0


def test_train_boxes_are_optional(tiny, formats):
    for wnid in formats.tiny_wnids:
        (tiny / "train" / wnid / f"{wnid}_boxes.txt").unlink()
    ds = read_tinyimagenet(tiny, val_fraction=0.2)
    assert ds.splits["train"].boxes is None and ds.splits["test"].boxes is not None


def test_partial_boxes_files_are_an_error(tiny, formats):
    wnid = formats.tiny_wnids[2]
    (tiny / "train" / wnid / f"{wnid}_boxes.txt").unlink()
    with pytest.raises(DataError, match=f"{wnid}_boxes.txt: missing"):
        read_tinyimagenet(tiny)


def test_unknown_wnid_in_val_annotations(tiny):
    ann = tiny / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace("n01641577", "n00000000", 1))
    with pytest.raises(DataError, match=r"val_annotations.txt:3: class id n00000000 is not in"):
        read_tinyimagenet(tiny)


def test_corrupt_jpeg_names_the_file(tmp_path, tiny):
    (tiny / "val" / "images" / "val_4.JPEG").write_bytes(b"\xff\xd8not really a jpeg")
    with pytest.raises(DataError, match=r"val_4.JPEG: not a readable image"):
        prepare_dataset("tinyimagenet", tmp_path / "out", raw_dir=tiny)
    assert not (tmp_path / "out").exists()


def test_missing_dataset_mentions_download(tmp_path, no_download):
    with pytest.raises(DataError, match=r"no tiny-imagenet-200/ folder .* --download"):
        prepare_dataset("tinyimagenet", tmp_path / "out", raw_dir=tmp_path)


def test_download_uses_the_official_zip(tmp_path, monkeypatch, formats):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, md5=None, **kwargs):
        calls.append((url, md5))
        formats.write_tinyimagenet(tmp_path / download_root)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    raw = tmp_path / "dl"
    prepare_dataset("tinyimagenet", tmp_path / "out", raw_dir=raw, download=True, val_fraction=0.2)
    prepare_dataset("tinyimagenet", tmp_path / "out", raw_dir=raw, download=True, val_fraction=0.2)
    assert calls == [
        ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")
    ]


@pytest.mark.parametrize("name", ["../../wnids.txt", "/etc/hostname", "sub/../../x.JPEG"])
def test_val_annotation_paths_stay_in_val_images(tmp_path, tiny, name):
    ann = tiny / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("val_2.JPEG", name)
    ann.write_text("".join(lines))
    with pytest.raises(
        DataError, match=rf"val_annotations.txt:3: path '{name}' points outside .*; refused$"
    ):
        prepare_dataset("tinyimagenet", tmp_path / "out", raw_dir=tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_symlinked_image_out_of_the_dataset_is_refused(tmp_path, tiny, formats):
    wnid = formats.tiny_wnids[0]
    secret = tmp_path / "secret.JPEG"
    (tiny / "val" / "images" / "val_0.JPEG").rename(secret)
    (tiny / "val" / "images" / "val_0.JPEG").symlink_to(secret)
    # found through the annotation, so the message names its line
    with pytest.raises(DataError, match=r"val_annotations.txt:1: path 'val_0.JPEG' points outside"):
        read_tinyimagenet(tiny)
    (tiny / "val" / "images" / "val_0.JPEG").unlink()
    secret.rename(tiny / "val" / "images" / "val_0.JPEG")
    train = tiny / "train" / wnid / "images"
    train.rename(tmp_path / "elsewhere")
    train.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=rf"train/{wnid}/images: path .* points outside"):
        read_tinyimagenet(tiny)
