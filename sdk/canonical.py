"""Canonical JSON: the one byte form that manifests are hashed and signed in."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from typing import Any, BinaryIO


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(
    path: str, chunk_size: int = 1 << 20, *, max_bytes: int | None = None, follow_symlinks: bool = True,
    error: type[Exception] = OSError,
) -> tuple[str, int]:
    """Return (hex sha256, size in bytes) of a regular file, read in chunks.

    Never blocks on a FIFO or reads a device (:func:`open_regular`); with ``max_bytes`` a
    larger file (or one that grows past it while read) is refused with ``error``."""
    digest = hashlib.sha256()
    size = 0
    fh, _ = open_regular(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks, error=error)
    with fh:
        while True:
            chunk = fh.read(chunk_size)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise error(f"{path} grew past the {max_bytes}-byte cap while read")
    return digest.hexdigest(), size


# -- bounded reading: size caps before reading, no blocking opens, bounded JSON -------------------------------
#: JSON nesting deeper than this is refused before parsing (the stdlib parser recurses per level).
MAX_JSON_DEPTH = 128
#: JSON integers longer than this many digits are refused (manifests hold sizes, shapes, counts).
MAX_JSON_INT_DIGITS = 32
_OPEN_NONBLOCK = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def open_regular(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    follow_symlinks: bool = True,
    error: type[Exception] = OSError,
    what: str = "",
) -> tuple[BinaryIO, int]:
    """Open a regular file for reading without ever blocking; return (file, size).

    The path is opened with ``O_NONBLOCK`` (a FIFO or device opens at once instead of
    waiting for a writer) and, without ``follow_symlinks``, ``O_NOFOLLOW``; the open file is
    then ``fstat``-ed and anything but a regular file (FIFO, device, socket, directory,
    a symlink to ``/dev/zero``) is refused with ``error``, as is a file larger than
    ``max_bytes``: all before a byte is read. ``FileNotFoundError`` passes through.
    """
    label = what or str(path)
    flags = _OPEN_NONBLOCK
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{label} is a symbolic link; only regular files are read") from None
        raise error(f"{label} cannot be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{label} is not a regular file (FIFOs, devices, sockets and directories are refused)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{label} is {st.st_size} bytes, larger than the {max_bytes}-byte cap")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return fh, st.st_size


def read_regular(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    follow_symlinks: bool = False,
    error: type[Exception] = OSError,
    what: str = "",
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`); a file
    that grows past the cap while read is refused too."""
    fh, _ = open_regular(path, max_bytes=max_bytes, follow_symlinks=follow_symlinks, error=error, what=what)
    with fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what or path} is larger than the {max_bytes}-byte cap")
    return data


def json_depth(raw: bytes) -> int:
    """The nesting depth of a JSON text, counted outside strings, without parsing it.

    Linear (no regex backtracking, no recursion): escaped backslashes and escaped quotes are
    dropped first (left to right, as JSON pairs them), so the quotes left delimit strings and
    a bracket is structural when an even number of them precede it.
    """
    import numpy as np

    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    a = np.frombuffer(text, dtype=np.uint8)
    lut = np.zeros(256, dtype=np.int8)
    lut[[0x5B, 0x7B]] = 1
    lut[[0x5D, 0x7D]] = -1
    brackets = np.flatnonzero(lut[a])
    if not brackets.size:
        return 0
    quotes = np.flatnonzero(a == 0x22)
    outside = brackets[np.searchsorted(quotes, brackets) % 2 == 0]
    if not outside.size:
        return 0
    return max(0, int(np.cumsum(lut[a[outside]].astype(np.int32)).max()))


class _JSONRefused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _JSONRefused(f"{name} is not valid JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _JSONRefused(f"an integer of {len(text)} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _JSONRefused(f"key {dup[:60]!r} appears twice in one object")
    return out


def load_json_bounded(
    raw: bytes,
    *,
    max_bytes: int,
    max_depth: int = MAX_JSON_DEPTH,
    error: type[Exception] = ValueError,
    what: str = "JSON",
) -> Any:
    """Parse JSON from bytes with caps: size, nesting depth (checked before parsing), integer
    digits, no NaN/Infinity, no duplicate keys. Every failure is ``error`` naming ``what``."""
    if len(raw) > max_bytes:
        raise error(f"{what} is {len(raw)} bytes, larger than the {max_bytes}-byte cap")
    depth = json_depth(raw)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep (at most {max_depth})")
    try:
        text = raw.decode("utf-8")
        return json.loads(
            text, parse_constant=_no_constant, parse_int=_bounded_int, object_pairs_hook=_no_duplicates
        )
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        msg = str(exc)
        raise error(f"{what} is not valid JSON: {msg[:200]}") from None
