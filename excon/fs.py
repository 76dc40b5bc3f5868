"""Filesystem safety shared by every stage: free space, writability, leftovers of killed writes,
and a lock per output directory. Failures are one-line `FsError`s naming the path."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# Temp names of our atomic writes (artifacts.atomic_path: `.<name>.<random>.tmp`) and of
# prepare's staging folder (`.<name>.tmp-<hex>`), the patterns `clean_leftovers` removes.
TMP_FILE_GLOB = ".*.tmp"
TMP_DIR_GLOB = ".*.tmp-*"
LOCK_NAME = ".excon.lock"


class FsError(OSError):
    """No space, an unwritable directory, a held lock, a path outside its root: one line."""

    def __str__(self) -> str:
        # OSError(errno, text) prints as "[Errno 28] text"; the text alone is the message.
        return self.strerror or super().__str__()


def _mb(n: int) -> str:
    return f"{max(1, round(n / 2**20))} MB"


def existing_parent(path: Path) -> Path:
    """`path` or its nearest existing ancestor (where a directory is about to be made)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(path: str | Path, needed: int) -> None:
    """Refuse before long work when the filesystem of `path` has less than `needed` bytes."""
    free = shutil.disk_usage(existing_parent(Path(path))).free
    if free < needed:
        raise FsError(
            errno.ENOSPC, f"no space left on {path} (needs about {_mb(needed)}, {_mb(free)} free)"
        )


@contextlib.contextmanager
def no_space_as_error(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a disk-full OSError raised inside the block (from numpy, torch, PIL...) into one line
    naming `path` and, where known, the size the write needed."""
    try:
        yield
    except OSError as e:
        if isinstance(e, FsError) or not _is_disk_full(e):
            raise
        need = f" (needs about {_mb(needed)})" if needed else ""
        raise FsError(errno.ENOSPC, f"no space left on {path}{need}") from e
    except RuntimeError as e:  # torch.save reports a full disk as a RuntimeError
        if not _is_disk_full(e):
            raise
        need = f" (needs about {_mb(needed)})" if needed else ""
        raise FsError(errno.ENOSPC, f"no space left on {path}{need}") from e


def _is_disk_full(e: BaseException) -> bool:
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower()
        if "no space left" in text or "file write failed" in text or "disk quota" in text:
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def check_writable(directory: str | Path) -> None:
    """Refuse a directory this process cannot create or write into, before any work is done."""
    directory = Path(directory)
    target = existing_parent(directory)
    if not target.is_dir():
        raise FsError(errno.ENOTDIR, f"{target} is not a directory; cannot write {directory}")
    if not os.access(target, os.W_OK | os.X_OK):
        raise FsError(errno.EACCES, f"{directory} is not writable (read-only or not yours)")
    # os.access ignores read-only mounts seen by root: try for real.
    try:
        fd, probe = tempfile.mkstemp(prefix=".excon-write-check.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FsError(errno.EACCES, f"{directory} is not writable ({e.strerror})") from e


def clean_leftovers(
    directory: str | Path, patterns: Sequence[str] = (TMP_FILE_GLOB, TMP_DIR_GLOB)
) -> list[Path]:
    """Remove the temp files and folders a killed write left in `directory` (not recursive).
    `patterns` narrows it to one writer's leftovers where other writers share the directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted({p for pattern in patterns for p in directory.glob(pattern)}):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        print(
            f"{directory}: removed {len(removed)} leftover(s) of a killed write: {names}",
            file=sys.stderr,
        )
    return removed


def confined(
    root: str | Path,
    relative: str | Path,
    where: str,
    error: Callable[[str], Exception] | None = None,
) -> Path:
    """`root/relative`, refused when a name read from a data file escapes `root` (an absolute
    path, `..`, or a symlink out). The refusal is an FsError, or `error(message)` when given
    (the data layer passes DataError, its one exception type)."""
    root = Path(root).resolve()
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, an embedded NUL
        problem = f"{where}: path {str(relative)!r} cannot be resolved ({e}); refused"
    else:
        if path.is_relative_to(root):
            return path
        problem = f"{where}: path {str(relative)!r} points outside {root}; refused"
    raise error(problem) if error else FsError(errno.EPERM, problem)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def dir_lock(directory: str | Path, what: str, name: str = LOCK_NAME) -> Iterator[None]:
    """Hold `directory/<name>` (.excon.lock) while a stage writes there. A second writer stops
    at once naming the holder's PID and host; a lock whose holder died on this host is taken
    over. A writer of one entry of a shared directory (prepare's `out`) passes its own `name`.

    The lock is a file created with O_EXCL (atomic on local filesystems and NFSv3+), not an
    fcntl lock: those vanish with the process but are not visible across NFS clients, and a
    PID + host in the file is what the message needs anyway."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / name
    me = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if _stale(lock, holder, me["host"]):
                print(
                    f"{directory}: taking over a stale lock of PID {holder.get('pid')} "
                    f"({holder.get('what', '?')}, no longer running)",
                    file=sys.stderr,
                )
                lock.unlink(missing_ok=True)
                continue
            raise FsError(
                errno.EBUSY,
                f"{directory} is in use by PID {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} ({holder.get('what', '?')}); wait for it, or remove "
                f"{lock} if that process is gone",
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _read_lock(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)


def _stale(lock: Path, holder: dict, host: str) -> bool:
    if not holder:  # empty: its writer died between creating and filling it (or is filling it)
        with contextlib.suppress(OSError):
            return time.time() - lock.stat().st_mtime > 5
        return False
    return holder.get("host") == host and not _pid_alive(int(holder.get("pid", -1)))


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
