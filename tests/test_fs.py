"""excon/fs.py: the one-line FsError, names confined to a root, a lock per entry of a shared
directory, leftovers removed by pattern."""

from __future__ import annotations

import errno

import pytest

from excon.data.errors import DataError
from excon.fs import FsError, clean_leftovers, confined, dir_lock


def test_fs_error_prints_its_message_alone():
    e = FsError(errno.ENOSPC, "no space left on /data (needs about 3 MB)")
    assert str(e) == "no space left on /data (needs about 3 MB)"
    assert e.errno == errno.ENOSPC and isinstance(e, OSError)


def test_confined(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    root = tmp_path / "root"
    assert confined(root, "a/../a/x.png", "ann.txt:1") == root.resolve() / "a" / "x.png"
    with pytest.raises(FsError, match=r"^ann.txt:2: path '../x' points outside .*root; refused$"):
        confined(root, "../x", "ann.txt:2")
    with pytest.raises(DataError, match=r"^ann.txt:3: path '/etc/passwd' points outside"):
        confined(root, "/etc/passwd", "ann.txt:3", error=DataError)
    with pytest.raises(DataError, match=r"^ann.txt:4: path 'a\\x00b' cannot be resolved"):
        confined(root, "a\x00b", "ann.txt:4", error=DataError)
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(FsError, match=r"^ann.txt:5: path 'loop/x' cannot be resolved"):
        confined(root, "loop/x", "ann.txt:5")


def test_dir_lock_with_its_own_name(tmp_path):
    with dir_lock(tmp_path, "prepare a", name=".a.lock"):
        assert (tmp_path / ".a.lock").is_file()
        with dir_lock(tmp_path, "prepare b", name=".b.lock"):  # another entry: no conflict
            pass
        busy = rf"^{tmp_path} is in use by PID \d+ .*\(prepare a\)"
        with pytest.raises(FsError, match=busy), dir_lock(tmp_path, "again", name=".a.lock"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_clean_leftovers_by_pattern(tmp_path):
    for name in (".a.tmp-1", ".a.old-1", ".b.tmp-1", ".x.123.tmp"):
        (tmp_path / name).mkdir()
    assert {p.name for p in clean_leftovers(tmp_path, patterns=(".a.tmp-*", ".a.old-*"))} == {
        ".a.tmp-1",
        ".a.old-1",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.tmp-1", ".x.123.tmp"]
    clean_leftovers(tmp_path)  # the default patterns: every temp of ours
    assert list(tmp_path.iterdir()) == []
