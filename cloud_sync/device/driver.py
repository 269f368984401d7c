"""The device side of cloud sync: connects an :class:`edgefleet.device_agent.Agent` to the broker.

This is the driver of :class:`~.machine.DeviceMachine`, which makes every decision (duplicate, replayed,
superseded and canceled jobs, chunks, rollback orders, reports): it parses what arrives, feeds it to the
machine as events and performs the actions the machine returns (publishing, the chunk file on disk, the
agent's install and rollback), feeding the answers back. What it does besides:

* Birth (retained status, session counter persisted and raised on every start)
  and a last will that marks the device offline with the same counter.
* Desired jobs are run through the agent's own install path; each agent job transition reaches the machine
  through the agent's job hooks.
* Rollback orders are verified here (:mod:`..wire.orders`) against the agent's trusted keys and its order
  ledger; in TUF mode the order must be signed by a threshold of the repository's rollback role, checked by
  python-tuf against the metadata sent with the job (no metadata: ``no_repository``). Before a download, a job
  for another model is refused, and in TUF mode the file must be the signed target.
* Bundles arrive in chunks (:mod:`..wire.transfer`), kept on disk so a restart or a
  broker outage resumes, or, when the job names an origin URL, over HTTP(S) (:mod:`.fetch`, on a
  thread of its own: Range requests resume a cut or a restart; length and sha256 checked; any
  failure falls back to chunks); a bsdiff4 delta is used when offered against the
  archive the device holds, the full file otherwise or when the delta fails.
  A file declared larger than ``max_bundle_bytes`` (default: the agent's store
  quota) is REJECTED ``bundle_too_large`` before any work: nothing is
  preallocated and no chunk is asked for (the size is not signed).
* Telemetry is drained from the agent's durable queue through :class:`MqttSink`,
  which returns only the sequence numbers the coordinator acknowledged.

All protocol decisions run on one worker thread fed by a queue, so the
transport's thread only parses and enqueues.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from edgefleet._version import __version__ as AGENT_VERSION
from edgefleet.atomic import write_atomic
from edgefleet.errors import EdgefleetError, ProtocolError, SyncError, TrustError, UpdateRejectedError

from ..transport import Transport, Will
from ..wire import protocol as P
from ..wire.headdelta import apply_head_update, is_head_update
from ..wire.orders import OrderRefused, RollbackOrder, check_order
from ..wire.transfer import DEFAULT_MAX_BUNDLE_BYTES, ChunkFile, apply_delta
from . import machine as M
from .fetch import DEFAULT_ATTEMPTS, DEFAULT_READ_TIMEOUT, Download, FetchResult

log = logging.getLogger(__name__)

TransportFactory = Callable[[Will], Transport]


class AgentStore(Protocol):
    """What the driver uses of the agent's model store."""

    def state(self) -> Any:
        """The store's state: ``active`` and ``previous`` entries (``id``, ``version``) or None."""

    def object_path(self, object_id: str) -> Path: ...


class Agent(Protocol):
    """What :class:`DeviceSync` needs of its agent (:class:`edgefleet.device_agent.Agent` has it all). Optional
    members, read with ``getattr`` and a default: ``model_identity``, ``tuf_mode``, ``trusted_keys``,
    ``orders`` (the order ledger), ``config.store.quota_mb``, ``config.update``, ``config.require_signature``,
    ``config.hardware_tags``."""

    job_hooks: list[Callable[[Any], None]]

    @property
    def store(self) -> AgentStore: ...

    @property
    def config(self) -> Any: ...

    @property
    def telemetry(self) -> Any: ...

    @property
    def active_version(self) -> str | None: ...

    @property
    def root(self) -> Path:
        """The agent's state directory (read in TUF mode only)."""

    def install(self, source: str | Path, *, job_id: str | None = None,
                repo: str | os.PathLike[str] | None = None, quality: Mapping[str, Any] | None = None) -> Any: ...

    def rollback(self) -> Any: ...


