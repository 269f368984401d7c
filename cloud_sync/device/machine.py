"""The device side of cloud sync as a machine: ``handle(event) -> actions``, no threads, no broker, no files.

It decides; a driver (:class:`edgefleet.cloud_sync.device.driver.DeviceSync`, or a simulated device in
``benchmarks/fleet_ota.py``) performs each action and feeds the answer of those that have one back as an
event, as :func:`edgefleet.device_agent.updates.transition` and
:meth:`edgefleet.cloud_sync.wire.transfer.Receiver.handle` do for an install and for a file::

    DesiredIn(install) -> Report(DOWNLOADING), OpenFile(info)      (or Fetch(info) when the file has a URL)
    Opened(have)       -> RequestChunks ...           (the transfer Receiver's windows)
    ChunkIn(chunk)     -> StoreChunk, RequestChunks ...; once complete CheckFile
    FileChecked(ok)    -> PrepareInstall(using_delta) (or, on a bad file or delta, the full file again / FAILED)
    Fetched(ok)        -> PrepareInstall(over_http)   (or Report(DOWNLOADING origin_...), OpenFile: MQTT chunks)
    Prepared(path)     -> Report(IN_PROGRESS installing), Install(path)
    AgentJob(...)      -> Report(...)                 (the agent's own job transitions, until terminal)
    DesiredIn(rollback)-> RecordOrder(order)  -> OrderRecorded -> Rollback -> RolledBack -> Report(SUCCEEDED)

What it decides:

* **Jobs.** Each report raises the job's ``version``. A terminal report remembers the outcome (the last 50
  jobs) and clears the current job: a duplicate or replayed desired message of a finished job repeats that
  outcome and does nothing else; the desired message of the running job is ignored; a new job supersedes
  the running one (CANCELED ``superseded``) unless that one is installing, in which case it waits
  (``pending``) and starts when the install ends. ``action=none`` for the running job cancels it, again
  not while installing.
* **Chunks** go to the job's :class:`~edgefleet.cloud_sync.wire.transfer.Receiver`; a delta is used when the
  device holds its base, and a delta that fails (a bad chunk file or it does not apply) falls back to the
  full file once. Missing chunks are asked for again only after a wait that backs off with jitter
  (:class:`~edgefleet.cloud_sync.wire.transfer.StallBackoff`: ``stall_seconds`` while chunks flow, longer
  before the first one - the transfer is waiting its turn at the coordinator - doubling while none comes).
* **HTTP(S) origin.** A file (or delta) announced with a URL is fetched from there (:class:`Fetch`, when the driver
  can: ``fetch=True``) instead of in MQTT chunks. A fetch that fails for any reason (the origin down, a cut it
  could not resume, a file of another length or sha256: the driver's :mod:`.fetch` names it) is reported
  (DOWNLOADING with that ``origin_...`` reason, so the operator sees a stale or tampered origin) and the same file
  is then received in MQTT chunks: the origin is a cache in front of the coordinator, never the authority.
* **Rollback orders**: the order is verified by a function the machine calls (:meth:`Checks.check_order`,
  raising :class:`~edgefleet.cloud_sync.wire.orders.OrderRefused`: REJECTED with its reason); an accepted
  order is recorded before anything is done (not recorded: FAILED); then the device is already there
  (SUCCEEDED ``already_there``), runs another version than the order undoes (CANCELED ``not_on_version``),
  lacks the target as its previous version (FAILED ``rollback_target_missing``), or rolls back.
* **Refusals before download**: :meth:`Checks.check_before_download` (the model identity, TUF), the size
  cap (``bundle_too_large``), a job whose version is already active (SUCCEEDED ``already_active``).

``state`` is the dict the driver persists (``sync.json``: ``finished``, ``versions``, ``current``,
``order_seq``, ``order_job``; the driver adds ``session``) whenever a :class:`SaveState` is returned.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Union

from edgefleet.errors import ProtocolError, UpdateRejectedError

from ..wire import protocol as P
from ..wire.orders import OrderRefused, RollbackOrder
from ..wire.transfer import (
    TOO_LARGE,
    Begin,
    CheckWhole,
    ChunkArrived,
    Complete,
    Fail,
    Receiver,
    ReceiverAction,
    Request,
    StallBackoff,
    Stalled,
    Store,
    Verified,
    too_large_message,
)

FINISHED_KEPT = 50  # finished job outcomes remembered (replayed desired messages of these repeat the outcome)
STATS = ("chunks_received", "duplicates", "rerequested", "requested", "delta_used", "delta_failed",
         "bytes_received", "telemetry_acked", "orders_refused", "http_files", "http_bytes", "http_resumes",
         "origin_fallbacks")


# -- what the machine asks of the device (facts and verification) -------------------------------------------------------
class Checks(Protocol):
    """The facts and checks the machine needs from the device; each may do I/O, none changes the device."""

    def active_version(self) -> str:
        """The version the device runs ("" before the first install)."""

    def previous_version(self) -> str | None:
        """The version a rollback returns to (the store's previous), if any."""

    def delta_base(self) -> str | None:
        """The sha256 of the archive of the active version (the base of a delta), or None."""

    def check_before_download(self, desired: P.Desired) -> Path | None:
        """Refusals needing no byte of the bundle; raises ``UpdateRejectedError`` (with a reason). Returns the TUF
        metadata mirror the install is checked against again, or None."""

    def check_order(self, desired: P.Desired) -> tuple[RollbackOrder | None, bool]:
        """The verified rollback order of ``desired`` (None: none and none required) and whether its signature was
        verified; raises :class:`OrderRefused`."""


# -- events ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DesiredIn:
    desired: P.Desired


@dataclass(frozen=True)
class ChunkIn:
    chunk: P.Chunk


@dataclass(frozen=True)
class Connected:
    """The transport (re)connected: birth, then resume the current job."""


@dataclass(frozen=True)
class Tick:
    """Time passes (the driver's idle beat): a transfer without chunks for a while asks again (when: the machine's
    :class:`~edgefleet.cloud_sync.wire.transfer.StallBackoff`, from ``stall_seconds`` on, with jitter)."""

    connected: bool = True


@dataclass(frozen=True)
class Opened:
    """Answer to :class:`OpenFile`: the chunks already on disk (a resumed transfer)."""

    have: frozenset[int] = frozenset()


@dataclass(frozen=True)
class FileChecked:
    """Answer to :class:`CheckFile`: whether the whole file matches its sha256."""

    ok: bool


@dataclass(frozen=True)
class Prepared:
    """Answer to :class:`PrepareInstall`: the archive to install."""

    path: Path


@dataclass(frozen=True)
class Fetched:
    """Answer to :class:`Fetch` (it arrives later: the driver downloads on its own thread): the file of ``file_id``
    is complete and verified (``ok``), or the fetch ended with ``reason`` (see :mod:`.fetch`)."""

    job_id: str
    file_id: str
    ok: bool
    reason: str = ""
    message: str = ""
    received: int = 0  # bytes read over HTTP
    resumes: int = 0  # Range requests that continued a partial file


@dataclass(frozen=True)
class DeltaFailed:
    """Answer to :class:`PrepareInstall` of a delta that does not apply (the chunk file is discarded)."""

    message: str = ""


@dataclass(frozen=True)
class InstallFailed:
    """Answer to :class:`Install` when the agent raised instead of running a job."""

    message: str


@dataclass(frozen=True)
class AgentJob:
    """A transition of the agent's job (its hook); only the running job's count."""

    job_id: str
    status: str
    step: str = ""
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class OrderRecorded:
    """Answer to :class:`RecordOrder`: remembered durably."""


@dataclass(frozen=True)
class OrderNotRecorded:
    """Answer to :class:`RecordOrder`: could not be remembered (``disk_full``, ``io_error``): not executed."""

    reason: str
    message: str


@dataclass(frozen=True)
class RolledBack:
    """Answer to :class:`Rollback`."""


@dataclass(frozen=True)
class RollbackFailed:
    """Answer to :class:`Rollback` when the agent raised."""

    message: str


Event = Union[DesiredIn, ChunkIn, Connected, Tick, Opened, FileChecked, Fetched, Prepared, DeltaFailed, InstallFailed,
              AgentJob, OrderRecorded, OrderNotRecorded, RolledBack, RollbackFailed]


# -- actions --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    """Publish a job update (``up/job``)."""

    update: P.JobUpdate


@dataclass(frozen=True)
class Birth:
    """Publish the retained status (active version, delta base)."""


@dataclass(frozen=True)
class SaveState:
    """Persist :attr:`DeviceMachine.state` (atomically)."""


@dataclass(frozen=True)
class OpenFile:
    """Open (or resume) the chunk file of ``info``; answer :class:`Opened`."""

    info: P.FileInfo


@dataclass(frozen=True)
class RequestChunks:
    request: P.ChunkRequest


@dataclass(frozen=True)
class StoreChunk:
    index: int
    data: bytes


@dataclass(frozen=True)
class Fetch:
    """Download ``info`` from ``info.url`` over HTTP(S) into the job's file, resuming what is on disk, checking its
    length and sha256; answer :class:`Fetched` (later). Stopped by :class:`DiscardFile`."""

    job_id: str
    info: P.FileInfo


@dataclass(frozen=True)
class CheckFile:
    """Hash the whole chunk file; answer :class:`FileChecked`."""


@dataclass(frozen=True)
class DiscardFile:
    """Close and delete the job's chunk file (if one is open)."""


@dataclass(frozen=True)
class PrepareInstall:
    """Turn the complete chunk file into the archive to install (applying the delta to the base when
    ``using_delta``); answer :class:`Prepared` or :class:`DeltaFailed`."""

    file: P.FileInfo  # the file the archive must be (a delta's result is checked against it)
    using_delta: bool
    over_http: bool = False  # the file was fetched from the origin (:class:`Fetch`), not received in chunks


@dataclass(frozen=True)
class Install:
    """Hand the archive to the agent (its job hook reports back as :class:`AgentJob`); raised: :class:`InstallFailed`."""

    path: Path
    job_id: str
    mirror: Path | None = None  # TUF mode: the job's metadata
    quality: dict[str, Any] | None = None  # the deployment's quality policy (options over the agent's [quality])


@dataclass(frozen=True)
class RecordOrder:
    """Remember the order durably before acting on it; answer :class:`OrderRecorded` or :class:`OrderNotRecorded`."""

    order: RollbackOrder
    signed: bool


@dataclass(frozen=True)
class Rollback:
    """Roll the agent back to its previous version; answer :class:`RolledBack` or :class:`RollbackFailed`."""


Action = Union[Report, Birth, SaveState, OpenFile, RequestChunks, StoreChunk, Fetch, CheckFile, DiscardFile,
               PrepareInstall, Install, RecordOrder, Rollback]


@dataclass
class ActiveJob:
    """The job the device is running."""

    desired: P.Desired
    version: int = 0
    receiver: Receiver | None = None
    file_open: bool = False
    using_delta: bool = False
    ask_at: float = 0.0  # when the transfer asks again for its missing chunks if none arrives (StallBackoff)
    stalls: int = 0  # re-requests in a row without a chunk in between
    answered: bool = False  # a chunk of the transfer arrived (until then it is waiting its turn at the coordinator)
    installing: bool = False
    mirror: Path | None = None  # TUF mode: the job's metadata, the install is checked against it
    order: RollbackOrder | None = None
    fetching: P.FileInfo | None = None  # the file being fetched over HTTP(S) (:class:`Fetch`)
    origin_failed: set[str] = field(default_factory=set)  # file ids whose origin failed: MQTT chunks from now on


class DeviceMachine:
    """One device's job, transfer and rollback decisions. Not thread-safe: one driver thread feeds it."""

    def __init__(
        self,
        checks: Checks,
        *,
        state: dict[str, Any] | None = None,
        max_bundle_bytes: int,
        window: int = 16,
        stall_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        backoff: StallBackoff | None = None,
        rand: Callable[[], float] = random.random,
        fetch: bool = False,
    ) -> None:
        self.checks = checks
        self.state: dict[str, Any] = state if state is not None else {}
        self.max_bundle_bytes = int(max_bundle_bytes)
        self.window = window
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.backoff = backoff if backoff is not None else StallBackoff.of(stall_seconds)
        self.rand = rand  # the jitter's uniform draws in [0, 1)
        self.fetch = fetch  # the driver performs Fetch (HTTP(S)); without it URLs are ignored (MQTT chunks)
        self.active: ActiveJob | None = None
        self.pending: P.Desired | None = None  # arrived while an install was running
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self._out: list[Action] = []

    # -- the one entry point ------------------------------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Action]:
        self._out = []
        a = self.active
        if isinstance(event, DesiredIn):
            self._desired(event.desired)
        elif isinstance(event, ChunkIn):
            self._chunk(event.chunk)
        elif isinstance(event, Connected):
            self._emit(Birth())
            self._resume()
        elif isinstance(event, Tick):
            if a is not None and a.receiver is not None and not a.installing and event.connected \
                    and self.clock() >= a.ask_at:
                a.stalls += 1
                self._wait(a)
                self._drive(a, a.receiver.handle(Stalled()))
        elif isinstance(event, AgentJob):
            if a is not None and event.job_id == a.desired.job_id:
                if event.status in P.TERMINAL_STATES:
                    self._report(a, event.status, event.step, event.reason, event.message)
                else:
                    self._report(a, "IN_PROGRESS", event.step, event.reason, event.message)
        elif a is None:
            pass  # an answer for a job that has ended meanwhile
        elif isinstance(event, Opened):
            if a.receiver is not None:
                self._wait(a)
                self._drive(a, a.receiver.handle(Begin(event.have)))
        elif isinstance(event, FileChecked):
            if a.receiver is not None:
                self._drive(a, a.receiver.handle(Verified(event.ok)))
        elif isinstance(event, Fetched):
            self._fetched(a, event)
        elif isinstance(event, Prepared):
            self._install(a, event.path)
        elif isinstance(event, DeltaFailed):
            self.stats["delta_failed"] += 1
            self._emit(DiscardFile())
            a.file_open = False
            assert a.desired.file is not None
            self._start_transfer(a, a.desired.file, using_delta=False)
        elif isinstance(event, InstallFailed):
            self._report(a, "FAILED", reason="install_error", message=event.message)
        elif isinstance(event, OrderRecorded):
            self._after_order(a)
        elif isinstance(event, OrderNotRecorded):
            self._report(a, "FAILED", reason=event.reason, message=event.message)
        elif isinstance(event, RolledBack):
            self._report(a, "SUCCEEDED", reason="rolled_back")
        elif isinstance(event, RollbackFailed):
            self._report(a, "FAILED", reason="rollback_failed", message=event.message)
        else:  # pragma: no cover
            raise AssertionError(f"unknown event {event!r}")
        out, self._out = self._out, []
        return out

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    # -- jobs --------------------------------------------------------------------------------------------------------------
    def finished(self) -> dict[str, Any]:
        fin: dict[str, Any] = self.state.setdefault("finished", {})
        return fin

    def _update(self, job_id: str, status: str, version: int, step: str = "", reason: str = "", message: str = "",
                details: dict[str, Any] | None = None) -> P.JobUpdate:
        return P.JobUpdate(job_id, status, version, version - 1, step, reason, message[:2000],
                           self.checks.active_version() or "", details or {}, time.time())

    def _report(self, a: ActiveJob, status: str, step: str = "", reason: str = "", message: str = "",
                details: dict[str, Any] | None = None) -> None:
        a.version += 1
        self.state.setdefault("versions", {})[a.desired.job_id] = a.version
        self._emit(Report(self._update(a.desired.job_id, status, a.version, step, reason, message, details)))
        if status not in P.TERMINAL_STATES:
            return
        fin = self.finished()
        fin[a.desired.job_id] = {"status": status, "reason": reason, "version": a.version}
        while len(fin) > FINISHED_KEPT:
            fin.pop(next(iter(fin)))
        self.state.pop("current", None)
        self._emit(SaveState())
        if a.file_open:
            self._emit(DiscardFile())
            a.file_open = False
        a.receiver = None
        if self.active is a:
            self.active = None
        self._emit(Birth())
        pending, self.pending = self.pending, None
        if pending is not None and self.active is None:
            self._desired(pending)

    def _resume(self) -> None:
        a = self.active
        if a is None:
            cur = self.state.get("current")
            if cur:
                try:
                    d = P.Desired.from_dict(cur)
                except ProtocolError:
                    self.state.pop("current", None)
                    return
                self._desired(d)
            return
        if a.receiver is not None:
            self._wait(a)  # give in-flight chunks a moment before asking again

    def _desired(self, d: P.Desired) -> None:
        if d.action == P.JobAction.NONE.value:
            a = self.active
            if a is not None and a.desired.job_id == d.job_id and not a.installing:
                self._report(a, "CANCELED", reason="canceled")
            return
        done = self.finished().get(d.job_id)
        if done is not None:  # a replayed or duplicate desired: repeat the outcome, do nothing else
            version = int(done["version"])
            self._emit(Report(P.JobUpdate(d.job_id, done["status"], version, version - 1, "", done.get("reason", ""),
                                          "", self.checks.active_version() or "")))
            return
        a = self.active
        if a is not None:
            if a.desired.job_id == d.job_id:
                return  # duplicate
            if a.installing:
                self.pending = d  # taken up when the install ends
                return
            self._report(a, "CANCELED", reason="superseded", message=f"superseded by job {d.job_id}")
        a = ActiveJob(d, version=int(self.state.get("versions", {}).get(d.job_id, 0)))
        self.active = a
        self.state["current"] = d.to_dict()
        self._emit(SaveState())
        if d.action == P.JobAction.ROLLBACK.value:
            self._rollback(a)
            return
        assert d.file is not None
        if d.target_version and self.checks.active_version() == d.target_version:
            self._report(a, "SUCCEEDED", reason="already_active")
            return
        try:
            a.mirror = self.checks.check_before_download(d)
        except UpdateRejectedError as exc:
            self._report(a, "REJECTED", reason=exc.reason, message=str(exc))
            return
        if d.file.size > self.max_bundle_bytes:  # the size is not signed: bound it before any work
            self._report(a, "REJECTED", reason=TOO_LARGE, message=too_large_message(d.file.size, self.max_bundle_bytes))
            return
        self._report(a, "DOWNLOADING", step="downloading")
        base = None
        # a delta is never larger than the file it rebuilds (whose size, in TUF mode, is the signed target's): the
        # rebuilt archive is checked against the file's sha256 before install
        if d.delta is not None and d.delta_base and d.delta.size <= min(self.max_bundle_bytes, d.file.size):
            try:
                base = self.checks.delta_base()
            except Exception:
                base = None
        if d.delta is not None and base is not None and base == d.delta_base:
            self._start_transfer(a, d.delta, using_delta=True)
        else:
            self._start_transfer(a, d.file, using_delta=False)

    # -- chunks ------------------------------------------------------------------------------------------------------------
    def _start_transfer(self, a: ActiveJob, info: P.FileInfo, using_delta: bool) -> None:
        a.using_delta = using_delta
        if self.fetch and info.url and info.file_id not in a.origin_failed:
            a.receiver = None
            a.fetching = info
            a.file_open = True
            self._emit(Fetch(a.desired.job_id, info))
            return
        a.fetching = None
        a.receiver = Receiver(a.desired.job_id, info, window=self.window, max_bytes=self.max_bundle_bytes)
        a.file_open = True
        a.stalls, a.answered = 0, False
        self._wait(a)
        self._emit(OpenFile(info))

    def _fetched(self, a: ActiveJob, ev: Fetched) -> None:
        info = a.fetching
        if info is None or a.installing or ev.job_id != a.desired.job_id or ev.file_id != info.file_id:
            return  # a fetch this job no longer waits for (canceled, superseded)
        self.stats["http_bytes"] += ev.received
        self.stats["http_resumes"] += ev.resumes
        a.fetching = None
        if ev.ok:
            self.stats["http_files"] += 1
            assert a.desired.file is not None
            self._emit(PrepareInstall(a.desired.file, a.using_delta, over_http=True))
            return
        # the origin failed or served something else: say so, then receive the same file in MQTT chunks
        self.stats["origin_fallbacks"] += 1
        a.origin_failed.add(info.file_id)
        self._emit(DiscardFile())
        a.file_open = False
        self._report(a, "DOWNLOADING", step="downloading", reason=ev.reason or "origin_failed",
                     message=f"{ev.message} -- receiving the {'delta' if a.using_delta else 'file'} in MQTT chunks")
        self._start_transfer(a, info, a.using_delta)

    def _chunk(self, chunk: P.Chunk) -> None:
        a = self.active
        if a is None or a.receiver is None or a.installing:
            return
        self.stats["chunks_received"] += 1
        self.stats["bytes_received"] += len(chunk.data)
        r = a.receiver
        before = r.duplicates
        a.stalls, a.answered = 0, True
        self._wait(a)
        self._drive(a, r.handle(ChunkArrived(chunk)))
        self.stats["duplicates"] += r.duplicates - before

    def _wait(self, a: ActiveJob) -> None:
        """From now, how long the transfer waits for a chunk before it asks again (:class:`StallBackoff`)."""
        a.ask_at = self.clock() + self.backoff.delay(a.stalls, a.answered, self.rand())

    def _drive(self, a: ActiveJob, actions: list[ReceiverAction]) -> None:
        r = a.receiver
        assert r is not None
        for act in actions:
            if isinstance(act, Request):
                self._emit(RequestChunks(P.ChunkRequest.make(a.desired.job_id, r.info.file_id, r.info.chunks,
                                                             list(act.indices))))
            elif isinstance(act, Store):
                self._emit(StoreChunk(act.index, act.data))
            elif isinstance(act, CheckWhole):
                self._emit(CheckFile())
            elif isinstance(act, Complete):
                self.stats["requested"] += r.requested
                self.stats["rerequested"] += r.rerequested
                assert a.desired.file is not None
                self._emit(PrepareInstall(a.desired.file, a.using_delta))
            elif isinstance(act, Fail):
                self._emit(DiscardFile())
                a.file_open = False
                if a.using_delta:
                    self.stats["delta_failed"] += 1
                    assert a.desired.file is not None
                    self._start_transfer(a, a.desired.file, using_delta=False)
                else:
                    self._report(a, "FAILED", reason=act.reason, message=act.message)
                return

    def _install(self, a: ActiveJob, path: Path) -> None:
        if a.using_delta:
            self.stats["delta_used"] += 1
        a.file_open = False  # the driver has consumed it
        a.receiver = None
        a.installing = True
        self._report(a, "IN_PROGRESS", step="installing")
        self._emit(Install(path, a.desired.job_id, a.mirror,
                           a.desired.quality.options() if a.desired.quality is not None else None))

    # -- rollback orders -----------------------------------------------------------------------------------------------------
    def _rollback(self, a: ActiveJob) -> None:
        try:
            order, signed = self.checks.check_order(a.desired)
        except OrderRefused as exc:
            self.stats["orders_refused"] += 1
            self._report(a, "REJECTED", reason=exc.reason, message=str(exc))
            return
        if order is None:
            self._after_order(a)
            return
        # executed at most once: remembered (durably, fsynced) before acting
        a.order = order
        self.state["order_seq"], self.state["order_job"] = order.seq, order.job_id
        self._emit(RecordOrder(order, signed))

    def _after_order(self, a: ActiveJob) -> None:
        d, order = a.desired, a.order
        active = self.checks.active_version()
        if d.rollback_to and active == d.rollback_to:
            self._report(a, "SUCCEEDED", reason="already_there")
            return
        if order is not None and order.from_version and active != order.from_version:
            self._report(a, "CANCELED", reason="not_on_version",
                         message=f"the order undoes version {order.from_version}; this device runs {active}")
            return
        if d.rollback_to and self.checks.previous_version() != d.rollback_to:
            self._report(a, "FAILED", reason="rollback_target_missing",
                         message=f"version {d.rollback_to} is not the previous version in the store")
            return
        self._emit(Rollback())


__all__ = [
    "DeviceMachine", "ActiveJob", "Checks", "Event", "Action", "DesiredIn", "ChunkIn", "Connected", "Tick", "Opened",
    "FileChecked", "Fetched", "Fetch", "Prepared", "DeltaFailed", "InstallFailed", "AgentJob", "OrderRecorded", "OrderNotRecorded",
    "RolledBack", "RollbackFailed", "Report", "Birth", "SaveState", "OpenFile", "RequestChunks", "StoreChunk",
    "CheckFile", "DiscardFile", "PrepareInstall", "Install", "RecordOrder", "Rollback", "STATS",
]
