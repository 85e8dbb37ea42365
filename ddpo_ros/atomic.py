"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output of the package (weights, clouds, PNGs, training checkpoints, cached maps) is written
the same way: into a temporary file beside the target (os.replace is atomic only within one file
system), fsynced, renamed over the target, and the rename made durable by fsyncing the directory.
A writer that fails leaves the old file untouched and no temporary file behind.

`atomic_open` is for writers that take a file object, `atomic_write` for those that need a path
(safetensors' save_file, torch.save, shutil.copyfile); both run through `_staged`.
"""
from __future__ import annotations

import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator


@contextmanager
def _staged(path: str | Path) -> Iterator[Path]:
    """A fresh temporary path beside `path`, renamed over `path` when the block ends without an error.

    The temporary file is created here with open(), not mkstemp: it then has the mode the umask
    gives any new file (0o644 under umask 022), not mkstemp's 0600, and that mode is put back
    before the rename because some writers recreate the file 0600 (safetensors, torch.save).
    The name is random (uuid4), so concurrent writers of one target, threads or processes, never
    share a temporary file; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb"):  # "x": never truncate a file that is not ours
            pass
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:  # the data on disk before the name points at it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; not every platform can open a directory, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """A new file that replaces `path` only once the `with` block finishes without an error.

    `mode` is a write mode ("wb", "w", "wt", ...); `kwargs` (encoding, newline) go to open().
    The parent directory is created if needed.
    """
    if "w" not in mode or any(c in mode for c in "arx"):
        raise ValueError(f"{path}: atomic_open writes a new file: mode must be 'w', 'wb' or 'wt', not {mode!r}")
    with _staged(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` to write a temporary path, then move it atomically to `path`; returns `path`.

    For writers that insist on a path of their own; `write` may truncate or recreate the file.
    """
    with _staged(path) as tmp:
        write(str(tmp))
    return Path(path)
