"""Fetching an official archive (torchvision's downloader), with its failures as one line.

Offline, a refused connection or a timeout, a file that does not match its published md5 and
an archive that cannot be unpacked all become a DataError naming the URL or the file and
saying how to go on (place the files in the raw directory by hand).
"""

import contextlib
import gzip
import http.client
import lzma
import socket
import tarfile
import urllib.error
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from excon.data.errors import DataError
from excon.fs import no_space_as_error

# What urllib raises when the network is down, the host refuses or the server fails.
# socket.timeout is TimeoutError; HTTPError is a URLError; a connection dropped mid-transfer is a
# ConnectionError or an http.client.HTTPException (IncompleteRead, BadStatusLine).
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
)
# urllib waits forever by default: a network that drops packets would hang `prepare`.
TIMEOUT_S = 60.0


def download_and_extract(url: str, raw_dir: Path, filename: str, md5: str, unpacked: str) -> None:
    """Download `url` to `raw_dir/filename` (kept when it matches `md5`) and unpack it there.

    `unpacked` names the folder the archive holds, for the offline hint."""
    from torchvision.datasets import utils as tv

    raw_dir = Path(raw_dir)
    archive = raw_dir / filename
    offline = f"offline, place {filename} or the unpacked {unpacked}/ in {raw_dir}"
    bad_copy = archive.is_file() and not tv.check_integrity(str(archive), md5)
    try:
        with no_space_as_error(raw_dir), _socket_timeout(TIMEOUT_S):
            tv.download_and_extract_archive(url, str(raw_dir), filename=filename, md5=md5)
    except NETWORK_ERRORS as exc:
        present = f"; {archive} is incomplete or corrupt (md5 mismatch)" if bad_copy else ""
        raise DataError(f"cannot download {url} ({_reason(exc)}){present}; {offline}") from exc
    except ARCHIVE_ERRORS as exc:
        raise DataError(
            f"{archive}: truncated or corrupt archive ({_reason(exc)}); delete it and rerun "
            f"with --download, or {offline}"
        ) from exc
    except RuntimeError as exc:
        if "corrupted" not in str(exc):  # torchvision: "File not found or corrupted."
            raise
        raise DataError(
            f"{archive}: downloaded file does not match its md5 {md5} (incomplete or changed "
            f"upstream); delete it and retry, or {offline}"
        ) from exc


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A timeout for sockets opened inside the block (torchvision's urlopen passes none)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if before is None else before)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())
