"""The data side of the failure corpus, as a user meets it: through `excon <stage>`.

Each failure must end with exit code 2 and exactly one stderr line, `excon <stage>: error:`
followed by the file or path at fault, and leave nothing half-written (no temp folder, no lock,
the previous prepared directory intact). Inputs are tiny and every URL is on 127.0.0.1.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excon.cli import main
from excon.data.prepared import load_prepared
from excon.data.sources import cifar100, tinyimagenet

REPO = Path(__file__).resolve().parents[2]


def _writers():
    """The original-format writers of tests/data/conftest.py (loaded by path, not as a plugin)."""
    spec = importlib.util.spec_from_file_location(
        "_excon_data_writers", REPO / "tests" / "data" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


W = _writers()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: built-in defaults


def fail_line(capsys, *argv: str) -> str:
    """Run `excon argv`; it must fail with exit 2 and one stderr line; return that line."""
    code = main(list(argv))
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"excon {argv[0]}: error: "), err
    return err[0]


def assert_nothing_half_written(parent: Path, out: Path, before: dict | None = None) -> None:
    stray = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert stray == [], stray
    if before is None:
        assert not out.exists()
    else:
        assert load_prepared(out).manifest == before


def prepare_folder(*extra: str) -> list[str]:
    return ["prepare", "--dataset", "imagefolder", "--set", "data.image_size=8", *extra]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- unreadable images ---------------------------------------------------------------------


def _truncated_png(path: Path) -> None:
    full = path.with_suffix(".full")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(full, format="PNG")
    path.write_bytes(full.read_bytes()[:200])
    full.unlink()


@pytest.mark.parametrize(
    "make",
    [lambda p: p.write_text("meeting notes\n"), lambda p: p.write_bytes(b""), _truncated_png],
    ids=["text-named-png", "zero-bytes", "truncated-png"],
)
def test_prepare_unreadable_image(tmp_path, capsys, make):
    W.write_imagefolder(tmp_path / "raw", {"a": 3, "b": 3})
    bad = tmp_path / "raw" / "b" / "photo.png"
    make(bad)
    out = tmp_path / "prepared" / "imagefolder"
    line = fail_line(capsys, *prepare_folder("--raw-dir", "raw", "--out", str(out)))
    assert line.startswith("excon prepare: error: raw/b/photo.png: not a readable image (")
    assert_nothing_half_written(out.parent, out)


def test_explain_text_file_named_png(tmp_path, capsys, monkeypatch):
    from excon.serve import model

    # The images are read before the model: a bad file must fail before any download.
    def no_model(uri, tracking_uri=None):
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(model, "load_registered", no_model)
    (tmp_path / "cat.png").write_text("not an image")
    line = fail_line(capsys, "explain", "--model", "models:/m@champion", "cat.png", "--out", "ex")
    assert line == (
        "excon explain: error: cat.png: not a readable image (unknown format or not an image)"
    )
    assert not (tmp_path / "ex").exists()


def test_prepare_16bit_pngs_keeps_their_grey_levels(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / "raw" / cls).mkdir(parents=True)
        for i in range(10):
            level = 32768 if cls == "a" else 16384
            pixels = np.full((8, 8), level + 3 * i, dtype=np.uint16)
            Image.fromarray(pixels).save(tmp_path / "raw" / cls / f"{i}.png")  # 16-bit PNG
    out = tmp_path / "prepared"
    assert main(prepare_folder("--raw-dir", "raw", "--out", str(out))) == 0
    ds = load_prepared(out)
    levels = {
        (int(s.labels[i]), int(s.images[i].mean().round()))
        for s in (ds.split(n) for n in ("train", "val", "test"))
        for i in range(len(s))
    }
    assert levels == {(0, 128), (1, 64)}  # not 255: scaled by 255/65535


# --- paths from data files ----------------------------------------------------------------


def test_prepare_val_annotation_pointing_outside(tmp_path, capsys):
    root = W.write_tinyimagenet(tmp_path / "raw")
    ann = root / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("val_1.JPEG", "../../../../secret.JPEG")
    ann.write_text("".join(lines))
    out = tmp_path / "prepared"
    line = fail_line(
        capsys, "prepare", "--dataset", "tinyimagenet", "--raw-dir", "raw", "--out", str(out)
    )
    assert line.startswith(
        "excon prepare: error: raw/tiny-imagenet-200/val/val_annotations.txt:2: "
        "path '../../../../secret.JPEG' points outside "
    )
    assert line.endswith("; refused")
    assert_nothing_half_written(tmp_path, out)


def test_prepare_imagefolder_symlink_outside(tmp_path, capsys):
    W.write_imagefolder(tmp_path / "raw", {"a": 3, "b": 3})
    (tmp_path / "private.png").write_bytes((tmp_path / "raw" / "a" / "img_0.png").read_bytes())
    (tmp_path / "raw" / "a" / "link.png").symlink_to(tmp_path / "private.png")
    out = tmp_path / "prepared"
    line = fail_line(capsys, *prepare_folder("--raw-dir", "raw", "--out", str(out)))
    assert line.startswith("excon prepare: error: raw/a/link.png: path 'a/link.png' points outside")
    assert_nothing_half_written(tmp_path, out)


# --- downloads -----------------------------------------------------------------------------


def test_download_without_network(tmp_path, capsys, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/{cifar100.ARCHIVE}"
    monkeypatch.setattr(cifar100, "URL", url)
    out = tmp_path / "prepared"
    argv = ["prepare", "--dataset", "cifar100", "--download", "--raw-dir", "raw", "--out", str(out)]
    line = fail_line(capsys, *argv)
    assert line == (
        f"excon prepare: error: cannot download {url} ([Errno 111] Connection refused); "
        "offline, place cifar-100-python.tar.gz or the unpacked cifar-100-python/ in raw"
    )
    assert_nothing_half_written(tmp_path, out)


def test_download_with_truncated_archive_present(tmp_path, capsys, monkeypatch):
    W.write_cifar100(tmp_path / "src", train_per_class=1, test_per_class=1)
    (tmp_path / "raw").mkdir()
    archive = tmp_path / "raw" / cifar100.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-100-python", arcname="cifar-100-python")
    archive.write_bytes(archive.read_bytes()[:50_000])  # an interrupted download
    monkeypatch.setattr(cifar100, "URL", f"http://127.0.0.1:{closed_port()}/x.tar.gz")
    argv = ["prepare", "--dataset", "cifar100", "--download", "--raw-dir", "raw"]
    line = fail_line(capsys, *argv, "--out", "prepared")
    assert "; raw/cifar-100-python.tar.gz is incomplete or corrupt (md5 mismatch); " in line
    # The same file taken as the published one (md5 matching): unpacking it fails, named.
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", md5(archive))
    line = fail_line(capsys, *argv, "--out", "prepared")
    assert line.startswith(
        "excon prepare: error: raw/cifar-100-python.tar.gz: truncated or corrupt archive ("
    )
    assert_nothing_half_written(tmp_path, tmp_path / "prepared")


def test_download_truncated_zip(tmp_path, capsys, monkeypatch):
    src = W.write_tinyimagenet(tmp_path / "src", train_per_class=1, val_per_class=1)
    (tmp_path / "raw").mkdir()
    archive = tmp_path / "raw" / tinyimagenet.ARCHIVE
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent))
    archive.write_bytes(archive.read_bytes()[:-100])  # the central directory cut off
    monkeypatch.setattr(tinyimagenet, "ZIP_MD5", md5(archive))
    monkeypatch.setattr(tinyimagenet, "URL", f"http://127.0.0.1:{closed_port()}/t.zip")
    argv = ["prepare", "--dataset", "tinyimagenet", "--download", "--raw-dir", "raw"]
    line = fail_line(capsys, *argv, "--out", "prepared")
    assert line.startswith(
        "excon prepare: error: raw/tiny-imagenet-200.zip: truncated or corrupt archive ("
    )


# --- concurrent prepare, disk full, a killed prepare --------------------------------------


def _prepared_once(tmp_path: Path, capsys) -> tuple[Path, dict]:
    W.write_imagefolder(tmp_path / "raw", {"a": 10, "b": 10})
    out = tmp_path / "prepared" / "imagefolder"
    assert main(prepare_folder("--raw-dir", "raw", "--out", str(out))) == 0
    capsys.readouterr()
    return out, load_prepared(out).manifest


def test_second_prepare_while_one_runs(tmp_path, capsys):
    out, before = _prepared_once(tmp_path, capsys)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from excon.data.prepared import preparing\n"
            f"with preparing({str(out)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        start = time.perf_counter()
        line = fail_line(capsys, *prepare_folder("--raw-dir", "raw", "--out", str(out)))
        assert time.perf_counter() - start < 2  # at once, not after reading the images
    finally:
        holder.communicate("", timeout=30)
    assert line.startswith(f"excon prepare: error: {out.parent} is in use by PID {holder.pid} on ")
    assert f"(prepare {out}); wait for it, or remove {out.parent}/.imagefolder.lock" in line
    assert_nothing_half_written(out.parent, out, before)


def test_disk_full_while_writing(tmp_path, capsys, monkeypatch):
    out, before = _prepared_once(tmp_path, capsys)
    real_save = np.save

    def fill_up(path, *args, **kwargs):
        if "test_" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(np, "save", fill_up)
    line = fail_line(capsys, *prepare_folder("--raw-dir", "raw", "--out", str(out)))
    assert line == f"excon prepare: error: no space left on {out} (needs about 4 MB)"
    assert_nothing_half_written(out.parent, out, before)


def test_too_little_space_before_writing(tmp_path, capsys, monkeypatch):
    out, before = _prepared_once(tmp_path, capsys)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=2**20))
    line = fail_line(capsys, *prepare_folder("--raw-dir", "raw", "--out", str(out)))
    assert line == (f"excon prepare: error: no space left on {out} (needs about 4 MB, 1 MB free)")
    assert_nothing_half_written(out.parent, out, before)


KILLED_MID_WRITE = """
import os, signal, sys
import numpy as np
from excon.cli import main
real_save = np.save
def save_then_hang(path, *args, **kwargs):
    real_save(path, *args, **kwargs)
    if "val_" in str(path):  # train written, staging folder half full: kill -9 comes here
        print("writing", flush=True)
        signal.pause()
np.save = save_then_hang
main(sys.argv[1:])
"""


def test_rerun_after_kill_9_cleans_up(tmp_path, capsys):
    out, before = _prepared_once(tmp_path, capsys)
    argv = prepare_folder("--raw-dir", "raw", "--out", str(out), "--set", "data.seed=1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_WRITE, *argv], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert victim.stdout.readline() == "writing\n"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    left = sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))
    assert left[0] == ".imagefolder.lock" and left[1].startswith(".imagefolder.tmp-")
    assert load_prepared(out).manifest == before  # the killed write never touched `out`

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"taking over a stale lock of PID {victim.pid}" in err
    assert "removed 1 leftover(s)" in err and ": .imagefolder.tmp-" in err
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert json.loads((out / "manifest.json").read_text())["source"]["seed"] == 1
