"""ddpo_ros.atomic: a reader sees the old file or the new one, never a mix, and failures leave no trace.

Both forms are checked the same way: `atomic_open` (a file object) and `atomic_write` (a path for
writers such as safetensors' save_file, which recreate the file 0600).
"""
from __future__ import annotations

import os
import re
import threading

import pytest

from ddpo_ros import atomic
from ddpo_ros.atomic import atomic_open, atomic_write


def write_with_open(path, data: bytes):
    with atomic_open(path) as f:
        f.write(data)


def write_with_path(path, data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def recreate_0600(path, data: bytes):
    """What safetensors and torch.save do: a new file, mode 0600, under the temporary name."""
    def write(tmp):
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    atomic_write(path, write)


WRITERS = pytest.mark.parametrize("write", [write_with_open, write_with_path, recreate_0600])


@pytest.fixture
def umask():
    """Set the process umask for one test, and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@WRITERS
def test_writes_replace_the_target_and_leave_nothing_else(tmp_path, write):
    path = tmp_path / "sub" / "deeper" / "out.bin"  # the parent folders are created
    write(path, b"first")
    write(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert os.listdir(path.parent) == ["out.bin"]


@WRITERS
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)],
                         ids=["022", "027", "077", "002"])
def test_permissions_follow_the_umask(tmp_path, umask, write, mask, mode):
    umask(mask)
    path = tmp_path / "out.bin"
    write(path, b"data")
    assert oct(path.stat().st_mode & 0o777) == oct(mode)


def test_atomic_write_returns_the_path(tmp_path):
    assert atomic_write(str(tmp_path / "a"), lambda tmp: open(tmp, "wb").close()) == tmp_path / "a"


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_context_block_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_open(path) as f:
            f.write(b"half of the new")
            f.flush()
            raise error
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_path_writer_leaves_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_a_failure_leaves_no_target_when_there_was_none(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_the_target_changes_only_when_the_write_is_complete(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_open(path) as f:
        f.write(b"new part 1, ")
        f.flush()
        assert path.read_bytes() == b"old"  # written and flushed, but not yet visible under the name
        f.write(b"part 2")
    assert path.read_bytes() == b"new part 1, part 2"

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"path form")
        assert path.read_bytes() == b"new part 1, part 2"
    atomic_write(path, write)
    assert path.read_bytes() == b"path form"


@pytest.mark.parametrize("write", [write_with_open, write_with_path])
def test_a_concurrent_reader_sees_only_whole_versions(tmp_path, write):
    """A reader polling the file while it is rewritten 20 times: every read is one complete version."""
    path = tmp_path / "out.bin"
    versions = [bytes([i]) * (32 * 1024 + i) for i in range(20)]  # each a different length and byte
    write(path, versions[0])
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(path.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for data in versions[1:]:
            write(path, data)
    finally:
        stop.set()
        thread.join()
    whole = set(versions)
    assert seen and all(data in whole for data in seen)
    assert os.listdir(tmp_path) == ["out.bin"]


def test_the_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_with_open(tmp_path / "out.bin", b"data")
    assert events[:2] == ["fsync", "replace"]  # then the directory, where the platform allows it


def test_text_mode_and_open_arguments(tmp_path):
    path = tmp_path / "latest"
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("step_0000500 \u2713\n")
    assert path.read_text(encoding="utf-8") == "step_0000500 \u2713\n"


@pytest.mark.parametrize("mode", ["rb", "ab", "r+", "xb"])
def test_modes_that_do_not_write_a_new_file_are_refused(tmp_path, mode):
    with pytest.raises(ValueError, match=rf"out\.bin: atomic_open writes a new file: .*{re.escape(repr(mode))}"):
        with atomic_open(tmp_path / "out.bin", mode):
            pass
    assert os.listdir(tmp_path) == []
