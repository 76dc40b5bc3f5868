"""Downloads fail in one line naming the URL or the file: no network (a closed loopback port),
an HTTP error, a file that does not match its md5, an archive cut short. Nothing here leaves
the machine: every URL points at 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from excon.data.errors import DataError
from excon.data.prepare import prepare_dataset
from excon.data.prepared import load_prepared
from excon.data.sources import cifar100, tinyimagenet


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(folder: Path):
    """A loopback HTTP server of `folder` (404 for anything missing)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # torchvision's redirect probe hangs up before the body: a broken pipe here

    server = Server(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_archive(tmp_path: Path, formats) -> Path:
    """A .tar.gz of fixture CIFAR files laid out as the official archive."""
    formats.write_cifar100(tmp_path / "src", train_per_class=2, test_per_class=1)
    archive = tmp_path / "www" / cifar100.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / cifar100.BASE_FOLDER, arcname=cifar100.BASE_FOLDER)
    return archive


def test_constants_match_torchvision():
    from torchvision.datasets import CIFAR100

    ours = (cifar100.URL, cifar100.ARCHIVE, cifar100.ARCHIVE_MD5)
    assert ours == (CIFAR100.url, CIFAR100.filename, CIFAR100.tgz_md5)


@pytest.mark.parametrize(
    ("module", "dataset"), [(cifar100, "cifar100"), (tinyimagenet, "tinyimagenet")]
)
def test_no_network_names_the_url_and_the_way_out(tmp_path, monkeypatch, module, dataset):
    url = f"http://127.0.0.1:{closed_port()}/{module.ARCHIVE}"
    monkeypatch.setattr(module, "URL", url)
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as e:
        prepare_dataset(dataset, tmp_path / "out", raw_dir=raw, download=True)
    assert str(e.value) == (
        f"cannot download {url} ([Errno 111] Connection refused); offline, place "
        f"{module.ARCHIVE} or the unpacked {module.BASE_FOLDER}/ in {raw}"
    )
    assert not (tmp_path / "out").exists()


def test_truncated_archive_and_no_network(tmp_path, monkeypatch, formats):
    url = f"http://127.0.0.1:{closed_port()}/{cifar100.ARCHIVE}"
    monkeypatch.setattr(cifar100, "URL", url)
    raw = tmp_path / "raw"
    raw.mkdir()
    full = cifar_archive(tmp_path, formats).read_bytes()
    (raw / cifar100.ARCHIVE).write_bytes(full[: len(full) // 2])  # an interrupted download
    with pytest.raises(
        DataError,
        match=rf"^cannot download {url} \(.*Connection refused\); {raw / cifar100.ARCHIVE} is "
        r"incomplete or corrupt \(md5 mismatch\); offline, place",
    ):
        prepare_dataset("cifar100", tmp_path / "out", raw_dir=raw, download=True)


@pytest.mark.parametrize(("module", "cut"), [(cifar100, 0.5), (tinyimagenet, 0.9)])
def test_truncated_archive_with_matching_md5_is_reported(
    tmp_path, monkeypatch, formats, module, cut
):
    """An archive that passes its md5 (here: the md5 is the truncated file's) but cannot be
    unpacked: tar.gz and zip both name the file."""
    raw = tmp_path / "raw"
    raw.mkdir()
    if module is cifar100:
        full = cifar_archive(tmp_path, formats).read_bytes()
    else:
        src = formats.write_tinyimagenet(tmp_path / "src", train_per_class=1, val_per_class=1)
        zipped = tmp_path / "full.zip"
        with zipfile.ZipFile(zipped, "w") as z:
            for p in sorted(src.rglob("*")):
                z.write(p, p.relative_to(src.parent))
        full = zipped.read_bytes()
    archive = raw / module.ARCHIVE
    archive.write_bytes(full[: int(len(full) * cut)])
    monkeypatch.setattr(module, "ARCHIVE_MD5" if module is cifar100 else "ZIP_MD5", md5(archive))
    monkeypatch.setattr(module, "URL", f"http://127.0.0.1:{closed_port()}/{module.ARCHIVE}")
    with pytest.raises(
        DataError, match=rf"^{archive}: truncated or corrupt archive \(.+\); delete it and rerun"
    ) as e:
        prepare_dataset(module.NAME, tmp_path / "out", raw_dir=raw, download=True)
    assert "\n" not in str(e.value)


def test_download_over_loopback_then_read(tmp_path, monkeypatch, formats):
    archive = cifar_archive(tmp_path, formats)
    monkeypatch.setattr(cifar100, "ARCHIVE_MD5", md5(archive))
    with serve(archive.parent) as base:
        monkeypatch.setattr(cifar100, "URL", f"{base}/{cifar100.ARCHIVE}")
        manifest = prepare_dataset(
            "cifar100", tmp_path / "out", raw_dir=tmp_path / "raw", download=True, val_fraction=0.5
        )
    assert manifest["splits"] == {"train": 100, "val": 100, "test": 100}
    assert load_prepared(tmp_path / "out").num_classes == 100


def test_http_error_and_md5_mismatch(tmp_path, monkeypatch, formats):
    archive = cifar_archive(tmp_path, formats)
    raw = tmp_path / "raw"
    with serve(archive.parent) as base:
        monkeypatch.setattr(cifar100, "URL", f"{base}/missing.tar.gz")
        with pytest.raises(DataError, match=r"^cannot download .*/missing.tar.gz \(HTTP 404 "):
            cifar100.download_cifar100(raw)
        # Served whole, but not the file the md5 names (changed upstream, or cut by a proxy).
        monkeypatch.setattr(cifar100, "URL", f"{base}/{cifar100.ARCHIVE}")
        with pytest.raises(
            DataError,
            match=rf"^{raw / cifar100.ARCHIVE}: downloaded file does not match its md5 "
            rf"{cifar100.ARCHIVE_MD5} .*; delete it and retry, or offline, place",
        ):
            cifar100.download_cifar100(raw)