def _default_cap(agent: Agent) -> int:
    """The agent's store quota (a bundle larger than it could never be installed), else the default."""
    quota = getattr(getattr(getattr(agent, "config", None), "store", None), "quota_mb", None)
    return int(quota * (1 << 20)) if isinstance(quota, (int, float)) and quota > 0 else DEFAULT_MAX_BUNDLE_BYTES


class MqttSink:
    """A ``TelemetrySink`` that publishes a batch and returns the seqs the coordinator acknowledged."""

    def __init__(self, sync: DeviceSync, timeout: float = 5.0) -> None:
        self.sync = sync
        self.timeout = timeout
        self._waiting: dict[str, tuple[threading.Event, list[int]]] = {}
        self._lock = threading.Lock()

    def send(self, records: Sequence[Any]) -> Iterable[int]:
        if not self.sync.transport.connected or not records:
            return []
        batch_id = uuid.uuid4().hex[:16]
        msg = P.TelemetryBatch(self.sync.device_id, batch_id, tuple(
            P.TelemetryRecord.of(r) for r in records))
        ev = threading.Event()
        got: list[int] = []
        with self._lock:
            self._waiting[batch_id] = (ev, got)
        try:
            self.sync.transport.publish(self.sync.topic(P.Up.TELEMETRY), msg.to_bytes(), qos=1)
            ev.wait(self.timeout)
        finally:
            with self._lock:
                self._waiting.pop(batch_id, None)
        return list(got)

    def acked(self, ack: P.TelemetryAck) -> None:
        with self._lock:
            w = self._waiting.get(ack.batch_id)
        if w is not None:
            w[1].extend(ack.seqs)
            w[0].set()


