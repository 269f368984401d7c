"""Durable file writes: the one ``write_atomic`` for every file that must survive a crash whole.

A crash (power loss, ``kill -9``) at any instant leaves either the old content or
the new, never a mix and never an empty file: the data go to a temp file in the
same directory, which is fsynced, renamed over the target (``os.replace``), and
then the directory is fsynced so that the rename itself is on disk.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Union

#: What :func:`write_atomic` writes: bytes, text (UTF-8), or a function that writes to the open binary file.
Content = Union[bytes, bytearray, memoryview, str, Callable[[BinaryIO], object]]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file already written (for example one copied with ``shutil.copyfile``)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def temp_name(path: Path) -> Path:
    """The temp file :func:`write_atomic` uses for ``path``: ``.NAME.tmp-XXXXXXXX`` beside it."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_atomic(
    path: str | os.PathLike[str],
    data: Content,
    *,
    parents: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Replace ``path`` with ``data`` atomically and durably; returns the path.

    Temp file ``.NAME.tmp-XXXXXXXX`` in the same directory, write, flush, fsync
    the file, ``os.replace`` it over ``path``, fsync the directory. ``data`` is
    bytes, text (written as UTF-8) or a function given the open binary file (for
    streamed content such as a tar archive or ``np.savez``). If anything fails
    before the rename the temp file is removed and ``path`` keeps its old content.
    ``parents`` creates missing parent directories first. ``on_step`` is called
    with ``"tmp_written"`` (before the rename) and ``"replaced"`` (after it), for
    crash-test failpoints.
    """
    target = Path(path)
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if on_step is not None:
            on_step("tmp_written")
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    if on_step is not None:
        on_step("replaced")
    fsync_dir(target.parent)
    return target


def replace_dir(src: str | os.PathLike[str], dest: str | os.PathLike[str], aside: str | os.PathLike[str] | None = None) -> None:
    """Rename the complete directory ``src`` to ``dest``, replacing a ``dest`` that exists.

    The old ``dest`` is renamed out of the way first (to ``aside``, by default
    ``.NAME.old-XXXXXXXX`` beside it) and removed once the new one is in place, so
    ``dest`` is only ever absent between two renames, never half-written. ``src``
    must already be fsynced; the caller fsyncs ``dest``'s parent to make it durable.
    """
    target = Path(dest)
    if not target.exists():
        os.rename(src, target)
        return
    old = Path(aside) if aside is not None else target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    os.rename(src, target)
    shutil.rmtree(old, ignore_errors=True)
