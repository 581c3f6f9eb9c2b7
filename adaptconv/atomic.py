"""Atomic file writes: a reader (or a killed writer) never sees a half-written file.

Every file is written to a temporary file in the same folder, flushed, fsynced and renamed over the
target. The temporary file is created with mode 0666 minus the umask — the mode any normal file gets —
so records, results tables, reports and checkpoints in a shared folder are as readable as the user's
umask says (``tempfile.mkstemp`` would make them 0600 whatever the umask).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``: (fd, path), mode 0666 & ~umask (the kernel applies it)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it replaces ``path`` whole, on an exception it is removed.

    ``durable``: fsync the data and the folder (a machine crash keeps the new file). Without it the
    rename is still atomic for other processes (used for progress notes, rewritten every step)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: write, fsync, rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder: write, fsync, rename."""
    with open_atomic(path, durable=durable) as f:
        f.write(data)