class DeviceSync:
    """Runs one device's side of the protocol: the driver of a :class:`~.machine.DeviceMachine`. ``agent`` is
    anything with the :class:`Agent` members (the device agent's ``Agent``, or a fake in tests)."""

    def __init__(
        self,
        agent: Agent,
        make_transport: TransportFactory,
        fleet: str,
        device_id: str,
        sync_dir: str | Path,
        *,
        group: str = "",
        telemetry_interval: float = 5.0,
        telemetry_batch: int = 500,
        stall_seconds: float = 5.0,
        window: int = 16,
        max_bundle_bytes: int | None = None,
        origin: bool = True,
        origin_timeout: float = DEFAULT_READ_TIMEOUT,
        origin_attempts: int = DEFAULT_ATTEMPTS,
        inventory_interval: float = 300.0,
    ) -> None:
        self.agent = agent
        #: how often the inventory is looked at again after the birth; a material change is reported (0: never)
        self.inventory_interval = inventory_interval
        self._inventory: P.Inventory | None = None  # as last reported
        self._inventory_checked = time.monotonic()
        self.fleet = P.check_id(fleet, "fleet")
        self.device_id = P.check_id(device_id, "device id")
        self.group = group
        self.dir = Path(sync_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.telemetry_interval = telemetry_interval
        self.telemetry_batch = telemetry_batch
        self.stall_seconds = stall_seconds
        self.window = window
        self.max_bundle_bytes = int(max_bundle_bytes) if max_bundle_bytes is not None else _default_cap(agent)
        self._state = self._load_state()
        self._state["session"] = int(self._state.get("session", 0)) + 1
        self._save_state()
        self.session = self._state["session"]
        will = Will(self.topic(P.Up.STATUS), P.Status(self.device_id, False, self.session).to_bytes(), 1, True)
        self.transport = make_transport(will)
        self.transport.on_message(self._on_message)
        self.transport.on_connect(self._connected)
        on_disconnect = getattr(self.transport, "on_disconnect", None)  # an optional member of a Transport
        if on_disconnect is not None:
            on_disconnect(self._disconnected)
        self.sink = MqttSink(self)
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.malformed = 0
        self._base_cache: tuple[str, str, Path] | None = None  # (object id, sha256, path)
        self._file: ChunkFile | None = None  # the running job's chunk file
        # the running job's HTTP(S) download (origin=False: jobs' URLs are ignored, files come in MQTT chunks)
        self.origin_timeout = origin_timeout
        self.origin_attempts = origin_attempts
        self._download: tuple[Download, threading.Thread] | None = None
        self._order_verified = False
        self.machine = M.DeviceMachine(_Checks(self), state=self._state, max_bundle_bytes=self.max_bundle_bytes,
                                       window=window, stall_seconds=stall_seconds, fetch=origin)
        self.stats = self.machine.stats  # the machine's counters and the driver's (telemetry_acked), one dict
        agent.job_hooks.append(lambda job: self._q.put(("agent_job", job)))

    # -- the broker connection (logged: the device's own view of its link) -------------------------------
    def _connected(self) -> None:
        url = str(getattr(getattr(self.transport, "config", None), "url", "") or "")
        log.info("device %s connected to the broker%s (fleet %s, session %d)", self.device_id,
                 f" at {url}" if url else "", self.fleet, self.session,
                 extra={"event": "broker_connected", "device": self.device_id, "fleet": self.fleet, "broker": url})
        self._q.put(("connected", None))

    def _disconnected(self, reason: str) -> None:
        extra = {"event": "broker_disconnected", "device": self.device_id, "fleet": self.fleet, "reason": reason}
        if reason == "closed" or self._stop.is_set():
            log.info("device %s disconnected from the broker (%s)", self.device_id, reason, extra=extra)
        else:
            log.warning("device %s lost its broker connection (%s): it keeps serving, keeps its telemetry and "
                        "reconnects", self.device_id, reason, extra=extra)

    # -- persistence ------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            d = json.loads((self.dir / "sync.json").read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        write_atomic(self.dir / "sync.json", json.dumps(self._state).encode())

    @property
    def _active(self) -> M.ActiveJob | None:
        """The job the machine is running (tests and tools look at it)."""
        return self.machine.active

    # -- topics and publishing ----------------------------------------------------------------------
    def topic(self, kind: P.Up) -> str:
        return P.up_topic(self.fleet, self.device_id, kind)

    def _publish(self, kind: P.Up, msg: P.Message | P.ChunkRequest, retain: bool = False) -> None:
        try:
            self.transport.publish(self.topic(kind), msg.to_bytes(), qos=1, retain=retain)
        except SyncError:
            log.debug("not connected; %s dropped (it is re-sent on reconnect where it matters)", kind)

    def base_archive(self) -> tuple[str, Path] | None:
        """The deterministic archive of the active version (sha256, path): the base for deltas."""
        state = self.agent.store.state()
        if state.active is None:
            return None
        if self._base_cache and self._base_cache[0] == state.active.id:
            return self._base_cache[1], self._base_cache[2]
        from edgefleet.bundle import write_archive
        from edgefleet.canonical import sha256_bytes

        path = self.dir / "base.efb"
        write_archive(self.agent.store.object_path(state.active.id), path)
        sha = sha256_bytes(path.read_bytes())
        self._base_cache = (state.active.id, sha, path)
        return sha, path

    def _birth(self) -> None:
        self._publish_status(device_inventory(getattr(self.agent.config, "state_dir", None) or self.dir))

    def _publish_status(self, inventory: P.Inventory, update: bool = False) -> None:
        """This session's online status (retained): what it runs and its ``inventory``. At the birth, and again
        when the inventory changed materially (:meth:`refresh_inventory`), as a status update of the same session."""
        state = self.agent.store.state()
        base = None
        try:
            base = self.base_archive()
        except Exception:
            log.exception("cannot build the base archive")
        self._publish(P.Up.STATUS, P.Status(
            self.device_id, True, self.session, time.time(), AGENT_VERSION,
            state.active.version if state.active else "", state.active.id if state.active else "",
            base[0] if base else "", tuple(getattr(self.agent.config, "hardware_tags", ())), self.group,
            inventory, update), retain=True)
        self._inventory = inventory
        self._inventory_checked = time.monotonic()

    def refresh_inventory(self) -> bool:
        """Report the inventory again when it changed materially since it was last reported (the disk filling up
        or freed, an OS upgrade without a restart): looked at every :attr:`inventory_interval` seconds. Whether it
        was reported."""
        if not self.inventory_interval or time.monotonic() - self._inventory_checked < self.inventory_interval:
            return False
        self._inventory_checked = time.monotonic()
        now = device_inventory(getattr(self.agent.config, "state_dir", None) or self.dir)
        if self._inventory is None or not inventory_changed(self._inventory, now):
            return False
        log.info("inventory changed (free disk %d -> %d bytes): reporting it", self._inventory.free_disk_bytes,
                 now.free_disk_bytes, extra={"event": "inventory_changed"})
        self._publish_status(now, update=True)
        return True

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.transport.subscribe(P.down_filter(self.fleet, self.device_id), qos=1)
        for target, name in ((self._work, "sync-worker"), (self._telemetry_loop, "sync-telemetry")):
            t = threading.Thread(target=target, name=f"edgefleet-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.transport.connect()

    def stop(self, graceful: bool = True) -> None:
        """Stop; a graceful stop publishes the death itself (the will is for ungraceful ends)."""
        if graceful and self.transport.connected:
            self._publish(P.Up.STATUS, P.Status(self.device_id, False, self.session, time.time()), retain=True)
            time.sleep(0.05)
        self._stop.set()
        self._q.put(("stop", None))
        for t in self._threads:
            t.join(timeout=10)
        self._stop_fetch()  # its partial file stays: the next start resumes it with a Range request
        if self._file is not None:
            self._file.sync()
            self._file.close()
        self.transport.close()

    # -- inbound ------------------------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            info = P.parse_topic(topic)
            if info.device != self.device_id or info.direction != "down":
                raise ProtocolError(f"unexpected topic {topic}")
            if info.kind == P.Down.CHUNK.value:
                self._q.put(("chunk", P.Chunk.parse(payload)))
            elif info.kind == P.Down.ACK.value:
                ack = P.TelemetryAck.parse(payload)
                self.sink.acked(ack)
            elif info.kind == P.Down.DESIRED.value:
                if payload:
                    self._q.put(("desired", P.Desired.parse(payload)))
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("dropped a malformed message on %s: %s", topic, exc)

    # -- the worker --------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                kind, value = self._q.get(timeout=min(0.5, self.stall_seconds))
            except queue.Empty:
                kind, value = "idle", None
            try:
                if kind == "stop":
                    return
                if kind == "connected":
                    self._run(M.Connected())
                elif kind == "desired":
                    self._on_desired(value)
                elif kind == "chunk":
                    self._on_chunk(value)
                elif kind == "agent_job":
                    self._on_agent_job(value)
                elif kind == "fetched":
                    job_id, file_id, res = value
                    self._run(M.Fetched(job_id, file_id, res.ok, res.reason, res.message, res.received, res.resumes))
                self._run(M.Tick(self.transport.connected))
            except Exception:  # the worker must survive anything
                log.exception("sync worker error on %s", kind)

    def _on_desired(self, d: P.Desired) -> None:
        if d.action != P.JobAction.NONE.value:
            log.info("job %s: %s %s%s of deployment %s", d.job_id, d.action,
                     d.model + " " if d.model else "", f"v{d.target_version}" if d.target_version else "",
                     d.deployment_id, extra={"event": "job_received", "job": d.job_id, "action": d.action,
                                             "version": d.target_version, "deployment": d.deployment_id})
        self._run(M.DesiredIn(d))

    def _on_chunk(self, chunk: P.Chunk) -> None:
        self._run(M.ChunkIn(chunk))

    def _on_agent_job(self, job: Any) -> None:
        self._run(M.AgentJob(job.job_id, job.status.value, job.step.value, job.reason, job.message))

    def _run(self, event: M.Event) -> None:
        """Feed one event to the machine and perform its actions; an action's answer is fed back at once and
        its actions run before the rest (as the calls they replace did)."""
        todo = deque(self.machine.handle(event))
        while todo:
            answer = self._perform(todo.popleft())
            if answer is not None:
                todo.extendleft(reversed(self.machine.handle(answer)))

    def _perform(self, act: M.Action) -> M.Event | None:  # noqa: C901 - one branch per action
        if isinstance(act, M.Report):
            self._publish(P.Up.JOB, act.update)
        elif isinstance(act, M.RequestChunks):
            self._publish(P.Up.CHUNKS, act.request)
        elif isinstance(act, M.StoreChunk):
            assert self._file is not None
            self._file.write(act.index, act.data)
        elif isinstance(act, M.SaveState):
            self._save_state()
        elif isinstance(act, M.Birth):
            self._birth()
        elif isinstance(act, M.OpenFile):
            self._file = ChunkFile(self.dir / "transfers", act.info, max_bytes=self.max_bundle_bytes)
            return M.Opened(frozenset(self._file.have))
        elif isinstance(act, M.CheckFile):
            assert self._file is not None
            return M.FileChecked(self._file.verify())
        elif isinstance(act, M.Fetch):
            self._start_fetch(act.job_id, act.info)
        elif isinstance(act, M.DiscardFile):
            if self._file is not None:
                self._file.discard()
                self._file = None
            stopped = self._stop_fetch()
            if stopped is not None:
                stopped.dest.unlink(missing_ok=True)
        elif isinstance(act, M.PrepareInstall):
            return self._prepare(act)
        elif isinstance(act, M.Install):
            log.info("job %s: bundle received, installing", act.job_id,
                     extra={"event": "install_started", "job": act.job_id})
            try:  # every transition comes back through the agent's job hook
                if act.mirror is not None:  # TUF mode: checked again against the signed target, with delegated keys
                    self.agent.install(act.path, job_id=act.job_id, repo=act.mirror, quality=act.quality)
                else:
                    self.agent.install(act.path, job_id=act.job_id, quality=act.quality)
            except EdgefleetError as exc:
                log.warning("job %s: the install failed: %s", act.job_id, exc,
                            extra={"event": "install_failed", "job": act.job_id})
                return M.InstallFailed(str(exc))
        elif isinstance(act, M.RecordOrder):
            return self._record_order(act)
        elif isinstance(act, M.Rollback):
            log.warning("rolling back as the coordinator ordered", extra={"event": "rollback_ordered"})
            try:
                self.agent.rollback()
            except EdgefleetError as exc:
                log.error("the ordered rollback failed: %s", exc, extra={"event": "rollback_failed"})
                return M.RollbackFailed(str(exc))
            log.info("rolled back as ordered: serving %s", self.agent.active_version or "nothing",
                     extra={"event": "rollback_succeeded", "version": self.agent.active_version or ""})
            return M.RolledBack()
        else:  # pragma: no cover
            raise AssertionError(f"unknown action {act!r}")
        return None

    def _start_fetch(self, job_id: str, info: P.FileInfo) -> None:
        """Download ``info`` from its URL on a thread of its own; its result comes back through the queue."""
        if self._download is not None:
            self._stop_fetch()
        dl = Download(info.url, self.dir / "transfers" / f"{info.file_id}.http", info.size, info.file_id,
                      read_timeout=self.origin_timeout, attempts=self.origin_attempts)

        def run() -> None:
            try:
                res = dl.run()
            except Exception as exc:  # the thread must always answer
                log.exception("download of %s failed", info.url[:200])
                res = FetchResult(False, "origin_io_error", str(exc), dl.received, dl.resumes, dl.requests)
            if res.ok:
                log.info("job %s: %d bytes from %s (%d resumed request(s))", job_id, info.size, info.url[:200],
                         res.resumes)
            elif res.reason != "canceled":
                log.warning("job %s: origin %s failed: %s (%s); falling back to MQTT chunks", job_id, info.url[:200],
                            res.reason, res.message)
            self._q.put(("fetched", (job_id, info.file_id, res)))

        t = threading.Thread(target=run, name="edgefleet-sync-fetch", daemon=True)
        self._download = (dl, t)
        t.start()

    def _stop_fetch(self) -> Download | None:
        """Cancel the running download (its connection is closed, so this is quick) and wait for its thread."""
        if self._download is None:
            return None
        dl, t = self._download
        self._download = None
        dl.cancel()
        t.join(timeout=self.origin_timeout + 5)
        return dl

    def _prepare(self, act: M.PrepareInstall) -> M.Event:
        """The complete file as ``incoming.efb``: the delta applied to the base archive, or the file itself. The file
        is the chunk file, or the download's (``over_http``)."""
        path = self.dir / "incoming.efb"
        if act.over_http:
            assert self._download is not None
            src = self._download[0].dest
        else:
            assert self._file is not None
            self._file.close()
            src = self._file.data_path
        if act.using_delta:
            base = self.base_archive()
            try:
                if base is None:
                    raise SyncError("the delta base is gone")
                patch = src.read_bytes()
                data = self._head_update(patch, act.file) if is_head_update(patch) else \
                    apply_delta(base[1].read_bytes(), patch, act.file)
            except SyncError as exc:
                log.warning("delta failed (%s); fetching the full bundle", exc)
                return M.DeltaFailed(str(exc))  # the machine discards the file and fetches the full one
            path.write_bytes(data)
            src.unlink(missing_ok=True)
        else:
            src.replace(path)
        if act.over_http:
            self._download = None
        else:
            assert self._file is not None
            self._file.discard()
            self._file = None
        return M.Prepared(path)

    def _head_update(self, data: bytes, expected: P.FileInfo) -> bytes:
        """The target archive rebuilt from the installed bundle and a head-only update (edgefleet.headupdate:
        the new head, the installed backbone, the signed manifest checked); a ``SyncError`` when it does not apply
        (then the full file is fetched, as for a bsdiff4 delta)."""
        store: Any = self.agent.store  # edgefleet.device_agent.store.Store: verify, verify_keys
        active = store.state().active
        if active is None or not hasattr(store, "verify"):
            raise SyncError("the head update's base is gone")
        try:
            installed = store.verify(active.id)
        except EdgefleetError as exc:
            raise SyncError(f"head update: the installed version fails verification: {exc}") from None
        out = apply_head_update(installed, data, expected, getattr(store, "verify_keys", None),
                                getattr(self.agent.config, "require_signature", None), workdir=self.dir)
        self.stats["head_updates_used"] = self.stats.get("head_updates_used", 0) + 1
        return out

    def _record_order(self, act: M.RecordOrder) -> M.Event:
        """The order's seq in sync.json and the agent's ledger, fsynced, before it is executed."""
        order = act.order
        ledger = getattr(self.agent, "orders", None)
        try:
            self._save_state()
            if ledger is not None:
                ledger.record(f"fleet:{order.job_id}:{order.seq}", order.issued_at, signed=act.signed,
                              seq=order.seq, job=order.job_id)
        except OSError as exc:  # not remembered, so not executed (a full disk): the active version stays
            return M.OrderNotRecorded("disk_full" if exc.errno == 28 else "io_error",
                                      f"cannot record the rollback order: {exc}")
        return M.OrderRecorded()

    # -- checks (the machine calls them through _Checks) ------------------------------------------------------
    def _check_before_download(self, d: P.Desired) -> Path | None:
        """Refusals that need no byte of the bundle: a job for another model than the one this device serves
        (``wrong_model``), and in TUF mode a file that is not exactly the signed target of (model, version):
        the job's metadata is refreshed by python-tuf and its length and sha256 must be the target's
        (``target_mismatch``, or the metadata's own named reason), and when the signed target names its download
        URL (``repo add --origin-url``) the job's URL must be that one (``origin_not_signed``). Returns the
        metadata mirror the install is checked against again (TUF mode), else None."""
        assert d.file is not None
        identity = str(getattr(self.agent, "model_identity", "") or "")
        if d.model and identity and d.model != identity:
            raise UpdateRejectedError(f"the job installs model {d.model!r} v{d.target_version}; this device serves "
                                      f"{identity!r} (set agent.model_name to re-assign it)", reason="wrong_model")
        if not getattr(self.agent, "tuf_mode", False):
            return None
        from edgefleet.device_agent.tuf_mode import check_announced

        model = identity or d.model
        if not d.tuf or not model:
            raise UpdateRejectedError("this device verifies updates against TUF metadata and the job carries none "
                                      "(start the coordinator with --tuf-repo DIR)", reason="no_repository")
        mirror = self._write_mirror(d)
        upd = getattr(getattr(self.agent, "config", None), "update", None)
        checked = check_announced(self.agent.root, mirror, model, d.target_version, d.file.size,
                                  d.file.file_id, clock=getattr(upd, "clock", "system"),
                                  clock_skew=getattr(upd, "clock_skew_seconds", 300.0))
        log.info("job %s: %s is the signed target (%d bytes)", d.job_id, checked.target, checked.length)
        if checked.url and d.file.url and d.file.url != checked.url:  # the signed target names its origin
            raise UpdateRejectedError(f"the job's download URL {d.file.url[:200]} is not the one the signed target "
                                      f"{checked.target} names ({checked.url[:200]}); nothing was downloaded",
                                      reason="origin_not_signed")
        return mirror

    def _write_mirror(self, d: P.Desired) -> Path:
        """The job's TUF metadata written where python-tuf reads it (names and sizes checked, content not trusted)."""
        from edgefleet.trust import write_mirror

        mirror = self.dir / "tuf-mirror"
        try:
            write_mirror(mirror, d.tuf or {})
        except TrustError as exc:
            raise UpdateRejectedError(str(exc), reason="metadata_invalid") from None
        except OSError as exc:
            raise UpdateRejectedError(f"cannot write the job's metadata: {exc}",
                                      reason="disk_full" if exc.errno == 28 else "io_error") from None
        return mirror

    def _tuf_order_verifier(self, d: P.Desired) -> Any:
        """TUF mode: the job's metadata, refreshed by python-tuf from the device's trusted state; the order must be
        signed by a threshold of the repository's rollback role (the flat trusted keys do not count)."""
        from edgefleet.device_agent.tuf_mode import order_verifier, refreshed_client

        try:
            if not d.tuf:
                raise UpdateRejectedError("this device verifies rollback orders against TUF metadata and the job "
                                          "carries none (start the coordinator with --tuf-repo DIR)",
                                          reason="no_repository")
            upd = getattr(getattr(self.agent, "config", None), "update", None)
            client = refreshed_client(self.agent.root, self._write_mirror(d),
                                      clock=getattr(upd, "clock", "system"),
                                      clock_skew=getattr(upd, "clock_skew_seconds", 300.0))
        except UpdateRejectedError as exc:
            raise OrderRefused(f"rollback order refused: {exc}", reason=exc.reason) from None
        return order_verifier(client)

    def _check_order(self, d: P.Desired) -> RollbackOrder | None:
        """Verify the signed order of a rollback job against the agent's trusted keys, or in TUF mode against the
        repository's rollback role (see :mod:`..wire.orders`)."""
        keys = list(getattr(self.agent, "trusted_keys", []) or [])
        cfg = getattr(self.agent, "config", None)
        require = bool(getattr(cfg, "require_signature", True)) or bool(keys)
        verify = self._tuf_order_verifier(d) if getattr(self.agent, "tuf_mode", False) else None
        require = require or verify is not None
        ledger = getattr(self.agent, "orders", None)  # the agent's durable order ledger: last seq, signed-time floor
        if ledger is not None:
            ledger.reload()
        last_seq, last_job = int(self._state.get("order_seq", 0)), str(self._state.get("order_job", ""))
        if ledger is not None and ledger.seq > last_seq:
            last_seq, last_job = ledger.seq, ledger.job
        upd = getattr(cfg, "update", None)
        self._order_verified = require  # a verified signature: its issued_at may raise the signed-time floor
        return check_order(d.rollback_order, trusted=keys, require_signature=require, fleet=self.fleet,
                           device_id=self.device_id, job_id=d.job_id, deployment_id=d.deployment_id,
                           to_version=d.rollback_to, last_seq=last_seq, last_job=last_job,
                           clock=getattr(upd, "clock", "auto"), skew=getattr(upd, "clock_skew_seconds", 300.0),
                           floor=ledger.floor if ledger is not None else 0.0, verify=verify)

    # -- telemetry -------------------------------------------------------------------------------------------------
    def drain_telemetry(self) -> int:
        from edgefleet.device_agent.telemetry import drain

        n = drain(self.agent.telemetry.queue, self.sink, self.telemetry_batch)
        self.stats["telemetry_acked"] += n
        return n

    def _telemetry_loop(self) -> None:
        while not self._stop.wait(self.telemetry_interval):
            if not self.transport.connected:
                continue
            try:
                self.drain_telemetry()
                self.refresh_inventory()
            except Exception:
                if not self._stop.is_set():
                    log.exception("telemetry drain failed")


#: a change of free disk space worth reporting: this share of the disk, and at least this many bytes
INVENTORY_DISK_SHARE = 0.01
INVENTORY_DISK_BYTES = 64 << 20


def inventory_changed(old: P.Inventory, new: P.Inventory) -> bool:
    """Whether ``new`` differs materially from the ``old`` one reported: any text field or the disk's size, or the
    free space by :data:`INVENTORY_DISK_SHARE` of the disk and :data:`INVENTORY_DISK_BYTES` (not every byte a
    log writes)."""
    if (old.os, old.os_release, old.arch, old.python, old.total_disk_bytes) != (
            new.os, new.os_release, new.arch, new.python, new.total_disk_bytes):
        return True
    step = max(INVENTORY_DISK_BYTES, int(INVENTORY_DISK_SHARE * max(new.total_disk_bytes, 0)))
    return abs(new.free_disk_bytes - old.free_disk_bytes) >= step


def device_inventory(state_dir: str | os.PathLike[str]) -> P.Inventory:
    """This device's inventory for its birth: OS, release, architecture, Python, and the free and total bytes of the
    file system of ``state_dir`` (0 when it cannot be read). Text is cut to the protocol's bounds."""
    import platform
    import shutil

    try:
        disk = shutil.disk_usage(state_dir)
        free, total = int(disk.free), int(disk.total)
    except OSError:
        free = total = 0

    def text(value: str, key: str) -> str:
        return "".join(c for c in value if " " <= c <= "~")[:P.INVENTORY_TEXT[key]]

    return P.Inventory(os=text(platform.system(), "os"), os_release=text(platform.release(), "os_release"),
                       arch=text(platform.machine(), "arch"), python=text(platform.python_version(), "python"),
                       free_disk_bytes=free, total_disk_bytes=total)


class _Checks:
    """The machine's view of the device (:class:`~.machine.Checks`), answered by the driver and its agent."""

    def __init__(self, sync: DeviceSync) -> None:
        self.sync = sync

    def active_version(self) -> str:
        return self.sync.agent.active_version or ""

    def previous_version(self) -> str | None:
        previous = self.sync.agent.store.state().previous
        return None if previous is None else str(previous.version)

    def delta_base(self) -> str | None:
        base = self.sync.base_archive()
        return base[0] if base else None

    def check_before_download(self, desired: P.Desired) -> Path | None:
        try:
            return self.sync._check_before_download(desired)
        except UpdateRejectedError as exc:
            log.warning("job %s refused before download: %s", desired.job_id, exc)
            raise

    def check_order(self, desired: P.Desired) -> tuple[RollbackOrder | None, bool]:
        try:
            order = self.sync._check_order(desired)
        except OrderRefused as exc:
            log.warning("job %s: %s", desired.job_id, exc)
            raise
        return order, self.sync._order_verified


__all__ = ["DeviceSync", "MqttSink", "Agent", "AgentStore"]
