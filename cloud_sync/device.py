"""The device side of cloud sync: connects an :class:`edgefleet.device_agent.Agent` to the broker.

* Birth (retained status, session counter persisted and raised on every start)
  and a last will that marks the device offline with the same counter.
* Desired jobs (retained, so a device that was away gets them when it returns)
  are run through the agent's own install path; each agent job transition is
  reported with a rising ``version``. Finished job ids are remembered, so a
  duplicate or replayed desired message does nothing. A job that arrives while
  an install is running waits for it to end.
* A rollback runs only on a signed order (:mod:`.orders`) naming this device and
  job, newer than the last one executed; anything else is reported REJECTED with
  the order's reason and the active version stays. In TUF mode the order must be
  signed by a threshold of the repository's rollback role, checked by python-tuf
  against the metadata sent with the job (no metadata: ``no_repository``).
* Bundles arrive in chunks (:mod:`.transfer`), kept on disk so a restart or a
  broker outage resumes; a bsdiff4 delta is used when offered against the
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
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgefleet._version import __version__ as AGENT_VERSION
from edgefleet.atomic import write_atomic
from edgefleet.errors import EdgefleetError, ProtocolError, SyncError, TrustError, UpdateRejectedError

from .transport import Transport, Will
from .wire import protocol as P
from .wire.orders import OrderRefused, RollbackOrder, check_order
from .wire.transfer import (
    TOO_LARGE,
    Begin,
    CheckWhole,
    ChunkArrived,
    ChunkFile,
    Complete,
    Fail,
    Receiver,
    Request,
    Stalled,
    Store,
    Verified,
    apply_delta,
    too_large_message,
)

log = logging.getLogger("edgefleet.cloud_sync.device")

TransportFactory = Callable[[Will], Transport]


@dataclass
class _Active:
    desired: P.Desired
    version: int = 0
    receiver: Receiver | None = None
    file: ChunkFile | None = None
    using_delta: bool = False
    last_chunk: float = 0.0
    installing: bool = False
    mirror: Path | None = None  # TUF mode: the job's metadata, the install is checked against it


def _default_cap(agent: Any) -> int:
    """The agent's store quota (a bundle larger than it could never be installed), else the default."""
    from .wire.transfer import DEFAULT_MAX_BUNDLE_BYTES

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
    """Runs one device's side of the protocol. ``agent`` may be any object with the Agent API
    (``install``, ``rollback``, ``active_version``, ``store``, ``jobs``, ``job_hooks``, ``telemetry``)."""

    def __init__(
        self,
        agent: Any,
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
    ) -> None:
        self.agent = agent
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
        self.transport.on_connect(lambda: self._q.put(("connected", None)))
        self.sink = MqttSink(self)
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._active: _Active | None = None
        self._pending: P.Desired | None = None  # arrived while an install was running
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.malformed = 0
        self.stats = {"chunks_received": 0, "duplicates": 0, "rerequested": 0, "requested": 0, "delta_used": 0,
                      "delta_failed": 0, "bytes_received": 0, "telemetry_acked": 0, "orders_refused": 0}
        self._base_cache: tuple[str, str, Path] | None = None  # (object id, sha256, path)
        agent.job_hooks.append(lambda job: self._q.put(("agent_job", job)))

    # -- persistence ------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            d = json.loads((self.dir / "sync.json").read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        write_atomic(self.dir / "sync.json", json.dumps(self._state).encode())

    def _finished(self) -> dict[str, Any]:
        return self._state.setdefault("finished", {})

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
        state = self.agent.store.state()
        base = None
        try:
            base = self.base_archive()
        except Exception:
            log.exception("cannot build the base archive")
        self._publish(P.Up.STATUS, P.Status(
            self.device_id, True, self.session, time.time(), AGENT_VERSION,
            state.active.version if state.active else "", state.active.id if state.active else "",
            base[0] if base else "", tuple(getattr(self.agent.config, "hardware_tags", ())), self.group), retain=True)

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
        a = self._active
        if a and a.file:
            a.file.sync()
            a.file.close()
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
                    self._birth()
                    self._resume_after_connect()
                elif kind == "desired":
                    self._on_desired(value)
                elif kind == "chunk":
                    self._on_chunk(value)
                elif kind == "agent_job":
                    self._on_agent_job(value)
                self._check_stall()
            except Exception:  # the worker must survive anything
                log.exception("sync worker error on %s", kind)

    def _resume_after_connect(self) -> None:
        a = self._active
        if a is None:
            cur = self._state.get("current")
            if cur:
                try:
                    self._on_desired(P.Desired.from_dict(cur))
                except ProtocolError:
                    self._state.pop("current", None)
            return
        if a.receiver is not None:
            a.last_chunk = time.monotonic()  # give in-flight chunks a moment before asking again

    def _check_stall(self) -> None:
        a = self._active
        if a is None or a.receiver is None or a.installing or not self.transport.connected:
            return
        if time.monotonic() - a.last_chunk >= self.stall_seconds:
            a.last_chunk = time.monotonic()
            self._drive(a, a.receiver.handle(Stalled()))

    def _report(self, a: _Active, status: str, step: str = "", reason: str = "", message: str = "",
                details: dict[str, Any] | None = None) -> None:
        a.version += 1
        self._state.setdefault("versions", {})[a.desired.job_id] = a.version
        self._publish(P.Up.JOB, P.JobUpdate(a.desired.job_id, status, a.version, a.version - 1, step, reason,
                                             message[:2000], self.agent.active_version or "", details or {},
                                             time.time()))
        if status in P.TERMINAL_STATES:
            self._finished()[a.desired.job_id] = {"status": status, "reason": reason, "version": a.version}
            fin = self._finished()
            while len(fin) > 50:
                fin.pop(next(iter(fin)))
            self._state.pop("current", None)
            self._save_state()
            if a.file is not None:
                a.file.discard()
            if self._active is a:
                self._active = None
            self._birth()
            pending, self._pending = self._pending, None
            if pending is not None and self._active is None:
                self._on_desired(pending)

    def _on_desired(self, d: P.Desired) -> None:
        if d.action == P.JobAction.NONE.value:
            a = self._active
            if a is not None and a.desired.job_id == d.job_id and not a.installing:
                self._report(a, "CANCELED", reason="canceled")
            return
        done = self._finished().get(d.job_id)
        if done is not None:  # a replayed or duplicate desired: repeat the outcome, do nothing else
            self._publish(P.Up.JOB, P.JobUpdate(d.job_id, done["status"], int(done["version"]),
                                                 int(done["version"]) - 1, "", done.get("reason", ""), "",
                                                 self.agent.active_version or ""))
            return
        a = self._active
        if a is not None:
            if a.desired.job_id == d.job_id:
                return  # duplicate
            if a.installing:
                self._pending = d  # taken up when the install ends
                return
            if a.file is not None:
                a.file.close()
            self._report(a, "CANCELED", reason="superseded", message=f"superseded by job {d.job_id}")
        a = _Active(d, version=int(self._state.get("versions", {}).get(d.job_id, 0)))
        self._active = a
        self._state["current"] = d.to_dict()
        self._save_state()
        if d.action == P.JobAction.ROLLBACK.value:
            self._rollback(a)
            return
        assert d.file is not None
        if self.agent.active_version == d.target_version and d.target_version:
            self._report(a, "SUCCEEDED", reason="already_active")
            return
        try:
            a.mirror = self._check_before_download(d)
        except UpdateRejectedError as exc:
            log.warning("job %s refused before download: %s", d.job_id, exc)
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
                base = self.base_archive()
            except Exception:
                base = None
        if d.delta is not None and base is not None and base[0] == d.delta_base:
            self._start_transfer(a, d.delta, using_delta=True)
        else:
            self._start_transfer(a, d.file, using_delta=False)

    def _check_before_download(self, d: P.Desired) -> Path | None:
        """Refusals that need no byte of the bundle: a job for another model than the one this device serves
        (``wrong_model``), and in TUF mode a file that is not exactly the signed target of (model, version):
        the job's metadata is refreshed by python-tuf and its length and sha256 must be the target's
        (``target_mismatch``, or the metadata's own named reason). Returns the metadata mirror the install
        is checked against again (TUF mode), else None."""
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

    def _start_transfer(self, a: _Active, info: P.FileInfo, using_delta: bool) -> None:
        a.using_delta = using_delta
        a.file = ChunkFile(self.dir / "transfers", info, max_bytes=self.max_bundle_bytes)
        a.receiver = Receiver(a.desired.job_id, info, window=self.window, max_bytes=self.max_bundle_bytes)
        a.last_chunk = time.monotonic()
        self._drive(a, a.receiver.handle(Begin(frozenset(a.file.have))))

    def _drive(self, a: _Active, actions: list[Any]) -> None:
        pending = list(actions)
        while pending:
            act = pending.pop(0)
            r = a.receiver
            assert r is not None and a.file is not None
            if isinstance(act, Request):
                self._publish(P.Up.CHUNKS, P.ChunkRequest.make(a.desired.job_id, r.info.file_id, r.info.chunks,
                                                                list(act.indices)))
            elif isinstance(act, Store):
                a.file.write(act.index, act.data)
            elif isinstance(act, CheckWhole):
                pending.extend(r.handle(Verified(a.file.verify())))
            elif isinstance(act, Complete):
                self._transfer_done(a)
            elif isinstance(act, Fail):
                a.file.discard()
                if a.using_delta:
                    self.stats["delta_failed"] += 1
                    assert a.desired.file is not None
                    self._start_transfer(a, a.desired.file, using_delta=False)
                else:
                    self._report(a, "FAILED", reason=act.reason, message=act.message)
                return

    def _on_chunk(self, chunk: P.Chunk) -> None:
        a = self._active
        if a is None or a.receiver is None or a.installing:
            return
        self.stats["chunks_received"] += 1
        self.stats["bytes_received"] += len(chunk.data)
        before = a.receiver.duplicates
        a.last_chunk = time.monotonic()
        self._drive(a, a.receiver.handle(ChunkArrived(chunk)))
        if a.receiver is not None:
            self.stats["duplicates"] += a.receiver.duplicates - before

    def _transfer_done(self, a: _Active) -> None:
        r, f = a.receiver, a.file
        assert r is not None and f is not None and a.desired.file is not None
        self.stats["requested"] += r.requested
        self.stats["rerequested"] += r.rerequested
        if a.using_delta:
            base = self.base_archive()
            try:
                if base is None:
                    raise SyncError("the delta base is gone")
                data = apply_delta(base[1].read_bytes(), f.read(), a.desired.file)
            except SyncError as exc:
                log.warning("delta failed (%s); fetching the full bundle", exc)
                self.stats["delta_failed"] += 1
                f.discard()
                self._start_transfer(a, a.desired.file, using_delta=False)
                return
            self.stats["delta_used"] += 1
            f.discard()
            path = self.dir / "incoming.efb"
            path.write_bytes(data)
        else:
            path = self.dir / "incoming.efb"
            f.close()
            f.data_path.replace(path)
            f.discard()
        a.file = None
        a.receiver = None
        a.installing = True
        self._report(a, "IN_PROGRESS", step="installing")
        try:  # every transition comes back through the agent's job hook
            if a.mirror is not None:  # TUF mode: checked again against the signed target, with delegated keys
                self.agent.install(path, job_id=a.desired.job_id, repo=a.mirror)
            else:
                self.agent.install(path, job_id=a.desired.job_id)
        except EdgefleetError as exc:
            self._report(a, "FAILED", reason="install_error", message=str(exc))

    def _on_agent_job(self, job: Any) -> None:
        a = self._active
        if a is None or job.job_id != a.desired.job_id:
            return
        status = job.status.value
        if status in P.TERMINAL_STATES:
            self._report(a, status, job.step.value, job.reason, job.message)
        else:
            self._report(a, "IN_PROGRESS", job.step.value, job.reason, job.message)

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
            client = refreshed_client(self.agent.root, self._write_mirror(d), clock=getattr(upd, "clock", "system"),
                                      clock_skew=getattr(upd, "clock_skew_seconds", 300.0))
        except UpdateRejectedError as exc:
            raise OrderRefused(f"rollback order refused: {exc}", reason=exc.reason) from None
        return order_verifier(client)

    def _check_order(self, d: P.Desired) -> RollbackOrder | None:
        """Verify the signed order of a rollback job against the agent's trusted keys, or in TUF mode against the
        repository's rollback role (see :mod:`.orders`)."""
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

    def _rollback(self, a: _Active) -> None:
        d = a.desired
        try:
            order = self._check_order(d)
        except OrderRefused as exc:
            self.stats["orders_refused"] += 1
            log.warning("job %s: %s", d.job_id, exc)
            self._report(a, "REJECTED", reason=exc.reason, message=str(exc))
            return
        if order is not None:  # executed at most once: remember it (durably, fsynced) before acting
            self._state["order_seq"], self._state["order_job"] = order.seq, order.job_id
            ledger = getattr(self.agent, "orders", None)
            try:
                self._save_state()
                if ledger is not None:
                    ledger.record(f"fleet:{order.job_id}:{order.seq}", order.issued_at, signed=self._order_verified,
                                  seq=order.seq, job=order.job_id)
            except OSError as exc:  # not remembered, so not executed (a full disk): the active version stays
                self._report(a, "FAILED", reason="disk_full" if exc.errno == 28 else "io_error",
                             message=f"cannot record the rollback order: {exc}")
                return
        active = self.agent.active_version
        if d.rollback_to and active == d.rollback_to:
            self._report(a, "SUCCEEDED", reason="already_there")
            return
        if order is not None and order.from_version and active != order.from_version:
            self._report(a, "CANCELED", reason="not_on_version",
                         message=f"the order undoes version {order.from_version}; this device runs {active}")
            return
        previous = self.agent.store.state().previous
        if d.rollback_to and (previous is None or previous.version != d.rollback_to):
            self._report(a, "FAILED", reason="rollback_target_missing",
                         message=f"version {d.rollback_to} is not the previous version in the store")
            return
        try:
            self.agent.rollback()
        except EdgefleetError as exc:
            self._report(a, "FAILED", reason="rollback_failed", message=str(exc))
            return
        self._report(a, "SUCCEEDED", reason="rolled_back")

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
            except Exception:
                if not self._stop.is_set():
                    log.exception("telemetry drain failed")


__all__ = ["DeviceSync", "MqttSink"]
