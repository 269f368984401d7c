"""The coordinator: consumes the fleet's ``up`` topics, drives rollouts, serves chunks.

Inbound messages are parsed on the transport's thread and handled on one worker
thread (with the periodic rollout tick), so registry writes of one coordinator
are serial. Several coordinators share the load through an MQTT 5 shared
subscription (``$share/<group>/...``): each message reaches one of them, and
the registry's per-device telemetry high-water mark and versioned job updates
make a redelivered message harmless.

Rollouts are driven by ticks. Coordinators that share one registry take a
short per-deployment lease (a compare-and-set UPDATE) before they tick a
deployment or change its state, so one stage is dispatched and recorded once;
job ids derived from (deployment, device, action) and compare-and-set stage and
state changes make a lease that ran out mid-tick harmless too.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edgefleet.errors import ActionRefusedError, ConfigError, EdgefleetError, ProtocolError, SyncError
from edgefleet.jobstate import JobState

from ..transport import Transport
from ..wire import protocol as P
from ..wire.orders import DEFAULT_ORDER_TTL, RollbackOrder
from ..wire.transfer import make_delta, serve_request
from .acl import BrokerAccess
from .registry import NewJob, Registry, job_key
from .rollout import (
    BAD,
    DEFAULT_JOB_TIMEOUT,
    MAX_JOB_TIMEOUT,
    RolloutPlan,
    View,
    action_refusal,
    check_tags,
    evaluate,
    timed_out,
)
from .rows import Delta, Deployment, DeploymentState, Device, DeviceBrief, Job

if TYPE_CHECKING:
    from ..origin import Origin

log = logging.getLogger(__name__)
DISPATCH_BATCH = 5000  # install jobs recorded per registry transaction when a stage is dispatched
FILE_CACHE = 8  # files (bundles, deltas) kept in memory with their encoded chunk frames: the latest ones served
DEFAULT_TELEMETRY_RATE = 1000.0  # records per second per device: far above what a device's agent produces (a few
# records per telemetry interval), low enough that one device cannot take the ingest from the rest of the fleet


def bundle_identity(archive: bytes, trusted_keys: Sequence[Any] | None = None,
                    tuf_repo: str | os.PathLike | None = None) -> tuple[str, str]:
    """(name, version) from an ``.efb`` archive's manifest, verified for deployment.

    With ``trusted_keys`` the bundle must be signed by one of them; with ``tuf_repo`` it must be a signed
    target of that repository (length, sha256) signed by a key delegated to its model (python-tuf checks the
    metadata: thresholds, expiry, versions, from the repository's own first root). Either is enough. With
    neither (``None``, ``None``: library use) the archive is only checked to be a well-formed bundle. Refusals
    are named errors: ``UnsignedBundleError``, ``SignatureError``, a ``TrustError`` subclass, ``BundleError``.
    """
    from edgefleet.bundle import open_bundle
    from edgefleet.errors import SignatureError

    with tempfile.TemporaryDirectory(prefix="edgefleet-deploy-") as tmp:
        p = Path(tmp) / "bundle.efb"
        p.write_bytes(archive)
        if tuf_repo is not None:
            from edgefleet.trust import verify_bundle

            try:
                t = verify_bundle(p, tuf_repo)
                return t.model, t.version
            except SignatureError:  # TrustError included
                if not trusted_keys:
                    raise
        if trusted_keys is not None and not trusted_keys:
            raise SignatureError("this coordinator trusts no bundle key: start it with --trust KEY.pub (or "
                                 "--tuf-repo DIR)")
        bundle, handle = open_bundle(p, trusted_keys=list(trusted_keys or ()),
                                     require_signature=trusted_keys is not None)
        try:
            return bundle.manifest.name, bundle.manifest.version
        finally:
            if handle is not None:
                handle.cleanup()


class Coordinator:
    def __init__(
        self,
        registry: Registry,
        transport: Transport,
        fleet: str,
        *,
        share_group: str | None = "edgefleet",
        chunk_size: int = P.DEFAULT_CHUNK_SIZE,
        tick_seconds: float = 0.5,
        allow_list: set[str] | None = None,
        groups: dict[str, str] | None = None,
        deltas: bool = True,
        resend_guard: float = 30.0,
        max_transfers: int = 64,
        transfer_idle: float = 30.0,
        signing_key: Any = None,
        order_ttl: float = DEFAULT_ORDER_TTL,
        lease_seconds: float = 15.0,
        freeze_gc: bool = False,
        trusted_keys: Sequence[Any] | None = None,
        tuf_repo: str | os.PathLike | None = None,
        telemetry_rate: float | None = DEFAULT_TELEMETRY_RATE,
        telemetry_burst: float | None = None,
        origin: Origin | None = None,
        file_cache: int = FILE_CACHE,
    ) -> None:
        self.registry = registry
        self.transport = transport
        self.fleet = P.check_id(fleet, "fleet")
        self.share_group = share_group
        self.chunk_size = chunk_size
        self.tick_seconds = tick_seconds
        self.allow_list = allow_list
        self.deltas = deltas
        self.counters: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # chunks served per device
        self.rejected: Counter[str] = Counter()  # telemetry records refused per device (out of bounds, or refused
        # by the database): counted against the device that sent them, never against the fleet's other batches
        self.refused: Counter[str] = Counter()  # messages of devices outside the allow-list, per device
        # At most ``telemetry_rate`` records per second per device are ingested (a token bucket of
        # ``telemetry_burst`` records; None: no limit): a batch beyond it is dropped unacknowledged - the device
        # keeps it and sends it again later, at its own pace - and counted per device (``rate_limited``)
        self.telemetry_limit = TokenBuckets(telemetry_rate, telemetry_burst) if telemetry_rate else None
        self.rate_limited: Counter[str] = Counter()  # telemetry batches dropped per device by the rate limit
        # Groups are assigned by the operator (``groups``, the registry row set by PATCH /v1/devices/{id}), never
        # taken from a device's status message: a group a device announces that is not its assigned one is
        # recorded here (device -> the group it claimed; bounded, device ids are the sender's choice) and counted
        # (``group_claims``), never applied.
        self.claims: dict[str, str] = {}
        # devices the operator decommissioned (housekeeping.py): refused like devices outside the allow-list; read
        # from the registry again every few seconds (another coordinator may decommission one)
        self.gone: set[str] = {d.device_id for d in registry.decommissioned(self.fleet)}
        self._gone_read = time.monotonic()
        self.broker_access: BrokerAccess | None = None  # cloud serve --broker-config: where to revoke them
        # The files served last (at most ``file_cache``, least recently served dropped first; the registry holds
        # them all) and their encoded chunk frames: a long-running coordinator must not keep every bundle it
        # ever deployed (measured by benchmarks/soak.py: about a megabyte more resident memory per rollout).
        self.file_cache = max(1, file_cache)
        self._files: OrderedDict[str, tuple[P.FileInfo, bytes]] = OrderedDict()
        # Where devices fetch bundles and deltas over HTTP(S) (``cloud serve --origin-dir/--origin-url``; origin.py):
        # each file is published there once and install jobs carry its URL; devices fall back to MQTT chunks when
        # it fails. None: MQTT chunks only.
        self.origin = origin
        self._frames: dict[str, dict[int, bytes]] = {}  # a cached file's encoded chunk frames: hashed once, not per device
        # At most ``max_transfers`` (device, file) transfers are served at once (0 = no limit); the others wait
        # in arrival order. 1,000 devices each asking for a 1 MiB window at once would otherwise queue a
        # gigabyte behind the broker: every chunk arrives late, stall timers fire and chunks are sent twice.
        self.max_transfers = max_transfers
        self.transfer_idle = transfer_idle  # seconds without a request before a transfer gives up its slot
        self._serving: dict[tuple[str, str], float] = {}
        self._job_devices: dict[str, str] = {}  # job id -> device, for jobs that have asked for chunks
        self._deferred: dict[tuple[str, str], P.ChunkRequest] = {}  # insertion order = arrival order
        # (device, message, the transport's ack or None): a message is acknowledged to the broker only once handled
        self._q: queue.Queue[tuple[str, Any, Callable[[], None] | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # rollout changes from the API and the tick
        self._groups: dict[str, str] = {}
        self._recent: dict[str, tuple[str, dict[int, float]]] = {}  # device -> (the file it is sent, chunk -> when)
        # A chunk the broker has taken for a device's persistent session (QoS 1) reaches the device unless a
        # connection in between was lost: re-requests of it are the device's stall timer running out while
        # the chunk waits in a queue (under load), and answering them only adds to that queue. So a chunk goes
        # out again only if the device or this coordinator has reconnected since it was sent (the session or
        # the broker's store may be gone), or after ``resend_guard`` seconds.
        self.resend_guard = resend_guard
        self._sent_epoch = 0.0  # this coordinator's latest (re)connection
        self._births: dict[str, float] = {}  # each device's latest birth
        # this coordinator's own broker connection (/healthz, /metrics and the log report it): while it is down,
        # device states in the registry are stale (no birth or will reaches it)
        self.broker = BrokerLink()
        transport.on_connect(self._reconnected)
        on_disconnect = getattr(transport, "on_disconnect", None)  # an optional member of a Transport
        if on_disconnect is not None:
            on_disconnect(self._disconnected)
        # telemetry ingest: the wall-clock time of the latest ingest and how old its newest record was then
        self.last_ingest = 0.0
        self.ingest_lag: float | None = None
        self.on_ingest: Callable[[int], None] | None = None
        # edgefleet.keys.PrivateKey, or several (a threshold of the TUF rollback role's keys): signs rollback orders
        self.signing_key = signing_key
        self.order_ttl = order_ttl
        self.lease_seconds = lease_seconds
        self.freeze_gc = freeze_gc
        self.node = f"{socket.gethostname()[:32]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # this coordinator
        if signing_key is None:
            log.warning("no signing key: rollback orders go out unsigned and devices that verify will refuse them")
        self.on_drift: Callable[[str, str, dict[str, Any]], Any] | None = None  # (device, group, record data)
        # a stop asked for through the API (run id): True when this coordinator supervises the run and stops it
        self.on_fed_stop: Callable[[str], bool] | None = None
        # Which bundles may be deployed (see ``check_bundle``): signed by one of ``trusted_keys``
        # (edgefleet.keys.PublicKey) and/or a signed target of the TUF repository ``tuf_repo``, signed by a key
        # delegated to its model. ``cloud serve`` always passes its --trust list (empty: every deployment refused
        # unless --tuf-repo is given); ``None`` (library and test use) checks only that the archive is well formed.
        self.trusted_keys = None if trusted_keys is None else tuple(trusted_keys)
        self.tuf_repo = Path(tuf_repo) if tuf_repo else None
        self._tuf_cache: dict[str, tuple[float, dict[str, str]]] = {}
        if self.tuf_repo is not None and not (self.tuf_repo / "metadata").is_dir():
            raise ConfigError(f"{self.tuf_repo} is not an edgefleet TUF repository (no metadata/)")
        if self.trusted_keys is None and self.tuf_repo is None:
            log.warning("no trusted bundle keys and no TUF repository: deployments are not verified here")
        if self.tuf_repo is not None and signing_key is not None:
            self._check_rollback_keys(signing_key)
        # At least once: with a transport that can acknowledge a message after the fact (MqttTransport), the broker
        # gets its PUBACK only once the message is handled, so what this coordinator had received but not yet
        # handled when it died is delivered again when its session resumes (measured by benchmarks/multi_coordinator:
        # a SIGKILL lost the SUCCEEDED reports in its queue, and their jobs stayed IN_PROGRESS for good).
        on_message_ack = getattr(transport, "on_message_ack", None)  # an optional member of a Transport
        if on_message_ack is not None:
            on_message_ack(self._on_message_ack)
        else:
            transport.on_message(self._on_message)
        if groups:
            self.provision(groups)

    def provision(self, groups: dict[str, str]) -> None:
        """The operator's assignment (device -> group): written to the registry now, before the devices connect
        (a device already known is moved to the group given here)."""
        for device, group in groups.items():
            try:
                P.check_id(device, "device id")
                P.check_id(group, "group")
            except ProtocolError as exc:
                raise ConfigError(f"cannot assign {device!r} to group {group!r}: {exc}") from None
            if device in self.gone:  # decommissioned: only the operator's own assignment (the API) re-admits it
                log.warning("device %s is decommissioned: not provisioned (assign it a group to re-admit it)", device)
                continue
            _, created = self.registry.upsert_device(self.fleet, device, group_name=group)
            if not created:
                self.registry.set_device(self.fleet, device, group_name=group)
            self._groups.pop(device, None)

    def _reconnected(self) -> None:
        self._sent_epoch = time.monotonic()
        url = _broker_url(self.transport)
        self.broker.up(time.time())
        log.info("coordinator %s connected to the broker%s", self.node, f" at {url}" if url else "",
                 extra={"event": "broker_connected", "fleet": self.fleet, "broker": url,
                        "connects": self.broker.connects})

    def _disconnected(self, reason: str) -> None:
        url = _broker_url(self.transport)
        self.broker.down(time.time())
        if reason == "closed" or self._stop.is_set():
            log.info("coordinator %s disconnected from the broker (%s)", self.node, reason,
                     extra={"event": "broker_disconnected", "fleet": self.fleet, "broker": url, "reason": reason})
            return
        log.error("coordinator %s lost its broker connection%s (%s): device states are stale until it reconnects",
                  self.node, f" to {url}" if url else "", reason,
                  extra={"event": "broker_disconnected", "fleet": self.fleet, "broker": url, "reason": reason})

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.freeze_gc:
            # A coordinator process (``cloud serve``) holds a large, long-lived heap (SQLAlchemy, the registry,
            # imported modules) and telemetry parsing allocates containers fast, so full collections kept walking
            # that heap: measured, a third more CPU per parsed batch than in a small process. Objects alive now
            # are moved out of the collector's sight (process-wide, so a service's choice, not a library default).
            gc.freeze()
        self.transport.subscribe(P.up_filter(self.fleet, self.share_group), qos=1)
        self._thread = threading.Thread(target=self._work, name="edgefleet-coordinator", daemon=True)
        self._thread.start()
        url = _broker_url(self.transport)
        log.info("coordinator %s of fleet %s starting%s", self.node, self.fleet, f"; broker {url}" if url else "",
                 extra={"event": "coordinator_started", "fleet": self.fleet, "broker": url})
        self.transport.connect()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(("stop", None, None))
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.transport.close()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._on_message_ack(topic, payload, None)

    def _on_message_ack(self, topic: str, payload: bytes, ack: Callable[[], None] | None) -> None:
        try:
            info = P.parse_topic(topic)
            if info.fleet != self.fleet or info.direction != "up":
                raise ProtocolError(f"unexpected topic {topic}")
            kind = info.kind
            if kind == P.Up.TELEMETRY.value:
                msg: Any = P.TelemetryBatch.parse(payload)
            elif kind == P.Up.STATUS.value:
                if not payload:
                    if ack is not None:
                        ack()
                    return  # a cleared retained status
                msg = P.Status.parse(payload)
            elif kind == P.Up.JOB.value:
                msg = P.JobUpdate.parse(payload)
            elif kind == P.Up.CHUNKS.value:
                msg = P.ChunkRequest.parse(payload)
            else:
                msg = P.Reported.parse(payload)
            if getattr(msg, "device_id", info.device) != info.device:
                raise ProtocolError(f"message names device {msg.device_id!r} on the topic of {info.device!r}")
        except ProtocolError as exc:
            self.counters["malformed"] += 1
            log.warning("dropped a malformed message on %s: %s", topic, exc,
                        extra={"event": "malformed_message", "topic": topic})
            if ack is not None:
                ack()
            return
        self._q.put((info.device, msg, ack))

    def _work(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                device, msg, ack = self._q.get(timeout=timeout)
            except queue.Empty:
                device, msg, ack = "", None, None
            if device == "stop":
                return
            taken = [ack] if ack is not None else []  # acks of the messages handled in this round
            try:
                if isinstance(msg, P.TelemetryBatch):
                    self._telemetry_many([(device, msg)], acks=taken)
                elif msg is not None:
                    self.handle(device, msg)
            except Exception:
                self.counters["handler_errors"] += 1
                log.exception("coordinator failed on a message from %s", device)
            finally:
                for a in taken:  # handled (or failed for good): the broker may forget them now
                    a()
            if time.monotonic() >= next_tick:
                try:
                    self.tick()
                except Exception:
                    log.exception("rollout tick failed")
                next_tick = time.monotonic() + self.tick_seconds

    # -- message handling ---------------------------------------------------------------------------
    def handle(self, device: str, msg: Any) -> None:
        if (self.allow_list is not None and device not in self.allow_list) or device in self.gone:
            self._refuse(device)
            return
        if isinstance(msg, P.TelemetryBatch):
            self._telemetry(device, msg)
        elif isinstance(msg, P.ChunkRequest):
            self._chunks(device, msg)
        elif isinstance(msg, P.JobUpdate):
            self._job_update(device, msg)
        elif isinstance(msg, P.Status):
            self._status(device, msg)
        elif isinstance(msg, P.Reported):
            self.registry.set_device(self.fleet, device, active_version=msg.active_version, last_seen=time.time())

    def _refuse(self, device: str) -> None:
        """A message of a device outside the allow-list: counted (per device too), never acted on."""
        if not self.refused[device]:
            log.warning("refused messages of %s: not in the allow-list", device)
        if device in self.refused or len(self.refused) < 10_000:  # bounded: device ids are the sender's choice
            self.refused[device] += 1
        self.counters["refused_devices"] += 1

    def _status(self, device: str, s: P.Status) -> None:
        row = self.registry.device(self.fleet, device)
        if row is not None and s.session < row.session:
            self.counters["stale_status"] += 1  # an old will arriving after a newer birth
            return
        # a (re)connection, not an inventory update of a session this coordinator saw born (a retained update read
        # after a coordinator restart counts as the birth: that device's queued job is redelivered as before)
        birth = s.online and (not s.update or device not in self._births or row is None or not row.online
                              or row.session != s.session)
        if birth and (row is None or not row.online or row.session != s.session):
            log.info("device %s connected (session %d, running %s, agent %s)", device, s.session,
                     s.active_version or "nothing", s.agent_version or "?",
                     extra={"event": "device_connected", "device": device, "session": s.session,
                            "version": s.active_version})
        elif birth:
            log.info("device %s reconnected (session %d)", device, s.session,
                     extra={"event": "device_reconnected", "device": device, "session": s.session})
        elif s.online:
            log.debug("device %s reported a new inventory", device, extra={"event": "inventory", "device": device})
        elif row is None or row.online:
            log.info("device %s disconnected (session %d)", device, s.session,
                     extra={"event": "device_disconnected", "device": device, "session": s.session})
        fields: dict[str, Any] = {"online": s.online, "session": s.session, "last_seen": time.time()}
        if s.online:
            fields.update(active_version=s.active_version, archive_sha256=s.archive_sha256,
                          agent_version=s.agent_version, claimed_tags=_tags(s.hardware_tags))
            if s.inventory is not None:  # bounded by the protocol; when it was reported, by this clock
                fields["inventory"] = json.dumps({**dataclasses.asdict(s.inventory), "reported": fields["last_seen"]})
            self._claim_tags(device, s.hardware_tags, row)
        self._claim(device, s.group, row.group if row is not None else "default")
        if row is None:  # a device the operator did not provision: registered in "default", counted
            self.registry.upsert_device(self.fleet, device, **fields)
            self.counters["registered"] += 1
            self._unassigned(device)
        else:
            self.registry.set_device(self.fleet, device, **fields)
            if birth:  # (an inventory update of an online session redelivers nothing)
                self._births[device] = time.monotonic()
                self._redeliver(device)

    def _claim(self, device: str, claimed: str, assigned: str) -> None:
        """A group a device announced (``Status.group``): recorded and counted when it is not the assigned one."""
        if not claimed or claimed == assigned:
            return
        if self.claims.get(device) != claimed:
            log.warning("device %s claims group %r; its assigned group is %r (not applied: groups are assigned "
                        "by the operator)", device, claimed, assigned)
        if device in self.claims or len(self.claims) < 10_000:
            self.claims[device] = claimed
        self.counters["group_claims"] += 1

    def _claim_tags(self, device: str, claimed: tuple[str, ...], row: Device | None) -> None:
        """The hardware tags a device announced (``Status.hardware_tags``): kept as ``claimed_tags`` in its record,
        never as its ``tags`` (the operator's, which deployments select by); counted when they claim more."""
        assigned = set(row.tags) if row is not None else set()
        extra = sorted(set(claimed) - assigned)
        if not extra:
            return
        if row is None or sorted(set(row.claimed_tags) - assigned) != extra:
            log.warning("device %s claims tags %s it was not assigned (not applied: tags are assigned by the "
                        "operator with PATCH /v1/devices/%s or fleet tag)", device, extra, device)
        self.counters["tag_claims"] += 1

    def _unassigned(self, device: str) -> None:
        log.warning("device %s is not provisioned: registered in group 'default' (assign it with PATCH "
                    "/v1/devices/%s or cloud serve --allow)", device, device)
        self.counters["unassigned_devices"] += 1

    def _redeliver(self, device: str) -> None:
        """A device (re)connected: its queued jobs reach it now (their queued clock restarts), and the desired
        state of its newest job is published again if that job has not started. The retained copy may be gone
        (a broker that lost its store, a coordinator that died between recording a job and publishing it);
        a device takes a repeated job as the same job."""
        self.registry.mark_delivered(self.fleet, device)
        job = self.registry.latest_job(self.fleet, device)
        if job is not None and job.status is JobState.QUEUED and job.desired:
            self._publish_desired(device, P.Desired.parse(job.desired.encode()))  # with fresh TUF metadata
            self.counters["desired_redelivered"] += 1

    def _group(self, device: str) -> str:
        g = self._groups.get(device)
        if g is None:
            row = self.registry.device(self.fleet, device)
            g = row.group if row else "default"
            if row is None:
                self.registry.upsert_device(self.fleet, device)
                self._unassigned(device)
            self._groups[device] = g
        return g

    def _telemetry(self, device: str, b: P.TelemetryBatch) -> None:
        self._telemetry_many([(device, b)])

    def _telemetry_many(self, first: list[tuple[str, P.TelemetryBatch]], limit: int = 64,
                        linger: float = 0.02, acks: list[Callable[[], None]] | None = None) -> None:
        """Ingest this batch and the telemetry batches queued behind it in one transaction, then ack each
        (``acks`` receives the transport acks of the messages taken from the queue, for the caller to send).

        When the queue runs dry it sleeps ``linger`` seconds once and drains it again: a stream that
        arrives as fast as it is handled would otherwise cost a commit and a thread wake-up per batch
        (measured: a third of the ingest rate). Other messages wait at most that long.
        """
        batches = list(first)
        others: list[tuple[str, Any]] = []
        lingered = linger <= 0
        while len(batches) < limit:
            try:
                device, msg, taken = self._q.get_nowait()
                item = (device, msg)
                if taken is not None:
                    acks.append(taken) if acks is not None else taken()
            except queue.Empty:
                if lingered:
                    break
                lingered = True
                time.sleep(linger)
                continue
            if isinstance(item[1], P.TelemetryBatch):
                batches.append(item)
            else:
                others.append(item)
                break  # keep the order of everything else
        if self.allow_list is not None or self.gone:
            for d, _ in batches:
                if (self.allow_list is not None and d not in self.allow_list) or d in self.gone:
                    self._refuse(d)
            batches = [(d, b) for d, b in batches
                       if (self.allow_list is None or d in self.allow_list) and d not in self.gone]
        if self.telemetry_limit is not None:
            now = time.monotonic()
            admitted = [self.telemetry_limit.take(d, len(b.records), now) for d, b in batches]
            for (d, _), ok in zip(batches, admitted):
                if not ok:
                    self._rate_limit(d)
            batches = [item for item, ok in zip(batches, admitted) if ok]
        if not batches:
            for device, msg in others:
                self.handle(device, msg)
            return
        work = [(d, self._group(d), b.records) for d, b in batches]
        rejected: list[int] = []
        news = self.registry.ingest_many(self.fleet, work, rejected=rejected)
        self._ingest_quality(work, news)
        newest = max((r.ts for (_, b), new in zip(batches, news) if new for r in b.records), default=None)
        if newest is not None:
            self.last_ingest = time.time()
            self.ingest_lag = max(0.0, self.last_ingest - newest)
        for (device, b), new, bad in zip(batches, news, rejected):
            self.counters["telemetry_records"] += new
            self.counters["telemetry_duplicates"] += len(b.records) - new - bad
            if bad:  # acknowledged all the same: a batch the device re-sent forever would block its queue
                before = self.rejected[device]
                self.rejected[device] += bad
                self.counters["telemetry_rejected"] += bad
                if len(str(before)) != len(str(before + bad)):  # logged at 1, 10, 100...: a flood is not a log flood
                    log.warning("rejected telemetry records of %s (out of bounds): %d so far", device, before + bad,
                                extra={"event": "telemetry_rejected", "device": device, "rejected": before + bad})
            self.counters["telemetry_batches"] += 1
            if self.on_ingest is not None:
                self.on_ingest(new)
            if new and self.on_drift is not None:
                for r in b.records:
                    if r.kind == "drift":
                        try:
                            self.on_drift(device, self._group(device), dict(r.data))
                        except Exception:
                            log.exception("drift hook failed for %s", device)
            ack = P.TelemetryAck(b.batch_id, tuple(r.seq for r in b.records))
            self.transport.publish(P.down_topic(self.fleet, device, P.Down.ACK), ack.to_bytes(), qos=1)
        for device, msg in others:
            self.handle(device, msg)

    def _ingest_quality(self, work: Sequence[tuple[str, str, Sequence[P.TelemetryRecord]]], news: Sequence[int]
                        ) -> None:
        """Keep the devices' ``quality`` records (per device and version, the newest wins: a batch sent again
        changes nothing); one out of bounds is counted (``quality_rejected``) and dropped."""
        found: list[tuple[str, str, float, P.QualityRecord]] = []
        for (device, group, records), new in zip(work, news):
            if not new:
                continue
            for r in records:
                if r.kind != "quality":
                    continue
                try:
                    found.append((device, group, r.ts, P.QualityRecord.from_dict(r.data)))
                except ProtocolError:
                    self.counters["quality_rejected"] += 1
        if found:
            try:
                self.counters["quality_records"] += self.registry.put_quality(self.fleet, found)
            except Exception:
                log.exception("storing the devices' quality records failed")

    def _rate_limit(self, device: str) -> None:
        """A telemetry batch of ``device`` beyond its rate: dropped without an ack (the device sends it again later)
        and counted, per device too (bounded like ``refused``)."""
        before = self.rate_limited[device]
        if len(str(before)) != len(str(before + 1)):  # logged at 1, 10, 100...: a flood is not a log flood
            log.warning("telemetry of %s beyond %g records/s: %d batch(es) dropped unacknowledged so far", device,
                        self.telemetry_limit.rate if self.telemetry_limit else 0, before + 1,
                        extra={"event": "telemetry_rate_limited", "device": device, "batches": before + 1})
        if device in self.rate_limited or len(self.rate_limited) < 10_000:
            self.rate_limited[device] += 1
        self.counters["telemetry_rate_limited"] += 1

    def _file(self, file_id: str) -> tuple[P.FileInfo, bytes] | None:
        f = self._files.get(file_id)
        if f is not None:
            self._files.move_to_end(file_id)
            return f
        art = self.registry.artifact(file_id)
        data = art.data if art else None
        if data is None:
            d = self.registry.delta_by_file(file_id)
            data = d.data if d and d.data else None
        if data is None:
            return None
        f = (P.FileInfo(file_id, len(data), self.chunk_size), bytes(data))
        self._files[file_id] = f
        while len(self._files) > self.file_cache:
            self._frames.pop(self._files.popitem(last=False)[0], None)
        return f

    def _chunks(self, device: str, req: P.ChunkRequest) -> None:
        key = (device, req.file_id)
        waiting = self._deferred.get(key)
        if waiting is not None and waiting.job_id == req.job_id:  # a stall re-request of a waiting transfer
            self._deferred[key] = req
            self.counters["chunk_requests_deferred"] += 1
            return
        if self._job_devices.get(req.job_id) != device:
            job = self.registry.job(req.job_id)
            if job is None or job.device_id != device:
                self.counters["refused_chunk_requests"] += 1
                return
            if len(self._job_devices) >= 100_000:
                self._job_devices.clear()
            self._job_devices[req.job_id] = device  # a job never changes device: no query per request
        answer = self._requested(req)
        if answer is None:
            return
        if not self._admit(device, req):
            self.counters["chunk_requests_deferred"] += 1
            return
        self._serve(device, req, *answer)
        self._next_transfers()

    def _requested(self, req: P.ChunkRequest) -> tuple[P.FileInfo, list[P.Chunk]] | None:
        """The file and the chunks a request asks for; None (and counted) if it cannot be answered."""
        f = self._file(req.file_id)
        if f is None:
            self.counters["unknown_files"] += 1
            return None
        try:
            return f[0], serve_request(req, f[0], f[1])
        except ProtocolError:
            self.counters["malformed"] += 1
            return None

    def _admit(self, device: str, req: P.ChunkRequest) -> bool:
        """True if this transfer may be served now; otherwise its latest request waits its turn."""
        if self.max_transfers <= 0:
            return True
        key, now = (device, req.file_id), time.monotonic()
        if key in self._serving:
            self._serving[key] = now
            return True
        for k, t in list(self._serving.items()):
            if now - t > self.transfer_idle:  # the device went away mid-transfer: free its slot
                del self._serving[k]
        if len(self._serving) < self.max_transfers and not self._deferred:
            self._serving[key] = now
            return True
        self._deferred[key] = req  # a repeated request (stall) replaces the waiting one and keeps its place
        return False

    def _next_transfers(self) -> None:
        while self._deferred and len(self._serving) < self.max_transfers:
            key = next(iter(self._deferred))
            req = self._deferred.pop(key)
            answer = self._requested(req)
            if answer is not None:
                self._serving[key] = time.monotonic()
                self._serve(key[0], req, *answer)

    def _serve(self, device: str, req: P.ChunkRequest, info: P.FileInfo, chunks: list[P.Chunk]) -> None:
        topic = P.down_topic(self.fleet, device, P.Down.CHUNK)
        now = time.monotonic()
        recent = self._recent.get(device)
        if recent is None or recent[0] != req.file_id:  # a device is sent one file at a time: forget the last one
            recent = self._recent[device] = (req.file_id, {})
        sent = recent[1]
        frames = self._frames.setdefault(req.file_id, {}) if req.file_id in self._files else {}
        n = 0
        since = max(self._sent_epoch, self._births.get(device, 0.0))
        for c in chunks:
            prev = sent.get(c.index)
            if prev is not None and prev >= since and now - prev < self.resend_guard:
                self.counters["duplicate_requests_skipped"] += 1
                continue  # already on its way (see resend_guard)
            sent[c.index] = now
            frame = frames.get(c.index)
            if frame is None:
                frame = frames[c.index] = c.to_bytes()
            self.transport.publish(topic, frame, qos=1)
            n += 1
        self.served[device] += n
        self.counters["chunks_served"] += n
        if len(sent) >= info.chunks:  # every chunk has gone out once: the slot goes to the next transfer
            self._serving.pop((device, req.file_id), None)

    def _job_update(self, device: str, u: P.JobUpdate) -> None:
        job = self.registry.job(u.job_id)
        if job is None or job.device_id != device:
            self.counters["unknown_jobs"] += 1
            return
        if job.status is JobState.CANCELED and u.status not in P.TERMINAL_STATES:
            return
        if job.status is JobState.TIMED_OUT:
            # Final, as in AWS IoT Jobs: the late update does not change the job (nor the health gate's
            # count), but what the device now runs is recorded, and a late success of a halted rollout
            # is ordered back like any other.
            self.counters["late_job_updates"] += 1
            log.info("job %s of %s timed out; its late %s is ignored", u.job_id, device, u.status)
        else:
            ok = self.registry.update_job(u.job_id, u.version, status=u.status, step=u.step, reason=u.reason,
                                          message=u.message)
            if not ok:
                self.counters["stale_job_updates"] += 1
                return
            if u.reason.startswith("origin_"):  # the device could not use the origin: it receives chunks instead
                self.counters["origin_fallbacks"] += 1
                log.warning("device %s: job %s: the origin failed (%s: %s); the file goes over MQTT", device, u.job_id,
                            u.reason, u.message[:300], extra={"event": "origin_fallback", "device": device,
                                                              "job": u.job_id, "reason": u.reason})
        self.registry.set_device(self.fleet, device, last_seen=time.time(),
                                 **({"active_version": u.active_version} if u.active_version else {}))
        if u.status != job.status.value:
            _log_job(device, job, u)
        if u.status == "SUCCEEDED" and job.action == "install":
            dep = self.registry.deployment(job.deployment_id)
            if dep is not None and dep.state in (DeploymentState.HALTED, DeploymentState.ROLLED_BACK):
                with self._lock:
                    self._order_rollback(dep, [device])

    # -- deployments -------------------------------------------------------------------------------------------
    def add_artifact(self, archive: bytes) -> tuple[str, str, str]:
        """Register a bundle archive (a deployment target, or a version devices already run: a delta base)."""
        name, version = bundle_identity(archive, self.trusted_keys, self.tuf_repo)
        file_id = hashlib.sha256(archive).hexdigest()
        if not self.registry.has_artifact(file_id):
            from .housekeeping import manifest_lineage

            self.registry.add_artifact(file_id, name, version, archive, manifest_lineage(archive))
        return file_id, name, version

    def create_deployment(self, archive: bytes, group: str, plan: RolloutPlan,
                          job_timeout: float = DEFAULT_JOB_TIMEOUT, tags: Sequence[str] = (),
                          devices: Sequence[str] = (), quality: P.QualityPolicy | None = None) -> Deployment:
        """Start a staged rollout of ``archive`` to ``group`` ("": every group), with ``tags`` only to its devices
        the operator gave every one of them (what devices claim does not count), with ``devices`` only to those
        (each must exist and fit the group and tags; a list takes no joiners); at least one of the three. A
        started job not ended within ``job_timeout`` seconds becomes TIMED_OUT (a failure for the health gate).
        ``quality``: the quality probation policy its install jobs carry (over each device's ``[quality]``); a
        device that rolls back on it reports ROLLED_BACK, reason ``quality``, a failure for the health gate."""
        if not 0 < job_timeout <= MAX_JOB_TIMEOUT:
            raise ConfigError(f"job timeout {job_timeout}s must be within 1s..7d")
        tags = check_tags(tags)
        devices = sorted(set(devices))
        if not (group or tags or devices):
            raise ConfigError("give the deployment's targets: a group, tags or a list of devices")
        file_id, name, version = self.add_artifact(archive)
        for d in devices:
            try:
                P.check_id(d, "device id")
            except ProtocolError as exc:
                raise ConfigError(str(exc)) from None
        rows = {d.device_id: d for d in self.registry.devices(self.fleet, group or None)}
        if devices:
            known = {d.device_id: d for d in self.registry.devices(self.fleet)} if group else rows
            unknown = [d for d in devices if d not in known]
            if unknown:
                raise ConfigError(f"no device {', '.join(unknown[:10])} in fleet {self.fleet!r}")
            misfit = [d for d in devices if not selected(known[d], group, tags)]
            if misfit:
                raise ConfigError(f"device(s) {', '.join(misfit[:10])} are not " + " and ".join(
                    w for w in (f"in group {group!r}" if group else "", f"tagged {','.join(tags)}" if tags else "")
                    if w))
        targets = [d for d, row in rows.items() if selected(row, group, tags, devices)]
        if not targets:
            raise ConfigError((f"group {group!r} has no devices" if group else "no device has")
                              + f" in fleet {self.fleet!r}" + (f" with the tags {', '.join(tags)}" if tags else ""))
        dep_id = self.registry.create_deployment(self.fleet, file_id, name, version, group, plan.canary,
                                                 list(plan.waves), plan.max_failure, targets, job_timeout, tags,
                                                 rate=plan.rate, min_finished=plan.min_finished, devices=devices,
                                                 quality=quality.options() if quality is not None else None)
        self._q.put(("", None, None))  # tick soon
        dep = self.registry.deployment(dep_id)
        assert dep is not None
        log.info("deployment %s created: %s %s to %d device(s) of group %s%s (canary %g%%, waves %s, max failure "
                 "%g%%)", dep_id, name, version, len(targets), group, f" tagged {','.join(tags)}" if tags else "",
                 plan.canary * 100, ",".join(f"{w:.0%}" for w in plan.waves), plan.max_failure * 100,
                 extra={"event": "deployment_created", "deployment": dep_id, "model": name, "version": version,
                        "group": group, "targets": len(targets)})
        return dep

    def set_state(self, dep_id: str, action: str) -> Deployment:
        """The operator's ``action`` on a deployment: ``pause`` (running), ``resume`` (paused), ``rollback`` (any
        state but rolled back: unstarted jobs canceled, devices on the new version ordered back) or ``cancel``
        (running or paused: devices not dispatched yet get nothing, unstarted jobs are canceled on the devices,
        installs under way finish). An action the state does not allow changes nothing: ActionRefusedError
        saying why (the API's 409)."""
        if action not in ("pause", "resume", "rollback", "cancel"):
            raise ConfigError(f"unknown action {action!r}")
        if self.registry.deployment(dep_id) is None:
            raise ConfigError(f"no deployment {dep_id!r}")
        with self._lock:
            deadline = time.monotonic() + self.lease_seconds + 1
            while not self.registry.acquire_lease(dep_id, self.node, self.lease_seconds):
                if time.monotonic() > deadline:
                    raise SyncError(f"deployment {dep_id} is held by another coordinator; try again")
                time.sleep(0.02)
            try:
                dep = self.registry.deployment(dep_id)
                assert dep is not None
                why = action_refusal(action, dep.state, dep.reason)
                if why:
                    raise ActionRefusedError(f"deployment {dep_id}: {why}")
                jobs = {j.device_id: j for j in self.registry.jobs(dep_id) if j.action == "install"}
                unstarted = [d for d, j in jobs.items() if j.status in (JobState.QUEUED, JobState.DOWNLOADING)]
                done = False
                if action == "pause":
                    done = self._transition(dep, DeploymentState.PAUSED, "paused by the operator")
                elif action == "resume":
                    done = self._transition(dep, DeploymentState.RUNNING, "")
                elif action == "rollback":
                    done = self._transition(dep, DeploymentState.ROLLED_BACK, "rolled back by the operator")
                    if done:
                        self._cancel(dep, unstarted, "rollout_rolled_back")
                        self._order_rollback(dep, [d for d, j in jobs.items() if j.status is JobState.SUCCEEDED])
                else:
                    never = len([d for d in dep.targets if d not in jobs])
                    done = self._transition(dep, DeploymentState.CANCELED, f"canceled by the operator: {len(unstarted)} unstarted "
                                            f"job(s) canceled, {never} device(s) never dispatched")
                    if done:
                        self._cancel(dep, unstarted, "rollout_canceled")
                if not done:  # the state changed under us (a tick halted or completed it): say what it is now
                    now = self.registry.deployment(dep_id)
                    raise ActionRefusedError(f"deployment {dep_id}: " + action_refusal(
                        action, now.state if now else dep.state, now.reason if now else "") or "changed meanwhile")
            finally:
                self.registry.release_lease(dep_id, self.node)
            out = self.registry.deployment(dep_id)
            assert out is not None
            return out

    def _transition(self, dep: Deployment, state: DeploymentState, reason: str | None = None) -> bool:
        """Move a deployment from the state it was read in to ``state``, once (compare-and-set), with an event."""
        fields: dict[str, Any] = {"state": state.value}
        if reason is not None:
            fields["reason"] = reason
        if not self.registry.set_deployment(dep.id, expect={"state": dep.state.value}, **fields):
            return False
        self.registry.add_event(dep.id, state.value, dep.stage, reason or "", self.node)
        level = logging.WARNING if state in (DeploymentState.HALTED, DeploymentState.ROLLED_BACK) else logging.INFO
        log.log(level, "deployment %s (%s %s, group %s): %s -> %s%s", dep.id, dep.name, dep.version, dep.group,
                dep.state, state, f": {reason}" if reason else "",
                extra={"event": f"rollout_{state}", "deployment": dep.id, "version": dep.version,
                       "from_state": dep.state, "state": state, "stage": dep.stage, "reason": reason or ""})
        return True

    def summary(self, dep: Deployment) -> dict[str, Any]:
        """A deployment as the API answers it: its row without targets and lease, the number of targets (and of
        those ``dispatched`` so far), the jobs' states counted, its events, its jobs (with the reason and message
        each device reported) and its ``failures``: the install jobs that failed, each device with its state and
        reason, the first ones the health gate counted."""
        jobs = self.registry.jobs(dep.id)
        counts: Counter[str] = Counter(j.status.value for j in jobs if j.action == "install")
        rollbacks: Counter[str] = Counter(j.status.value for j in jobs if j.action == "rollback")

        def job(j: Job) -> dict[str, Any]:
            return {"job_id": j.job_id, "device_id": j.device_id, "action": j.action, "status": j.status.value,
                    "step": j.step, "reason": j.reason, "message": j.message, "stage": j.stage, "updated": j.updated}

        return {**{k: v for k, v in dep.to_dict().items() if k not in ("targets", "lease_owner", "lease_until")},
                "targets": len(dep.targets), "counts": dict(counts), "rollbacks": dict(rollbacks),
                "dispatched": sum(counts.values()),
                "events": [{"ts": e.ts, "kind": e.kind, "stage": e.stage, "detail": e.detail}
                           for e in self.registry.events(dep.id)],
                "done": sum(v for k, v in counts.items() if k in P.TERMINAL_STATES),
                "failures": [job(j) for j in sorted(jobs, key=lambda j: j.updated)
                             if j.action == "install" and j.status.value in BAD],
                "jobs": [job(j) for j in jobs]}

    def tick(self) -> None:
        """Drive every live deployment one step: running and paused ones, and the newest deployment of
        each group when it has completed (devices that join the group later get it)."""
        if time.monotonic() - self._gone_read > 5.0:  # decommissioned by another coordinator of the registry
            self._gone_read = time.monotonic()
            self.gone = {d.device_id for d in self.registry.decommissioned(self.fleet)}
        heads = self.registry.deployment_heads(self.fleet)
        devices: dict[str, DeviceBrief] | None = None
        for dep_id, state, group in heads.live:
            if devices is None:
                devices = {d.device_id: d for d in self.registry.device_briefs(self.fleet)}
            if state == DeploymentState.COMPLETED:  # nothing to do (and no lease to take) unless someone joined
                dep = self.registry.deployment(dep_id)
                known = set(dep.targets) if dep else set()
                tags = dep.tags if dep else []
                if not any(selected(row, group, tags) and d not in known for d, row in devices.items()):
                    continue
            self._tick_leased(dep_id, heads.newest.get(group) == dep_id, devices)

    def _tick_leased(self, dep_id: str, newest: bool, devices: dict[str, DeviceBrief]) -> None:
        with self._lock:
            if not self.registry.acquire_lease(dep_id, self.node, self.lease_seconds):
                self.counters["lease_busy"] += 1  # another coordinator is ticking it right now
                return
            try:
                dep = self.registry.deployment(dep_id)  # re-read under the lease
                if dep is not None and (dep.state.live or (dep.state is DeploymentState.COMPLETED and newest)):
                    self._tick_one(dep, newest, devices)
            finally:
                self.registry.release_lease(dep_id, self.node)

    def _tick_one(self, dep: Deployment, newest: bool, devices: dict[str, DeviceBrief]) -> None:
        plan = RolloutPlan(dep.canary, tuple(dep.waves), dep.max_failure, dep.rate, dep.min_finished)
        targets = list(dep.targets)
        if newest:  # devices that joined the group since the deployment started
            known = set(targets)
            joined = sorted(d for d, row in devices.items()
                            if selected(row, dep.group, dep.tags) and d not in known and d not in self.gone)
            if joined:
                targets = self.registry.add_targets(dep.id, joined)
                self.registry.add_event(dep.id, "joined", dep.stage, ",".join(joined)[:2000], self.node)
                log.info("deployment %s: %d device(s) joined group %s: %s", dep.id, len(joined), dep.group,
                         ",".join(joined)[:200], extra={"event": "rollout_joined", "deployment": dep.id,
                                                        "devices": len(joined)})
        jobs = {j.device_id: j for j in self.registry.jobs(dep.id) if j.action == "install"}
        online = frozenset(d for d, row in devices.items() if row.online)
        now = time.time()
        for device, j in jobs.items():
            why = timed_out(j.status.value, j.started, j.delivered, device in online, now, dep.job_timeout)
            if why and self.registry.time_out_job(j, why):
                log.warning("job %s of %s timed out: %s", j.job_id, device, why,
                            extra={"event": "job_timed_out", "deployment": dep.id, "device": device, "job": j.job_id})
                jobs[device] = dataclasses.replace(j, status=JobState.TIMED_OUT)  # (the same key: the loop goes on)
                self.counters["jobs_timed_out"] += 1
                self.registry.add_event(dep.id, "timed_out", j.stage, f"{device}: {why}", self.node)
                self._withdraw(dep, j)
        view = View(dep.state, dep.stage, tuple(targets), {d: j.status.value for d, j in jobs.items()}, online,
                    dep.planned, tuple(j.created for j in jobs.values()), now,
                    reasons={d: j.reason for d, j in jobs.items() if j.status.value in BAD and j.reason})
        dec = evaluate(plan, view)
        if dec.halt:
            if self._transition(dep, DeploymentState.HALTED, dec.halt):  # logged there, with its reason
                self._cancel(dep, list(dec.cancel))
                self._order_rollback(dep, list(dec.rollback))
            return
        if dec.dispatch:
            stage = dep.stage if dec.stage is None else dec.stage
            # (decommissioned during this tick: not sent)
            todo = [d for d in dec.dispatch if d not in jobs and d not in self.gone]
            renewed = time.monotonic()
            for i in range(0, len(todo), DISPATCH_BATCH):
                if time.monotonic() - renewed > self.lease_seconds / 3:  # a long stage: keep the lease
                    if not self.registry.acquire_lease(dep.id, self.node, self.lease_seconds):
                        break  # another coordinator took over; it dispatches what is missing
                    renewed = time.monotonic()
                self._dispatch(dep, todo[i:i + DISPATCH_BATCH], devices, stage)
            if stage != dep.stage and self.registry.set_deployment(dep.id, expect={"stage": dep.stage}, stage=stage):
                self.registry.add_event(dep.id, "stage", stage, f"{len(dec.dispatch)} device(s)", self.node)
                log.info("deployment %s (%s %s): stage %d started, %d device(s) dispatched", dep.id, dep.name,
                         dep.version, stage, len(dec.dispatch),
                         extra={"event": "rollout_stage", "deployment": dep.id, "stage": stage,
                                "dispatched": len(dec.dispatch)})
        elif dec.complete:
            self._transition(dep, DeploymentState.COMPLETED)

    def _dispatch(self, dep: Deployment, targets: Sequence[str], devices: dict[str, DeviceBrief],
                  stage: int) -> None:
        """Send the install job of ``dep`` to each of ``targets``, in bulk: the jobs are recorded in one registry
        transaction (:meth:`Registry.add_jobs`), then each desired message is published. The message is the same
        for every device but for its job id (and a delta for a device holding another version): built once
        (:meth:`Desired.for_jobs`). A job another coordinator made first is counted, not sent again."""
        f = self._file(dep.artifact_id)
        assert f is not None
        now = time.time()
        plain = P.Desired("", P.JobAction.INSTALL.value, dep.id, dep.version, self._located(f[0]), ts=now,
                          model=dep.name, quality=P.QualityPolicy.from_dict(dep.quality) if dep.quality else None)
        ids = {device: job_key(dep.id, device, "install") for device in targets}
        deltas: dict[str, P.FileInfo | None] = {}  # delta base -> the delta to the target (None: not smaller)
        full: list[str] = []
        body: dict[str, bytes] = {}
        for device in targets:
            row = devices.get(device)
            if self.deltas and row and row.archive_sha256 and row.archive_sha256 != dep.artifact_id:
                base = row.archive_sha256
                if base not in deltas:
                    delta = self._delta(base, dep.artifact_id)
                    deltas[base] = self._located(delta) if delta else None
                if deltas[base] is not None:
                    body[device] = dataclasses.replace(plain, job_id=ids[device], delta=deltas[base],
                                                       delta_base=base).to_bytes()
                    continue
            full.append(device)
        body.update(zip(full, plain.for_jobs(ids[d] for d in full)))
        news = []
        for device in targets:
            row = devices.get(device)
            news.append(NewJob(device, row.active_version if row else "", bool(row and row.online),
                               body[device].decode()))
        made = self.registry.add_jobs(self.fleet, dep.id, "install", stage, news)
        for device in targets:
            if ids[device] not in made:
                self.counters["duplicate_dispatches_avoided"] += 1  # another coordinator made it first
            else:
                self._publish_desired(device, body[device])
        self.counters["dispatched"] += len(made)

    def _delta(self, base_id: str, target_id: str) -> P.FileInfo | None:
        row = self.registry.delta(base_id, target_id)
        if row is None:
            base = self.registry.artifact(base_id)
            target = self._file(target_id)
            if base is None or target is None:
                return None
            from ..wire.headdelta import make_head_update

            # a new head on the base's backbone (a federated head run's version) ships as the head update file
            patch = make_head_update(base.data, target[1], self.trusted_keys)
            if patch is not None:
                self.counters["head_updates_built"] += 1
            else:
                patch = make_delta(base.data, target[1])
            fid = hashlib.sha256(patch).hexdigest() if patch else ""
            self.registry.put_delta(base_id, target_id, fid, patch)
            row = Delta(base_id, target_id, fid, len(patch) if patch else 0, patch)
            self.counters["deltas_built"] += 1
        if not row.file_id:
            return None
        return P.FileInfo(row.file_id, row.size, self.chunk_size)

    def _located(self, info: P.FileInfo) -> P.FileInfo:
        """``info`` with the URL of the file at the origin (published there first, once), or as it is without an
        origin or when publishing fails (logged and counted: devices get the file in MQTT chunks)."""
        if self.origin is None:
            return info
        try:
            url = self.origin.url_for(info.file_id, lambda: self._file_bytes(info.file_id))
            return dataclasses.replace(info, url=url)
        except (EdgefleetError, OSError) as exc:
            self.counters["origin_errors"] += 1
            log.error("cannot publish %s to the origin: %s; devices get it in MQTT chunks", info.file_id[:12], exc,
                      extra={"event": "origin_error", "file": info.file_id})
            return info

    def _file_bytes(self, file_id: str) -> bytes:
        f = self._file(file_id)
        if f is None:
            raise SyncError(f"file {file_id[:12]} is neither an artifact nor a delta")
        return f[1]

    def _check_rollback_keys(self, signing_key: Any) -> None:
        """With a TUF repository, ``--signing-key`` must be a key of its rollback role (devices in TUF mode accept
        orders signed by nothing else); a ConfigError before anything starts otherwise."""
        from edgefleet.trust import ROLLBACK_ROLE, rollback_keys

        assert self.tuf_repo is not None
        role_keys, threshold = rollback_keys(self.tuf_repo)
        ids = {k.key_id for k in role_keys}
        mine = [signing_key] if not isinstance(signing_key, (list, tuple)) else list(signing_key)
        for k in mine:
            if k.public.key_id not in ids:
                raise ConfigError(f"the signing key {k.public.key_id} is not a key of the {ROLLBACK_ROLE!r} role of "
                                  f"{self.tuf_repo}: devices in TUF mode would refuse its rollback orders; delegate "
                                  "it with 'edgefleet repo delegate-rollback KEY.pub --repo DIR --root-key ...'")
        if len({k.public.key_id for k in mine}) < threshold:
            raise ConfigError(f"the {ROLLBACK_ROLE!r} role of {self.tuf_repo} needs {threshold} signatures on an order; "
                              f"{len(mine)} signing key(s) given")

    def _publish_desired(self, device: str, desired: P.Desired | bytes) -> None:
        """Publish a job's desired state (retained), given as the message or its bytes (a dispatch's, encoded in
        bulk); with a TUF repository, with the repository's current metadata."""
        if self.tuf_repo is not None and isinstance(desired, bytes):
            desired = P.Desired.parse(desired)
        if isinstance(desired, P.Desired):
            # install jobs: the signed target of the file; rollback jobs: the rollback role that signs the order
            if self.tuf_repo is not None and (desired.file is not None or
                                              desired.action == P.JobAction.ROLLBACK.value):
                desired = dataclasses.replace(desired, tuf=self._tuf_metadata(desired.deployment_id))
            desired = desired.to_bytes()
        self.transport.publish(P.down_topic(self.fleet, device, P.Down.DESIRED), desired, qos=1, retain=True)

    def _tuf_metadata(self, dep_id: str) -> dict[str, str] | None:
        """The repository's current metadata for the deployment's model (``trust.client_metadata``), sent with
        each install job (and again when a device reconnects: a device that was away gets a fresh timestamp).
        Read at most once a second per model."""
        from edgefleet.trust import client_metadata

        dep = self.registry.deployment(dep_id)
        if dep is None or self.tuf_repo is None:
            return None
        model = dep.name
        hit = self._tuf_cache.get(model)
        if hit is not None and time.monotonic() - hit[0] < 1.0:
            return hit[1]
        try:
            files = {k: v.decode() for k, v in client_metadata(self.tuf_repo, model).items()}
        except EdgefleetError as exc:  # the device then refuses the job (no_repository), named
            log.error("cannot read the TUF metadata of %s for deployment %s: %s", model, dep_id, exc)
            self.counters["tuf_metadata_errors"] += 1
            return None
        self._tuf_cache[model] = (time.monotonic(), files)
        return files

    def _cancel(self, dep: Deployment, devices: list[str], reason: str = "rollout_halted") -> None:
        """Cancel the install jobs of ``devices`` and withdraw them from the devices (a device cancels a job it
        has not started installing: ``action=none``)."""
        for j in self.registry.jobs(dep.id):
            if j.device_id in devices and j.action == "install":
                self.registry.force_job(j.job_id, status=JobState.CANCELED.value, reason=reason)
                self._withdraw(dep, j)

    def _withdraw(self, dep: Deployment, job: Job) -> None:
        """Clear a device's retained desired state of ``job``, unless a newer job has replaced it there."""
        latest = self.registry.latest_job(self.fleet, job.device_id)
        if latest is not None and latest.job_id != job.job_id:
            return
        self._publish_desired(job.device_id, P.Desired(job.job_id, P.JobAction.NONE.value, dep.id))

    def _order_rollback(self, dep: Deployment, devices: list[str]) -> None:
        """Order devices back to the version they ran before ``dep``, with an order signed by the operator key."""
        installs = {j.device_id: j for j in self.registry.jobs(dep.id) if j.action == "install"}
        for device in devices:
            to = installs[device].from_version if device in installs else ""
            job_id = job_key(dep.id, device, "rollback")
            if self.registry.job(job_id) is not None:
                continue  # ordered already (by this coordinator or another)
            order = None
            if self.signing_key is not None:
                now = time.time()
                order = RollbackOrder(self.fleet, device, dep.id, job_id, dep.version, to,
                                      self.registry.next_seq(f"rollback-orders/{self.fleet}"), now,
                                      now + self.order_ttl if self.order_ttl else 0.0).sign(self.signing_key)
            else:
                self.counters["unsigned_orders"] += 1
            desired = P.Desired(job_id, P.JobAction.ROLLBACK.value, dep.id, target_version=to, rollback_to=to,
                                rollback_order=order, ts=time.time())
            if not self.registry.add_job(self.fleet, dep.id, device, "rollback", -1, dep.version,
                                         desired=desired.to_bytes().decode()):
                continue
            self._publish_desired(device, desired)
            self.counters["rollbacks_ordered"] += 1
            log.warning("deployment %s: device %s ordered back to %s%s", dep.id, device, to or "its previous version",
                        "" if order is not None else " (unsigned order)",
                        extra={"event": "rollback_ordered", "deployment": dep.id, "device": device, "to_version": to})

    # -- helpers for tests and the API -------------------------------------------------------------------------
    def forget(self, device: str) -> None:
        """Drop what this coordinator remembers of ``device`` (it was decommissioned)."""
        self._groups.pop(device, None)
        self._births.pop(device, None)
        self._recent.pop(device, None)
        self.claims.pop(device, None)
        for key in [k for k in self._serving if k[0] == device]:
            del self._serving[key]
        for key in [k for k in self._deferred if k[0] == device]:
            del self._deferred[key]

    def queue_depth(self) -> int:
        """Inbound messages waiting for the worker (/metrics)."""
        return self._q.qsize()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.empty():
                return True
            time.sleep(0.01)
        return False


class BrokerLink:
    """The coordinator's own broker connection: up or down since when (wall-clock), connects and disconnects."""

    def __init__(self) -> None:
        self.connected = False
        self.since = 0.0
        self.connects = 0
        self.disconnects = 0

    def up(self, now: float) -> None:
        self.connected, self.since = True, now
        self.connects += 1

    def down(self, now: float) -> None:
        if self.connected:
            self.disconnects += 1
        self.connected, self.since = False, now


def _broker_url(transport: Any) -> str:
    return str(getattr(getattr(transport, "config", None), "url", "") or "")


def _log_job(device: str, job: Job, u: P.JobUpdate) -> None:
    """A device's job changed status: its end at info (success) or warning (refused, failed, rolled back), the
    steps between at debug."""
    extra = {"event": f"{job.action}_{u.status.lower()}", "device": device, "deployment": job.deployment_id,
             "job": job.job_id, "status": u.status, "reason": u.reason}
    what = "install" if job.action == "install" else "rollback"
    if u.status == "SUCCEEDED":
        log.info("device %s: %s of deployment %s succeeded (now running %s)", device, what, job.deployment_id,
                 u.active_version or "?", extra={**extra, "version": u.active_version})
    elif u.status in P.TERMINAL_STATES:
        log.warning("device %s: %s of deployment %s %s: %s%s", device, what, job.deployment_id, u.status,
                    u.reason or "no reason given", f" ({u.message[:200]})" if u.message else "", extra=extra)
    else:
        log.debug("device %s: %s of deployment %s is %s%s", device, what, job.deployment_id, u.status,
                  f" ({u.step})" if u.step else "", extra=extra)


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second up to ``burst`` (default ``max(10 * rate, a full
    telemetry batch)``). :meth:`take` admits a cost when the bucket holds it - or is full, so a cost above
    ``burst`` (a full batch under a small burst) still passes now and then - and may leave the bucket in debt,
    so the rate holds on average. Memory is bounded: full buckets (idle keys) are forgotten first, then the
    least recently used ones."""

    def __init__(self, rate: float, burst: float | None = None, max_keys: int = 100_000) -> None:
        if not rate or not 0 < rate <= 1e9:
            raise ConfigError(f"a rate must be within (0, 1e9] records/s, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst) if burst else max(10 * self.rate, float(P.MAX_TELEMETRY_RECORDS))
        if not 1 <= self.burst <= 1e12:
            raise ConfigError(f"a burst must be within [1, 1e12] records, got {burst!r}")
        self.max_keys = max_keys
        self._b: dict[str, tuple[float, float]] = {}  # key -> (tokens, when); insertion order = least recent first

    def take(self, key: str, cost: int, now: float) -> bool:
        tokens, when = self._b.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        cost = max(1, cost)
        ok = tokens >= min(cost, self.burst)
        if ok:
            tokens -= cost
        self._b[key] = (tokens, now)
        if len(self._b) > self.max_keys:
            self._prune(now)
        return ok

    def _prune(self, now: float) -> None:
        for key, (tokens, when) in list(self._b.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._b[key]
        while len(self._b) > self.max_keys:
            del self._b[next(iter(self._b))]

    def __len__(self) -> int:
        return len(self._b)


def selected(device: Device | DeviceBrief, group: str, tags: Iterable[str], devices: Sequence[str] = ()) -> bool:
    """Whether a deployment to ``group`` ("": any) selecting ``tags`` (and, if given, only ``devices``) targets
    ``device`` (a registry row): its assigned group and every tag among its assigned ``tags`` (never its
    ``claimed_tags``)."""
    return ((not group or device.group == group) and set(tags) <= set(device.tags)
            and (not devices or device.device_id in devices))


def _tags(tags: tuple[str, ...]) -> str:
    import json

    return json.dumps(list(tags))


def read_allow_file(path: str | os.PathLike) -> tuple[set[str], dict[str, str]]:
    """The operator's provisioning file (``cloud serve --allow FILE``): ``DEVICE`` or ``DEVICE GROUP`` a line,
    ``#`` comments. Returns (allowed device ids, device -> assigned group). A bad line is a ConfigError naming it."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--allow {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    allowed: set[str] = set()
    groups: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            if len(words) > 2:
                raise ProtocolError("expected DEVICE or DEVICE GROUP")
            allowed.add(P.check_id(words[0], "device id"))
            if len(words) == 2:
                groups[words[0]] = P.check_id(words[1], "group")
        except ProtocolError as exc:
            raise ConfigError(f"--allow {path}, line {n}: {exc}") from None
    return allowed, groups


def default_db_url(path: str | os.PathLike = "edgefleet-registry.db") -> str:
    return f"sqlite:///{Path(path).resolve()}"


__all__ = ["Coordinator", "bundle_identity", "default_db_url", "SyncError"]
