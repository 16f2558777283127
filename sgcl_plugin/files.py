"""Output files written safely: whole or not at all, never through a planted link."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["atomic_write", "open_new_or_own"]

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes ``path`` whole or not at all: ``write(f)`` fills a new temporary file of the same folder
    (created with ``O_EXCL``: never an existing file, never through a link), which then replaces ``path``
    (``os.replace``: a link at ``path`` is replaced, its target untouched). On any error (a full disk) the
    temporary file is removed and ``path`` is as it was.

    Args:
        path: The file to (re)write.
        write: Called with the open binary file (e.g. ``lambda f: torch.save(state, f)`` or
            ``lambda f: image.save(f, format="PNG")``).

    Raises:
        OSError: the folder cannot be written (the message names the file).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_new_or_own(path: PathLike, mode: str = "w", newline: str = "") -> IO[Any]:
    """Opens ``path`` for writing without following a link planted there (``O_NOFOLLOW``): a link is refused.

    Raises:
        OSError: ``path`` is a symbolic link (``ELOOP``), or cannot be opened.
    """
    path = Path(path)
    if path.is_symlink():
        raise OSError(f"{path} is a symbolic link: refusing to write through it (remove it, or choose another --out).")
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, mode, newline=newline)
