"""Chunked, resumable bundle transfer and binary deltas.

The device side is a pure state machine, :class:`Receiver`: ``handle(event) ->
actions``. It asks for the chunks it lacks in windows (a bitmap of indices),
keeps what arrives (the driver writes each chunk to a preallocated file and
persists the bitmap), re-asks only for chunks still missing after a timeout or
a reconnect (how long the timeout is: :class:`StallBackoff`), refuses chunks of the wrong length or index (the declared length
is enforced: no endless data) and, once complete, asks the driver to check the
whole file's sha256. :class:`ChunkFile` is that driver's disk part, so a device
restarted mid-transfer resumes from the chunks it already has.

The size and id of a file come from the (unsigned) ``desired`` message, so both sides
of the receiver are bounded by a configured maximum bundle size before any work:
:class:`Receiver` fails at once with ``bundle_too_large`` and :class:`ChunkFile`
refuses to preallocate (``max_bytes``); :func:`apply_delta` checks the size a patch
declares before decompressing or applying it, and never decompresses more than that.

The coordinator side is :func:`serve_request`: which chunk frames answer a
request. Deltas are bsdiff4 patches between the deterministic ``.efb``
archives of two versions; :func:`make_delta` returns ``None`` when a delta
would not be smaller, and the device falls back to the full file when one
fails to apply or does not produce the expected hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from edgefleet.atomic import write_atomic
from edgefleet.errors import ProtocolError, SyncError

from .protocol import Chunk, ChunkRequest, FileInfo

DEFAULT_WINDOW = 16  # chunks asked for at once (1 MiB at the default chunk size)
#: the largest file a device receives unless configured otherwise (DeviceSync uses the store quota)
DEFAULT_MAX_BUNDLE_BYTES = 1 << 30
TOO_LARGE = "bundle_too_large"
MAX_SERVE = 64  # chunks the coordinator sends for one request, whatever it asks


# -- events -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Begin:
    have: frozenset[int] = frozenset()  # chunks already on disk (resuming)


@dataclass(frozen=True)
class ChunkArrived:
    chunk: Chunk


@dataclass(frozen=True)
class Stalled:
    """No chunk for a while, or the connection came back: ask again for what is missing."""


@dataclass(frozen=True)
class Verified:
    ok: bool


ReceiverEvent = Union[Begin, ChunkArrived, Stalled, Verified]


# -- actions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    indices: tuple[int, ...]


@dataclass(frozen=True)
class Store:
    index: int
    data: bytes


@dataclass(frozen=True)
class CheckWhole:
    """Every chunk is here: hash the whole file and report ``Verified``."""


@dataclass(frozen=True)
class Complete:
    pass


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str


ReceiverAction = Union[Request, Store, CheckWhole, Complete, Fail]


@dataclass
class Receiver:
    """Pure receive state for one file. Counts duplicates and rejects for the report."""

    job_id: str
    info: FileInfo
    window: int = DEFAULT_WINDOW
    #: refuse (``Fail(TOO_LARGE)``) a file declared larger than this, before asking for a chunk
    max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    have: set[int] = field(default_factory=set)
    outstanding: set[int] = field(default_factory=set)
    done: bool = False
    failed: bool = False
    duplicates: int = 0
    rejected: int = 0
    requested: int = 0
    rerequested: int = 0

    @property
    def missing(self) -> list[int]:
        return [i for i in range(self.info.chunks) if i not in self.have]

    def _next_request(self) -> list[ReceiverAction]:
        room = self.window - len(self.outstanding)
        if room <= 0 or len(self.outstanding) > self.window // 2:
            return []
        new = [i for i in self.missing if i not in self.outstanding][:room]
        if not new:
            return []
        self.outstanding.update(new)
        self.requested += len(new)
        return [Request(tuple(new))]

    def handle(self, event: ReceiverEvent) -> list[ReceiverAction]:
        if self.done or self.failed:
            return []
        if isinstance(event, Begin):
            if self.info.size > self.max_bytes:
                self.failed = True
                return [Fail(TOO_LARGE, too_large_message(self.info.size, self.max_bytes))]
            self.have = {i for i in event.have if 0 <= i < self.info.chunks}
            self.outstanding.clear()
            if len(self.have) == self.info.chunks:
                return [CheckWhole()]
            return self._next_request()
        if isinstance(event, ChunkArrived):
            c = event.chunk
            if c.file_id != self.info.file_id:
                self.rejected += 1
                return []
            try:
                expected = self.info.chunk_len(c.index)
            except ProtocolError:
                self.rejected += 1
                return []
            if len(c.data) != expected:
                self.rejected += 1
                self.outstanding.discard(c.index)
                return []
            if c.index in self.have:
                self.duplicates += 1
                return []
            self.have.add(c.index)
            self.outstanding.discard(c.index)
            actions: list[ReceiverAction] = [Store(c.index, c.data)]
            if len(self.have) == self.info.chunks:
                self.outstanding.clear()
                return actions + [CheckWhole()]
            return actions + self._next_request()
        if isinstance(event, Stalled):
            again = sorted(self.outstanding - self.have)
            self.outstanding = set(again)
            if not again:
                return self._next_request()
            self.rerequested += len(again)
            return [Request(tuple(again))]
        if isinstance(event, Verified):
            if event.ok:
                self.done = True
                return [Complete()]
            # the chunks were each fine but the whole is not what was declared: start over once
            self.failed = True
            return [Fail("hash_mismatch", f"file {self.info.file_id[:12]} does not match its sha256")]
        raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


@dataclass(frozen=True)
class StallBackoff:
    """When a transfer whose chunks stopped coming asks again (pure: the caller passes the time and the random draw).

    The k-th re-request in a row without a chunk in between waits ``min(cap, start * factor**k)`` seconds, stretched
    by a random ``1 .. 1 + jitter`` (never sooner than the unstretched wait: jitter only spreads devices out, so a
    fleet that stalled together, after a coordinator restart, does not ask again together). ``start`` is
    ``stall`` for a transfer whose chunks were flowing (a lost chunk, a coordinator or broker hiccup), and the
    longer ``unanswered`` for one that has not received a chunk yet: the coordinator admits a few transfers at
    once and keeps the latest request of every other one in its place in line (``Coordinator.max_transfers``),
    so a device that has had no chunk is, as a rule, waiting its turn, and asking again would only repeat it.
    A chunk resets the count (``stalls`` = 0)."""

    stall: float = 5.0
    unanswered: float = 30.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (0 < self.stall <= self.cap and 0 < self.unanswered and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise SyncError(f"bad stall backoff: {self}")

    def delay(self, stalls: int, answered: bool, draw: float) -> float:
        """Seconds to wait before asking again after ``stalls`` re-requests in a row (0: none yet), ``answered``
        once a chunk of the transfer arrived; ``draw`` is a uniform random number in [0, 1)."""
        start = self.stall if answered else max(self.stall, self.unanswered)
        try:
            grown = start * self.factor ** max(stalls, 0)
        except OverflowError:  # (a device stalled for a very long time: the cap)
            grown = self.cap
        return min(self.cap, grown) * (1.0 + self.jitter * min(max(draw, 0.0), 1.0))

    @classmethod
    def of(cls, stall: float) -> StallBackoff:
        """The backoff of a device configured with ``stall_seconds``: an unanswered transfer waits 6 of them first
        (30 s at the default 5 s), and no wait grows past 60 of them (5 minutes)."""
        return cls(stall=stall, unanswered=6 * stall, cap=60 * stall)


def serve_request(req: ChunkRequest, info: FileInfo, data: bytes) -> list[Chunk]:
    """Chunk frames answering ``req`` (at most :data:`MAX_SERVE`; indices outside the file are ignored)."""
    if req.file_id != info.file_id:
        raise ProtocolError(f"unknown file {req.file_id[:12]}")
    if req.total != info.chunks:
        raise ProtocolError(f"request says {req.total} chunks, the file has {info.chunks}")
    out = []
    for i in req.wanted[:MAX_SERVE]:
        start = i * info.chunk_size
        out.append(Chunk(info.file_id, i, data[start : start + info.chunk_len(i)]))
    return out


def too_large_message(size: int, cap: int) -> str:
    return f"the file is declared as {size} bytes, over this device's maximum bundle size of {cap} bytes"


def file_info(data: bytes, chunk_size: int) -> FileInfo:
    return FileInfo(hashlib.sha256(data).hexdigest(), len(data), chunk_size)


# -- disk side of the receiver ------------------------------------------------------------------------------
class ChunkFile:
    """A preallocated partial file plus a bitmap of the chunks it holds, surviving restarts."""

    def __init__(self, root: str | os.PathLike[str], info: FileInfo, max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> None:
        if info.size > max_bytes:  # before a directory or a preallocated byte exists
            raise SyncError(too_large_message(info.size, max_bytes))
        self.info = info
        self.dir = Path(root) / info.file_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_path = self.dir / "data"
        self.map_path = self.dir / "have.json"
        meta = self.dir / "info.json"
        if meta.exists():
            try:
                old = json.loads(meta.read_text())
            except ValueError:
                old = None
            if old != {"size": info.size, "chunk_size": info.chunk_size}:
                self.map_path.unlink(missing_ok=True)
                self.data_path.unlink(missing_ok=True)
        meta.write_text(json.dumps({"size": info.size, "chunk_size": info.chunk_size}))
        if not self.data_path.exists() or self.data_path.stat().st_size != info.size:
            with open(self.data_path, "wb") as fh:
                fh.truncate(info.size)
            self.map_path.unlink(missing_ok=True)
        self.have = self._load_map()
        self._fh = open(self.data_path, "r+b")  # noqa: SIM115 - kept open for the transfer
        self._unsynced = 0

    def _load_map(self) -> set[int]:
        try:
            raw = json.loads(self.map_path.read_text())
            return {int(i) for i in raw if 0 <= int(i) < self.info.chunks}
        except (OSError, ValueError, TypeError):
            return set()

    def write(self, index: int, data: bytes) -> None:
        self._fh.seek(index * self.info.chunk_size)
        self._fh.write(data)
        self.have.add(index)
        self._unsynced += 1
        if self._unsynced >= 8 or len(self.have) == self.info.chunks:
            self.sync()

    def sync(self) -> None:
        """Data first, then the bitmap that claims it (a crash never claims a chunk not on disk)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        write_atomic(self.map_path, json.dumps(sorted(self.have)))
        self._unsynced = 0

    def verify(self) -> bool:
        self._fh.flush()
        h = hashlib.sha256()
        with open(self.data_path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == self.info.file_id

    def read(self) -> bytes:
        self._fh.flush()
        return self.data_path.read_bytes()

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass

    def discard(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- deltas ----------------------------------------------------------------------------------------------------
def make_delta(old: bytes, new: bytes, max_ratio: float = 0.95) -> bytes | None:
    """A bsdiff4 patch turning ``old`` into ``new``, or ``None`` if it would not be smaller."""
    import bsdiff4

    try:
        patch = bsdiff4.diff(old, new)
    except Exception:
        return None
    if len(patch) >= len(new) * max_ratio:
        return None
    return bytes(patch)


def _bounded_bz2(data: bytes, limit: int, what: str) -> bytes:
    """bz2-decompress at most ``limit`` bytes (a patch block is never larger than the file it makes)."""
    import bz2

    d = bz2.BZ2Decompressor()
    try:
        out = d.decompress(data, max_length=limit + 1)
    except (OSError, ValueError, EOFError) as exc:
        raise SyncError(f"delta does not apply: its {what} block is not bz2 ({exc})") from None
    if len(out) > limit:
        raise SyncError(f"delta does not apply: its {what} block decompresses past {limit} bytes")
    if not d.eof:
        raise SyncError(f"delta does not apply: its {what} block is truncated")
    return out


def apply_delta(old: bytes, patch: bytes, expected: FileInfo) -> bytes:
    """Apply a bsdiff4 patch and check the result against the declared size and sha256.

    The size the patch declares is checked against ``expected`` before anything is
    decompressed, and no block is decompressed past what that size allows (no bz2 bombs). Without bsdiff4
    installed it is a ``SyncError`` too: the device fetches the full file."""
    try:
        import bsdiff4.core as core
    except ImportError:
        raise SyncError("delta does not apply: bsdiff4 is not installed (pip install bsdiff4, or the [device] "
                        "extra)") from None

    if len(patch) < 32 or patch[:7] != b"BSDIFF4":
        raise SyncError("delta does not apply: not a bsdiff4 patch")
    try:
        len_control, len_diff, len_dst = (core.decode_int64(patch[i : i + 8]) for i in (8, 16, 24))
    except Exception as exc:
        raise SyncError(f"delta does not apply: {exc}") from None
    if len_dst != expected.size:
        raise SyncError(f"delta declares a {len_dst}-byte result, the file is {expected.size} bytes")
    if not (0 <= len_control and 0 <= len_diff and 32 + len_control + len_diff <= len(patch)):
        raise SyncError("delta does not apply: its block lengths do not fit the patch")
    body = patch[32:]
    control = _bounded_bz2(body[:len_control], 24 * (expected.size + 1), "control")
    diff = _bounded_bz2(body[len_control : len_control + len_diff], expected.size, "diff")
    extra = _bounded_bz2(body[len_control + len_diff :], expected.size, "extra")
    if len(control) % 24:
        raise SyncError("delta does not apply: invalid control block")
    try:
        out = core.patch(old, len_dst, control, diff, extra)
    except Exception as exc:
        raise SyncError(f"delta does not apply: {exc}") from None
    if len(out) != expected.size or hashlib.sha256(out).hexdigest() != expected.file_id:
        raise SyncError("delta result does not match the declared file")
    return bytes(out)


__all__ = [
    "Receiver", "Begin", "ChunkArrived", "Stalled", "Verified", "Request", "Store", "CheckWhole", "Complete", "Fail",
    "StallBackoff", "serve_request", "file_info", "ChunkFile", "make_delta", "apply_delta", "DEFAULT_WINDOW",
    "DEFAULT_MAX_BUNDLE_BYTES", "TOO_LARGE",
]
