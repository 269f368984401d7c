"""The fleet registry: devices, artifacts, deltas, deployments, jobs, telemetry aggregates, alerts,
federated runs with their per-round metrics and the per-group auto-retraining settings.

SQLAlchemy Core over any URL: a SQLite file by default (WAL), PostgreSQL
(``postgresql+psycopg://...``) for larger fleets or several coordinators.
``prefix`` namespaces the tables so several registries can share one database.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from edgefleet.errors import ConfigError

from ..wire.protocol import QualityRecord, TelemetryRecord
from . import windows as W
from .rollout import DEFAULT_JOB_TIMEOUT, MAX_TOKEN_TTL
from .rows import (
    Alert,
    AlertTally,
    Artifact,
    ArtifactInfo,
    ArtifactUse,
    AuditEntry,
    Decommissioned,
    Delta,
    Deployment,
    DeploymentHeads,
    DeploymentState,
    Device,
    DeviceBrief,
    DeviceQuality,
    DeviceTally,
    FailedRun,
    FedRound,
    FedRun,
    FedRunEvent,
    FedRunTally,
    Job,
    JobTally,
    Principal,
    Retrain,
    RolloutEvent,
    RunStatus,
    TelemetryRow,
    TelemetryWindow,
    Token,
)

BAD_STATES = ("FAILED", "REJECTED", "ROLLED_BACK", "TIMED_OUT")
QUALITY_COUNTS = ("scored", "labelled", "correct", "compared")
QUALITY_FLOATS = ("confidence", "entropy", "agreement", "confidence_shift", "entropy_shift", "psi")
MAX_QUALITY_VERSIONS = 8  # versions whose quality is kept per device (the newest records): a device names its versions
FED_ROUND_COUNTS = ("participants", "failures", "declined", "examples")
FED_ROUND_FLOATS = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "central_loss", "central_accuracy",
                    "seconds", "dp_epsilon")


def _tables(meta: MetaData, p: str) -> dict[str, Table]:
    return {
        "devices": Table(
            f"{p}devices", meta,
            Column("fleet", String(128), primary_key=True),
            Column("device_id", String(128), primary_key=True),
            Column("group_name", String(128), nullable=False, default="default"),
            Column("tags", Text, nullable=False, default="[]"),  # assigned by the operator: what targeting uses
            Column("online", Boolean, nullable=False, default=False),
            Column("session", Integer, nullable=False, default=0),
            Column("first_seen", Float, nullable=False, default=0.0),
            Column("last_seen", Float, nullable=False, default=0.0),
            Column("active_version", String(128), nullable=False, default=""),
            Column("archive_sha256", String(64), nullable=False, default=""),
            Column("agent_version", String(64), nullable=False, default=""),
            Column("telemetry_seq", Integer, nullable=False, default=0),
            Column("claimed_tags", Text, nullable=False, default="[]"),  # the device's own hardware_tags: a claim
            Column("inventory", Text, nullable=False, default="{}"),  # rows.Inventory: what its latest birth said
            Column("recent", Text, nullable=False, default="{}"),  # its newest metrics record, summarized
        ),
        "artifacts": Table(
            f"{p}artifacts", meta,
            Column("file_id", String(64), primary_key=True),
            Column("name", String(128), nullable=False),
            Column("version", String(128), nullable=False),
            Column("size", Integer, nullable=False),
            Column("data", LargeBinary, nullable=False),
            Column("created", Float, nullable=False),
            Column("lineage", Text, nullable=False, default=""),  # the manifest's lineage (JSON); "": not read yet
        ),
        "deltas": Table(
            f"{p}deltas", meta,
            Column("base_id", String(64), primary_key=True),
            Column("target_id", String(64), primary_key=True),
            Column("file_id", String(64), nullable=False, default=""),  # "" = no useful delta
            Column("size", Integer, nullable=False, default=0),
            Column("data", LargeBinary, nullable=True),
        ),
        "deployments": Table(
            f"{p}deployments", meta,
            Column("id", String(32), primary_key=True),
            Column("fleet", String(128), nullable=False),
            Column("artifact_id", String(64), nullable=False),
            Column("name", String(128), nullable=False),
            Column("version", String(128), nullable=False),
            Column("group_name", String(128), nullable=False),
            Column("canary", Float, nullable=False),
            Column("waves", Text, nullable=False),
            Column("max_failure", Float, nullable=False),
            Column("state", String(16), nullable=False),
            Column("stage", Integer, nullable=False, default=0),
            Column("reason", Text, nullable=False, default=""),
            Column("targets", Text, nullable=False),
            Column("created", Float, nullable=False),
            Column("updated", Float, nullable=False),
            Column("job_timeout", Float, nullable=False, default=DEFAULT_JOB_TIMEOUT),
            Column("planned", Integer, nullable=False, default=-1),  # targets at creation; later ones joined
            Column("lease_owner", String(64), nullable=False, default=""),  # the coordinator ticking it now
            Column("lease_until", Float, nullable=False, default=0.0),
            Column("tags", Text, nullable=False, default="[]"),  # only devices the operator gave all these tags
            Column("rate", Integer, nullable=False, default=0),  # devices dispatched per minute at most; 0: no limit
            Column("min_finished", Integer, nullable=False, default=0),  # jobs ended before the gate judges
            Column("devices", Text, nullable=False, default="[]"),  # an explicit list of devices ([]: none given)
            Column("quality", Text, nullable=False, default="{}"),  # the quality policy its jobs carry ({}: none)
        ),
        "jobs": Table(
            f"{p}jobs", meta,
            Column("job_id", String(64), primary_key=True),
            Column("deployment_id", String(32), nullable=False, index=True),
            Column("fleet", String(128), nullable=False),
            Column("device_id", String(128), nullable=False, index=True),
            Column("action", String(16), nullable=False),
            Column("status", String(16), nullable=False),
            Column("step", String(32), nullable=False, default=""),
            Column("reason", String(128), nullable=False, default=""),
            Column("message", Text, nullable=False, default=""),
            Column("version", Integer, nullable=False, default=0),
            Column("stage", Integer, nullable=False, default=0),
            Column("from_version", String(128), nullable=False, default=""),
            Column("created", Float, nullable=False),
            Column("updated", Float, nullable=False),
            Column("started", Float, nullable=False, default=0.0),  # the device's first report
            Column("delivered", Float, nullable=False, default=0.0),  # reached the online device (0: offline)
            Column("desired", Text, nullable=False, default=""),  # the Desired message, re-sent when needed
        ),
        "rollout_events": Table(  # stage starts, halts, completion, timeouts: each recorded once
            f"{p}rollout_events", meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("deployment_id", String(32), nullable=False, index=True),
            Column("kind", String(32), nullable=False),
            Column("stage", Integer, nullable=False, default=0),
            Column("detail", Text, nullable=False, default=""),
            Column("owner", String(64), nullable=False, default=""),
            Column("ts", Float, nullable=False),
        ),
        "sequences": Table(  # monotonic counters (the sequence numbers of signed orders)
            f"{p}sequences", meta,
            Column("name", String(64), primary_key=True),
            Column("value", BigInteger, nullable=False, default=0),
        ),
        "telemetry": Table(
            f"{p}telemetry", meta,
            Column("fleet", String(128), primary_key=True),
            Column("group_name", String(128), primary_key=True),
            Column("version", String(128), primary_key=True),
            Column("kind", String(64), primary_key=True),
            Column("records", BigInteger, nullable=False, default=0),
            Column("predictions", BigInteger, nullable=False, default=0),
            Column("errors", BigInteger, nullable=False, default=0),
            Column("invalid", BigInteger, nullable=False, default=0),
        ),
        # telemetry per minute (windows.py): the metrics' counts and latency histogram of each (group, version)
        "telemetry_windows": Table(
            f"{p}telemetry_windows", meta,
            Column("fleet", String(128), primary_key=True),
            Column("group_name", String(128), primary_key=True),
            Column("version", String(128), primary_key=True),
            Column("minute", BigInteger, primary_key=True),  # the slot's start, epoch seconds
            Column("records", BigInteger, nullable=False, default=0),
            Column("predictions", BigInteger, nullable=False, default=0),
            Column("errors", BigInteger, nullable=False, default=0),
            Column("invalid", BigInteger, nullable=False, default=0),
            *[Column(f"l{i}", BigInteger, nullable=False, default=0) for i in range(W.NB)],
        ),
        # devices the operator decommissioned: refused from then on (until assigned a group again)
        "decommissioned": Table(
            f"{p}decommissioned", meta,
            Column("fleet", String(128), primary_key=True),
            Column("device_id", String(128), primary_key=True),
            Column("group_name", String(128), nullable=False, default=""),
            Column("ts", Float, nullable=False),
            Column("who", String(128), nullable=False, default=""),
        ),
        # alerts sent (coordinator/alerts.py): one row per alert key, so coordinators sharing the registry send once
        "alert_marks": Table(
            f"{p}alert_marks", meta,
            Column("fleet", String(128), primary_key=True),
            Column("key", String(255), primary_key=True),
            Column("ts", Float, nullable=False, index=True),
        ),
        "alerts": Table(
            f"{p}alerts", meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("fleet", String(128), nullable=False),
            Column("device_id", String(128), nullable=False),
            Column("kind", String(64), nullable=False),
            Column("version", String(128), nullable=False, default=""),
            Column("data", Text, nullable=False),
            Column("ts", Float, nullable=False),
        ),
        # federated retraining: one row per run, one per round of a run, the per-group drift policy
        "fed_runs": Table(
            f"{p}fed_runs", meta,
            Column("id", String(32), primary_key=True),
            Column("fleet", String(128), nullable=False, index=True),
            Column("group_name", String(128), nullable=False),
            Column("status", String(128), nullable=False),
            Column("strategy", String(32), nullable=False),
            Column("rounds", Integer, nullable=False),
            Column("trigger", String(32), nullable=False, default="manual"),
            Column("reason", Text, nullable=False, default=""),
            Column("flower_run_id", String(32), nullable=False, default=""),
            Column("config", Text, nullable=False, default="{}"),
            Column("result", Text, nullable=False, default="{}"),
            Column("created", Float, nullable=False),
            Column("updated", Float, nullable=False),
            Column("error", Text, nullable=False, default=""),  # why it failed or stopped
            Column("stop_requested", Float, nullable=False, default=0.0),  # when a stop was asked for; 0: never
        ),
        # what happened to a run: status changes (with the error of a failure), stop requests
        "fed_run_events": Table(
            f"{p}fed_run_events", meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("run_id", String(32), nullable=False, index=True),
            Column("ts", Float, nullable=False),
            Column("kind", String(16), nullable=False),
            Column("status", String(32), nullable=False, default=""),
            Column("message", Text, nullable=False, default=""),
        ),
        "fed_rounds": Table(
            f"{p}fed_rounds", meta,
            Column("run_id", String(32), primary_key=True),
            Column("round", Integer, primary_key=True),
            *[Column(name, Integer, nullable=False, default=0) for name in FED_ROUND_COUNTS],
            *[Column(name, Float, nullable=True) for name in FED_ROUND_FLOATS],
            Column("strategy", String(32), nullable=False, default=""),
            Column("ts", Float, nullable=False),
        ),
        # API tokens: the sha256 of each random token (never the token), its scope; the audit log of mutating calls
        "tokens": Table(
            f"{p}tokens", meta,
            Column("fleet", String(128), primary_key=True),
            Column("name", String(128), primary_key=True),
            Column("scope", String(16), nullable=False),
            Column("sha256", String(64), nullable=False, unique=True),
            Column("created", Float, nullable=False),
            Column("expires", Float, nullable=False, default=0.0),  # wall-clock end of its validity; 0: none
        ),
        "audit": Table(
            f"{p}audit", meta,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("fleet", String(128), nullable=False, index=True),
            Column("ts", Float, nullable=False),
            Column("who", String(128), nullable=False),
            Column("method", String(16), nullable=False),
            Column("path", Text, nullable=False),
            Column("summary", Text, nullable=False, default=""),
            Column("status", Integer, nullable=False),
            Column("client", String(128), nullable=False, default=""),
        ),
        # failed API authentications per client address, shared by every coordinator of the registry: the times of
        # the recent 401s (at most the lockout threshold of them) and the end of a lockout; rows with neither pruned
        "auth_failures": Table(
            f"{p}auth_failures", meta,
            Column("fleet", String(128), primary_key=True),
            Column("client", String(128), primary_key=True),
            Column("times", Text, nullable=False, default="[]"),
            Column("locked_until", Float, nullable=False, default=0.0),
            Column("updated", Float, nullable=False, index=True),
        ),
        "retrain": Table(
            f"{p}retrain", meta,
            Column("fleet", String(128), primary_key=True),
            Column("group_name", String(128), primary_key=True),
            Column("on_drift", Boolean, nullable=False, default=False),
            Column("policy", Text, nullable=False, default="{}"),
            Column("updated", Float, nullable=False),
        ),
        # how well each version serves each device: its newest quality record (rows.DeviceQuality)
        "device_quality": Table(
            f"{p}device_quality", meta,
            Column("fleet", String(128), primary_key=True),
            Column("device_id", String(128), primary_key=True),
            Column("version", String(128), primary_key=True),
            Column("group_name", String(128), nullable=False, default=""),
            Column("ts", Float, nullable=False),
            *[Column(name, BigInteger, nullable=False, default=0) for name in QUALITY_COUNTS],
            *[Column(name, Float, nullable=False, default=0.0) for name in QUALITY_FLOATS],
            Column("reference", String(128), nullable=False, default=""),
            Column("verdict", String(16), nullable=False, default=""),
            Column("signal", String(32), nullable=False, default=""),
            Column("head", String(16), nullable=False, default=""),
        ),
    }


class Registry:
    """All coordinator state. Every method is one short transaction."""

    def __init__(self, url: str = "sqlite:///edgefleet-registry.db", prefix: str = "ef_", echo: bool = False) -> None:
        if "://" not in url:
            raise ConfigError(f"registry URL {url!r} is not a SQLAlchemy URL (e.g. sqlite:///fleet.db)")
        kwargs: dict[str, Any] = {}
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            _private_sqlite_file(url)
        self.engine: Engine = create_engine(url, echo=echo, **kwargs)
        if self.sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        self.meta = MetaData()
        self.t = _tables(self.meta, prefix)
        self.meta.create_all(self.engine)
        self._add_missing_columns()
        self._lock = threading.RLock() if self.sqlite else _NoLock()

    def _add_missing_columns(self) -> None:
        """Bring a registry made by an older edgefleet up to date (new columns, each with its default).

        A registry from before ``claimed_tags`` kept in ``tags`` whatever each device's status message said: those
        tags move to ``claimed_tags`` (a claim) and the assigned ``tags`` start empty."""
        have = inspect(self.engine)
        with self.engine.begin() as c:
            for table in self.t.values():
                present = {col["name"] for col in have.get_columns(table.name)}
                for col in table.columns:
                    if col.name in present:
                        continue
                    default = getattr(col.default, "arg", None)
                    ddl = f"ALTER TABLE {table.name} ADD COLUMN {col.name} {col.type.compile(self.engine.dialect)}"
                    if isinstance(default, (int, float, str)):  # bool is an int
                        lit = "'" + default.replace("'", "''") + "'" if isinstance(default, str) else repr(default)
                        ddl += f" DEFAULT {lit} NOT NULL"
                    c.execute(text(ddl))
                    if table is self.t["devices"] and col.name == "claimed_tags":
                        c.execute(update(table).values(claimed_tags=table.c.tags, tags="[]"))

    def drop_all(self) -> None:
        self.meta.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- devices ------------------------------------------------------------------------------------
    def upsert_device(self, fleet: str, device_id: str, **fields: Any) -> tuple[Device, bool]:
        """Create or update a device (``fields``: column values, JSON columns encoded); returns (row, created).
        Coordinators sharing the registry may create the same device at once (two ``cloud serve --allow`` starting
        together): the one whose insert loses updates the row the other made."""
        try:
            return self._upsert_device(fleet, device_id, dict(fields))
        except IntegrityError:  # created by another coordinator between our read and our insert
            return self._upsert_device(fleet, device_id, dict(fields))

    def _upsert_device(self, fleet: str, device_id: str, fields: dict[str, Any]) -> tuple[Device, bool]:
        d = self.t["devices"]
        now = time.time()
        with self._lock, self.engine.begin() as c:
            row = c.execute(select(d).where(and_(d.c.fleet == fleet, d.c.device_id == device_id))).mappings().first()
            if row is None:
                vals = {"fleet": fleet, "device_id": device_id, "group_name": fields.pop("group_name", None) or "default",
                        "tags": "[]", "claimed_tags": "[]", "online": False, "session": 0, "first_seen": now, "last_seen": now,
                        "active_version": "", "archive_sha256": "", "agent_version": "", "telemetry_seq": 0,
                        "inventory": "{}", "recent": "{}"}
                vals.update(fields)
                c.execute(insert(d).values(**vals))
                return Device.from_row(vals), True
            fields.pop("group_name", None)  # a known device keeps the group the registry gave it
            if fields:
                c.execute(update(d).where(and_(d.c.fleet == fleet, d.c.device_id == device_id)).values(**fields))
            return Device.from_row({**dict(row), **fields}), False

    def set_device(self, fleet: str, device_id: str, **fields: Any) -> bool:
        d = self.t["devices"]
        with self._lock, self.engine.begin() as c:
            r = c.execute(update(d).where(and_(d.c.fleet == fleet, d.c.device_id == device_id)).values(**fields))
            return bool(r.rowcount)

    def device(self, fleet: str, device_id: str) -> Device | None:
        d = self.t["devices"]
        with self.engine.connect() as c:
            row = c.execute(select(d).where(and_(d.c.fleet == fleet, d.c.device_id == device_id))).mappings().first()
        return Device.from_row(row) if row else None

    def devices(self, fleet: str, group: str | None = None) -> list[Device]:
        d = self.t["devices"]
        q = select(d).where(d.c.fleet == fleet)
        if group:
            q = q.where(d.c.group_name == group)
        with self.engine.connect() as c:
            return [Device.from_row(r) for r in c.execute(q.order_by(d.c.device_id)).mappings()]

    def device_briefs(self, fleet: str) -> list[DeviceBrief]:
        """The fleet's devices as a rollout tick reads them (:class:`DeviceBrief`: group, tags, online, what they
        run), by id."""
        d = self.t["devices"]
        q = select(d.c.device_id, d.c.group_name, d.c.tags, d.c.online, d.c.active_version, d.c.archive_sha256)
        with self.engine.connect() as c:
            return [DeviceBrief.from_row(r) for r in c.execute(q.where(d.c.fleet == fleet).order_by(d.c.device_id))]

    def decommission(self, fleet: str, device_id: str, who: str = "") -> Device | None:
        """Remove a device, in one transaction: its row goes and a tombstone takes its place (its messages are
        refused from then on); its unfinished jobs become CANCELED (reason ``decommissioned``), and every running or
        paused deployment that targets it without having dispatched it a job drops it from its targets (an event
        ``decommissioned`` records it), so no rollout waits for it. Returns the removed row (None: no such device;
        nothing changes)."""
        from ..wire.protocol import TERMINAL_STATES

        d, j, dep, x = self.t["devices"], self.t["jobs"], self.t["deployments"], self.t["decommissioned"]
        key = and_(d.c.fleet == fleet, d.c.device_id == device_id)
        now = time.time()
        with self._lock, self.engine.begin() as c:
            row = c.execute(select(d).where(key).with_for_update()).mappings().first()
            if row is None:
                return None
            c.execute(delete(d).where(key))
            c.execute(delete(x).where(and_(x.c.fleet == fleet, x.c.device_id == device_id)))
            c.execute(insert(x).values(fleet=fleet, device_id=device_id, group_name=row["group_name"], ts=now,
                                       who=who[:128]))
            c.execute(update(j).where(and_(j.c.fleet == fleet, j.c.device_id == device_id,
                                           j.c.status.notin_(sorted(TERMINAL_STATES))))
                      .values(status="CANCELED", reason="decommissioned", message=f"decommissioned by {who}"[:2000],
                              updated=now))
            live = c.execute(select(dep.c.id, dep.c.stage, dep.c.targets, dep.c.planned).where(and_(
                dep.c.fleet == fleet, dep.c.state.in_([s.value for s in DeploymentState if s.live]))).with_for_update()).all()
            for dep_id, stage, text_, planned in live:
                targets = json.loads(text_)
                if device_id not in targets or c.execute(select(j.c.job_id).where(and_(
                        j.c.deployment_id == dep_id, j.c.device_id == device_id, j.c.action == "install"))).first():
                    continue  # not a target, or dispatched (its job is canceled above and counts as ended)
                at = targets.index(device_id)
                targets.remove(device_id)
                c.execute(update(dep).where(dep.c.id == dep_id).values(
                    targets=json.dumps(targets), planned=planned - 1 if 0 <= at < planned else planned, updated=now))
                c.execute(insert(self.t["rollout_events"]).values(
                    deployment_id=dep_id, kind="decommissioned", stage=stage, detail=f"{device_id} by {who}"[:2000],
                    owner="", ts=now))
        return Device.from_row(row)

    def readmit(self, fleet: str, device_id: str) -> bool:
        """Lift a device's decommissioning (the operator assigned it a group again); False if it was not."""
        x = self.t["decommissioned"]
        with self._lock, self.engine.begin() as c:
            return bool(c.execute(delete(x).where(and_(x.c.fleet == fleet, x.c.device_id == device_id))).rowcount)

    def decommissioned(self, fleet: str) -> list[Decommissioned]:
        """The fleet's decommissioned devices, by id."""
        x = self.t["decommissioned"]
        with self.engine.connect() as c:
            return [Decommissioned.from_row(r) for r in
                    c.execute(select(x).where(x.c.fleet == fleet).order_by(x.c.device_id)).mappings()]

    # -- artifacts and deltas ----------------------------------------------------------------------------
    def add_artifact(self, file_id: str, name: str, version: str, data: bytes,
                     lineage: Mapping[str, Any] | None = None) -> None:
        """Store an archive (once: by its sha256) with its manifest's ``lineage`` (None: read later)."""
        a = self.t["artifacts"]
        with self._lock, self.engine.begin() as c:
            if c.execute(select(a.c.file_id).where(a.c.file_id == file_id)).first() is None:
                c.execute(insert(a).values(file_id=file_id, name=name, version=version, size=len(data), data=data,
                                           created=time.time(),
                                           lineage="" if lineage is None else json.dumps(dict(lineage))))

    def artifacts(self, fleet: str) -> list[ArtifactInfo]:
        """The stored artifacts (never their bytes), oldest first, each with the fleet's deployments of it; those
        only other fleets of a shared registry deployed are left out."""
        a, t = self.t["artifacts"], self.t["deployments"]
        with self.engine.connect() as c:
            arts = c.execute(select(a.c.file_id, a.c.name, a.c.version, a.c.size, a.c.created, a.c.lineage)
                             .order_by(a.c.created, a.c.file_id)).all()
            deps = c.execute(select(t.c.artifact_id, t.c.fleet, t.c.id, t.c.group_name, t.c.tags, t.c.state,
                                    t.c.created).order_by(t.c.created, t.c.id)).all()
        uses: dict[str, list[ArtifactUse]] = {}
        foreign: set[str] = set()
        for art_id, dep_fleet, dep_id, group, tags, state, created in deps:
            if dep_fleet == fleet:
                uses.setdefault(art_id, []).append(ArtifactUse(dep_id, group, json.loads(tags or "[]"), state,
                                                               float(created)))
            else:
                foreign.add(art_id)
        return [ArtifactInfo(fid, name, version, int(size), float(created), json.loads(lineage) if lineage else {},
                             uses.get(fid, []))
                for fid, name, version, size, created, lineage in arts if fid in uses or fid not in foreign]

    def artifacts_without_lineage(self) -> list[str]:
        """The artifacts stored before their lineage was kept (``lineage`` not read yet)."""
        a = self.t["artifacts"]
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(select(a.c.file_id).where(a.c.lineage == ""))]

    def set_artifact_lineage(self, file_id: str, lineage: Mapping[str, Any]) -> None:
        a = self.t["artifacts"]
        with self._lock, self.engine.begin() as c:
            c.execute(update(a).where(a.c.file_id == file_id).values(lineage=json.dumps(dict(lineage))))

    def artifact(self, file_id: str) -> Artifact | None:
        a = self.t["artifacts"]
        with self.engine.connect() as c:
            row = c.execute(select(a).where(a.c.file_id == file_id)).mappings().first()
        return Artifact.from_row(row) if row else None

    def has_artifact(self, file_id: str) -> bool:
        a = self.t["artifacts"]
        with self.engine.connect() as c:
            return c.execute(select(a.c.file_id).where(a.c.file_id == file_id)).first() is not None

    def delta(self, base_id: str, target_id: str) -> Delta | None:
        t = self.t["deltas"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(and_(t.c.base_id == base_id, t.c.target_id == target_id))).mappings().first()
        return Delta.from_row(row) if row else None

    def delta_by_file(self, file_id: str) -> Delta | None:
        t = self.t["deltas"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(t.c.file_id == file_id)).mappings().first()
        return Delta.from_row(row) if row else None

    def put_delta(self, base_id: str, target_id: str, file_id: str, data: bytes | None) -> None:
        t = self.t["deltas"]
        with self._lock, self.engine.begin() as c:
            c.execute(delete(t).where(and_(t.c.base_id == base_id, t.c.target_id == target_id)))
            c.execute(insert(t).values(base_id=base_id, target_id=target_id, file_id=file_id,
                                       size=len(data) if data else 0, data=data))

    # -- deployments ---------------------------------------------------------------------------------------
    def create_deployment(self, fleet: str, artifact_id: str, name: str, version: str, group: str, canary: float,
                          waves: list[float], max_failure: float, targets: list[str],
                          job_timeout: float = DEFAULT_JOB_TIMEOUT, tags: Sequence[str] = (), *, rate: int = 0,
                          min_finished: int = 0, devices: Sequence[str] = (),
                          quality: Mapping[str, float | int | str] | None = None) -> str:
        dep_id = uuid.uuid4().hex[:12]
        now = time.time()
        with self._lock, self.engine.begin() as c:
            c.execute(insert(self.t["deployments"]).values(
                id=dep_id, fleet=fleet, artifact_id=artifact_id, name=name, version=version, group_name=group,
                canary=canary, waves=json.dumps(waves), max_failure=max_failure, state=DeploymentState.RUNNING.value, stage=-1,
                reason="", targets=json.dumps(targets), created=now, updated=now, job_timeout=job_timeout,
                planned=len(targets), lease_owner="", lease_until=0.0, tags=json.dumps(list(tags)), rate=rate,
                min_finished=min_finished, devices=json.dumps(list(devices)), quality=json.dumps(dict(quality or {}))))
        return dep_id

    def deployment(self, dep_id: str) -> Deployment | None:
        t = self.t["deployments"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(t.c.id == dep_id)).mappings().first()
        return Deployment.from_row(row) if row else None

    def deployments(self, fleet: str, states: Iterable[str] | None = None) -> list[Deployment]:
        t = self.t["deployments"]
        q = select(t).where(t.c.fleet == fleet)
        if states is not None:
            q = q.where(t.c.state.in_(list(states)))
        with self.engine.connect() as c:
            return [Deployment.from_row(r) for r in c.execute(q.order_by(t.c.created)).mappings()]

    def deployment_heads(self, fleet: str) -> DeploymentHeads:
        """What a rollout tick visits, without loading target lists: ``live`` is (id, state, group) of the
        running and paused deployments plus each group's newest one if it completed; ``newest`` maps a
        group to its newest deployment (the one devices joining the group get; a deployment to a list of
        devices takes no joiners, so it is never a group's newest)."""
        t = self.t["deployments"]
        with self.engine.connect() as c:
            rows = c.execute(select(t.c.id, t.c.state, t.c.group_name, t.c.devices).where(t.c.fleet == fleet)
                             .order_by(t.c.created, t.c.id)).all()
        newest: dict[str, str] = {g: i for i, _, g, listed in rows if listed in ("", "[]")}
        live = [(i, st, g) for i, st, g, _ in rows
                if DeploymentState(st).live or (st == DeploymentState.COMPLETED and newest.get(g) == i)]
        return DeploymentHeads(live, newest)

    def set_deployment(self, dep_id: str, expect: dict[str, Any] | None = None, **fields: Any) -> bool:
        """Update a deployment; with ``expect`` only if those columns still hold those values (compare-and-set)."""
        t = self.t["deployments"]
        cond = and_(t.c.id == dep_id, *[t.c[k] == v for k, v in (expect or {}).items()])
        with self._lock, self.engine.begin() as c:
            return bool(c.execute(update(t).where(cond).values(updated=time.time(), **fields)).rowcount)

    def add_targets(self, dep_id: str, devices: list[str]) -> list[str]:
        """Append devices that joined the deployment's group; returns the whole target list."""
        t = self.t["deployments"]
        with self._lock, self.engine.begin() as c:
            row = c.execute(select(t.c.targets).where(t.c.id == dep_id).with_for_update()).first()
            if row is None:
                return []
            targets = json.loads(row[0])
            new = [d for d in devices if d not in set(targets)]
            if new:
                targets += new
                c.execute(update(t).where(t.c.id == dep_id).values(targets=json.dumps(targets), updated=time.time()))
            return list(targets)

    def acquire_lease(self, dep_id: str, owner: str, ttl: float) -> bool:
        """Take (or renew) the right to drive a deployment for ``ttl`` seconds: one compare-and-set UPDATE,
        so of several coordinators sharing this registry exactly one wins (SQLite and PostgreSQL alike)."""
        t = self.t["deployments"]
        now = time.time()
        with self._lock, self.engine.begin() as c:
            r = c.execute(update(t).where(and_(t.c.id == dep_id, or_(t.c.lease_owner == owner, t.c.lease_until < now)))
                          .values(lease_owner=owner, lease_until=now + ttl))
            return bool(r.rowcount)

    def release_lease(self, dep_id: str, owner: str) -> None:
        t = self.t["deployments"]
        with self._lock, self.engine.begin() as c:
            c.execute(update(t).where(and_(t.c.id == dep_id, t.c.lease_owner == owner)).values(lease_until=0.0))

    def add_event(self, dep_id: str, kind: str, stage: int = 0, detail: str = "", owner: str = "") -> None:
        with self._lock, self.engine.begin() as c:
            c.execute(insert(self.t["rollout_events"]).values(deployment_id=dep_id, kind=kind, stage=stage,
                                                               detail=detail, owner=owner, ts=time.time()))

    def events(self, dep_id: str) -> list[RolloutEvent]:
        t = self.t["rollout_events"]
        with self.engine.connect() as c:
            return [RolloutEvent.from_row(r) for r in c.execute(select(t).where(t.c.deployment_id == dep_id)
                                                                 .order_by(t.c.id)).mappings()]

    def next_seq(self, name: str) -> int:
        """The next value of a counter that only ever rises (shared by every coordinator on this registry).

        A new counter starts at the current time in milliseconds, so a fresh registry
        still counts above the numbers an older one handed out."""
        t = self.t["sequences"]
        while True:
            with self._lock, self.engine.begin() as c:
                if c.execute(update(t).where(t.c.name == name).values(value=t.c.value + 1)).rowcount:
                    return int(c.execute(select(t.c.value).where(t.c.name == name)).scalar_one())
            try:
                with self._lock, self.engine.begin() as c:
                    first = int(time.time() * 1000)
                    c.execute(insert(t).values(name=name, value=first))
                return first
            except IntegrityError:  # another coordinator created it at the same moment: count on from there
                continue

    # -- jobs ----------------------------------------------------------------------------------------------------
    def add_job(self, fleet: str, dep_id: str, device_id: str, action: str, stage: int, from_version: str = "",
                delivered: bool = False, desired: str = "") -> str:
        """Create the job of ``action`` for a device in a deployment; "" if it exists already.

        The id is derived from (deployment, device, action), so two coordinators that
        both try to dispatch the same job make one row: the primary key decides.
        """
        job_id = job_key(dep_id, device_id, action)
        now = time.time()
        try:
            with self._lock, self.engine.begin() as c:
                c.execute(insert(self.t["jobs"]).values(
                    job_id=job_id, deployment_id=dep_id, fleet=fleet, device_id=device_id, action=action,
                    status="QUEUED", step="", reason="", message="", version=0, stage=stage, from_version=from_version,
                    created=now, updated=now, started=0.0, delivered=now if delivered else 0.0, desired=desired))
        except IntegrityError:
            return ""
        return job_id

    def add_jobs(self, fleet: str, dep_id: str, action: str, stage: int, jobs: Sequence[NewJob]) -> set[str]:
        """Create the jobs of ``action`` for many devices of a deployment in one transaction; returns the ids of
        the jobs created (a job that exists already, made by another coordinator, is left as it is: the primary
        key decides, as in :meth:`add_job`).

        Bulk, so a stage of 10,000 devices is a few statements: one SELECT of the ids that exist, then the others in
        one ``executemany`` on SQLite or one ``COPY`` on PostgreSQL (psycopg). Should another coordinator insert one
        of them in between (the unique key refuses the bulk insert), the whole call is made again as one
        ``INSERT ... ON CONFLICT DO NOTHING RETURNING``."""
        t = self.t["jobs"]
        now = time.time()
        ids = {job_key(dep_id, j.device_id, action): j for j in jobs}  # (a device given twice: one job)
        rows = [(job_id, dep_id, fleet, j.device_id, action, "QUEUED", "", "", "", 0, stage, j.from_version, now, now,
                 0.0, now if j.delivered else 0.0, j.desired) for job_id, j in ids.items()]
        if not rows:
            return set()
        try:
            with self._lock, self.engine.begin() as c:
                have: set[str] = set()
                keys = list(ids)
                for i in range(0, len(keys), 5000):  # bounded IN lists (SQLite's limit on bound variables)
                    have.update(r[0] for r in c.execute(select(t.c.job_id).where(t.c.job_id.in_(keys[i:i + 5000]))))
                rows = [r for r in rows if r[0] not in have]
                if rows:
                    self._bulk_insert(c, t, _JOB_COLUMNS, rows)
            return {r[0] for r in rows}
        except (IntegrityError, self.engine.dialect.loaded_dbapi.IntegrityError):  # (COPY raises the driver's own)
            pass
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):  # no ON CONFLICT: one job at a time
            return {jid for j in jobs if (jid := self.add_job(fleet, dep_id, j.device_id, action, stage,
                                                               j.from_version, j.delivered, j.desired))}
        from sqlalchemy.dialects import postgresql, sqlite

        ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(t)
        stmt = ins.on_conflict_do_nothing(index_elements=["job_id"]).returning(t.c.job_id)
        with self._lock, self.engine.begin() as c:
            return {r[0] for r in c.execute(stmt, [dict(zip(_JOB_COLUMNS, r)) for r in rows])}

    def _bulk_insert(self, c: Any, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (tuples in the order of ``columns``) in one statement, through the driver itself:
        SQLAlchemy's per-row parameter handling cost more than the database (0.46 s for 10,000 job rows on SQLite,
        0.12 s through sqlite3's executemany). PostgreSQL: ``COPY FROM STDIN`` (psycopg); other drivers:
        SQLAlchemy's executemany."""
        q = self.engine.dialect.identifier_preparer
        names = ", ".join(q.quote(col) for col in columns)
        if self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg":
            cur = c.connection.dbapi_connection.cursor()
            with cur.copy(f"COPY {q.format_table(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif self.sqlite:
            c.exec_driver_sql(f"INSERT INTO {q.format_table(table)} ({names}) VALUES ({', '.join('?' * len(columns))})",
                              list(rows))
        else:
            c.execute(insert(table), [dict(zip(columns, r)) for r in rows])

    def job(self, job_id: str) -> Job | None:
        t = self.t["jobs"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(t.c.job_id == job_id)).mappings().first()
        return Job.from_row(row) if row else None

    def jobs(self, dep_id: str | None = None, device_id: str | None = None) -> list[Job]:
        t = self.t["jobs"]
        q = select(t)
        if dep_id:
            q = q.where(t.c.deployment_id == dep_id)
        if device_id:
            q = q.where(t.c.device_id == device_id)
        with self.engine.connect() as c:
            return [Job.from_row(r) for r in c.execute(q.order_by(t.c.created)).mappings()]

    def update_job(self, job_id: str, version: int, **fields: Any) -> bool:
        """Apply a device's update only if ``version`` is newer than the stored one (stale writes rejected)
        and the coordinator has not ended the job itself (TIMED_OUT is final, as in AWS IoT Jobs)."""
        t = self.t["jobs"]
        now = time.time()
        with self._lock, self.engine.begin() as c:
            r = c.execute(update(t).where(and_(t.c.job_id == job_id, t.c.version < version, t.c.status != "TIMED_OUT"))
                          .values(version=version, updated=now, **fields))
            if r.rowcount and fields.get("status", "QUEUED") != "QUEUED":
                c.execute(update(t).where(and_(t.c.job_id == job_id, t.c.started == 0.0)).values(started=now))
            return bool(r.rowcount)

    def time_out_job(self, job: Job, message: str) -> bool:
        """Set TIMED_OUT unless the device's job changed since ``job`` was read (compare-and-set on its version)."""
        t = self.t["jobs"]
        with self._lock, self.engine.begin() as c:
            r = c.execute(update(t).where(and_(t.c.job_id == job.job_id, t.c.version == job.version,
                                               t.c.status == job.status.value))
                          .values(status="TIMED_OUT", reason="timeout", message=message[:2000], updated=time.time()))
            return bool(r.rowcount)

    def latest_job(self, fleet: str, device_id: str) -> Job | None:
        """The device's newest job of any deployment (the one its retained desired state should hold)."""
        t = self.t["jobs"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(and_(t.c.fleet == fleet, t.c.device_id == device_id))
                            .order_by(t.c.created.desc(), t.c.job_id.desc()).limit(1)).mappings().first()
        return Job.from_row(row) if row else None

    def mark_delivered(self, fleet: str, device_id: str) -> None:
        """The device (re)connected: its queued jobs have reached it now (restarts their queued-timeout clock)."""
        t = self.t["jobs"]
        with self._lock, self.engine.begin() as c:
            c.execute(update(t).where(and_(t.c.fleet == fleet, t.c.device_id == device_id, t.c.status == "QUEUED"))
                      .values(delivered=time.time()))

    def force_job(self, job_id: str, **fields: Any) -> None:
        t = self.t["jobs"]
        with self._lock, self.engine.begin() as c:
            c.execute(update(t).where(t.c.job_id == job_id).values(updated=time.time(), **fields))

    # -- telemetry -------------------------------------------------------------------------------------------------
    def ingest(self, fleet: str, device_id: str, group: str, records: Sequence[Mapping[str, Any]]) -> int:
        """:meth:`ingest_many` for one batch of records given as mappings (seq, ts, kind, data)."""
        recs = [TelemetryRecord(int(r["seq"]), float(r["ts"]), str(r["kind"]), dict(r["data"])) for r in records]
        return self.ingest_many(fleet, [(device_id, group, recs)])[0]

    def ingest_many(self, fleet: str, batches: Sequence[tuple[str, str, Sequence[TelemetryRecord]]],
                    rejected: list[int] | None = None) -> list[int]:
        """Aggregate the records newer than each device's high-water mark; returns how many were new per batch.

        One transaction: the aggregates and the high-water marks move together, so a
        batch re-sent after a lost acknowledgement is never counted twice. The batches
        are summed in Python first, so the statements per call are one marks query, one
        update (or insert) per (group, version, kind) and one executemany of the marks,
        however many batches and records came in.

        Each new record is validated first (:func:`record_problem`: counts within a BIGINT,
        floats finite, names within their columns); a bad one is rejected alone (the mark moves
        past it, so a re-send is not counted again). Should the database still refuse the shared
        transaction (sums beyond a column's range), every batch is retried in its own
        transaction and one the database refuses is rejected whole: one device's batches never
        roll back another's. ``rejected``, when given, receives the rejected records per batch.
        """
        try:
            news, rej = self._ingest_tx(fleet, batches)
        except (SQLAlchemyError, OverflowError, ValueError):
            if len(batches) < 2:
                news, rej = [0] * len(batches), [len(b[2]) for b in batches]
            else:
                news, rej = [], []
                for batch in batches:  # in order: a later batch of the same device sees the earlier one's mark
                    try:
                        n, r = self._ingest_tx(fleet, [batch])
                    except (SQLAlchemyError, OverflowError, ValueError):
                        n, r = [0], [len(batch[2])]
                    news += n
                    rej += r
        if rejected is not None:
            rejected[:] = rej
        return news

    def _ingest_tx(self, fleet: str, batches: Sequence[tuple[str, str, Sequence[TelemetryRecord]]]
                   ) -> tuple[list[int], list[int]]:
        s = self._ingest_statements()
        devices = sorted({device_id for device_id, _, _ in batches})
        news: list[int] = []
        rejected: list[int] = []
        agg: dict[tuple[str, str, str], list[int]] = {}
        per_version: dict[str, dict[str, list[int]]] = {}
        alerts: list[dict[str, Any]] = []
        windows: dict[tuple[str, str, int], list[int]] = {}  # (group, version, minute) -> records, p, e, i
        hists: dict[tuple[str, str, int], list[list[int]]] = {}  # ... -> the latency histograms, summed at the end
        newest: dict[str, tuple[float, dict[str, Any], list[tuple[str, int, int, int]], list[Any]]] = {}
        now = time.time()
        lo, hi, now_minute = now - W.RETENTION, now + W.MAX_FUTURE, int(now // W.MINUTE) * W.MINUTE
        with self._lock, self.engine.begin() as c:
            if self.sqlite:  # take SQLite's write lock first, so the marks read below are still true at commit
                c.execute(s["lock"], {"b_fleet": fleet, "b_ids": devices})  # (other processes may share the file)
            # rows locked in device order, so coordinators sharing a PostgreSQL registry cannot deadlock
            marks = {dev: int(seq) for dev, seq in c.execute(s["marks"], {"b_fleet": fleet, "b_ids": devices})}
            moved: dict[str, int] = {}
            for device_id, group, records in batches:
                mark = moved.get(device_id, marks.get(device_id, 0))
                fresh = [r for r in records if r.seq > mark]
                if not fresh:
                    news.append(0)
                    rejected.append(0)
                    continue
                moved[device_id] = max(r.seq for r in fresh)
                metrics = per_version.setdefault(group, {})  # the hot path: metrics records, by version
                bad = 0
                best_ts, best = newest.get(device_id, (-math.inf, None))[0], None  # its newest metrics record
                for r in fresh:
                    data, kind = r.data, r.kind
                    versions = data.get("versions") if kind == "metrics" else None
                    if type(versions) is dict:
                        counts = _metric_counts(versions)
                        if counts is None:
                            bad += 1
                            continue
                        lats = [W.latency_counts(versions[v]) for v, _, _, _ in counts]
                        if False in lats:
                            bad += 1
                            continue
                        ts = r.ts
                        if lo <= ts <= hi:  # W.slot(ts, now), inlined (per record): the minute it was taken in,
                            minute: int | None = int(ts // W.MINUTE) * W.MINUTE
                        elif ts > hi and ts != math.inf:  # now for a clock ahead,
                            minute = now_minute
                        else:  # none for one older than the retention (or not finite)
                            minute = None
                        for (v, p, e, i), lat in zip(counts, lats):
                            a = metrics.get(v)
                            if a is None:
                                a = metrics[v] = [0, 0, 0, 0]
                            a[0] += 1
                            a[1] += p
                            a[2] += e
                            a[3] += i
                            if minute is not None:  # the minute it was taken in (windows.py)
                                slot = (group, v, minute)
                                w = windows.get(slot)
                                if w is None:
                                    w = windows[slot] = [0, 0, 0, 0]
                                w[0], w[1], w[2], w[3] = w[0] + 1, w[1] + p, w[2] + e, w[3] + i
                                if type(lat) is list:
                                    hists.setdefault(slot, []).append(lat)
                        if ts >= best_ts:  # the device's recent telemetry
                            best_ts, best = ts, (ts, data, counts, lats)
                        if not versions:
                            agg.setdefault((group, "", "metrics"), [0, 0, 0, 0])[0] += 1
                        continue
                    version = data.get("version", "")
                    version = version if type(version) is str else str(version)
                    if len(version) > MAX_NAME or "\x00" in version or "\x00" in kind:
                        bad += 1
                        continue
                    if kind == "drift":
                        try:
                            doc = json.dumps(data, allow_nan=False)
                        except (ValueError, TypeError, RecursionError):
                            bad += 1
                            continue
                        alerts.append({"fleet": fleet, "device_id": device_id, "kind": "drift",
                                       "version": version, "data": doc, "ts": float(r.ts)})
                    agg.setdefault((group, version, kind), [0, 0, 0, 0])[0] += 1
                if best is not None:
                    newest[device_id] = best
                news.append(len(fresh) - bad)
                rejected.append(bad)
            for group, by_version in per_version.items():
                for v, (n, pred, err, inv) in by_version.items():
                    a = agg.setdefault((group, str(v), "metrics"), [0, 0, 0, 0])
                    a[0], a[1], a[2], a[3] = a[0] + n, a[1] + pred, a[2] + err, a[3] + inv
            if alerts:
                c.execute(insert(self.t["alerts"]), alerts)
            self._add_windows(c, fleet, windows, hists)
            if newest:
                c.execute(s["recent"], [{"b_fleet": fleet, "b_dev": dev, "b_recent": json.dumps(W.device_summary(
                    ts, data, {v: (p, e, i, lat if type(lat) is list else None) for (v, p, e, i), lat in zip(counts, lats)}),
                    allow_nan=False)} for dev, (ts, data, counts, lats) in newest.items()])
            for (group, version, kind), (n, pred, err, inv) in agg.items():
                if max(n, pred, err, inv) > MAX_BIGINT:
                    raise OverflowError("telemetry sums exceed a BIGINT")
                key = {"b_fleet": fleet, "b_group": group, "b_version": version, "b_kind": kind}
                res = c.execute(s["add"], {**key, "b_n": n, "b_pred": pred, "b_err": err, "b_inv": inv})
                if not res.rowcount:
                    c.execute(insert(self.t["telemetry"]).values(
                        fleet=fleet, group_name=group, version=version, kind=kind, records=n, predictions=pred,
                        errors=err, invalid=inv))
            if moved:
                c.execute(s["mark"], [{"b_fleet": fleet, "b_dev": dev, "b_seq": seq, "b_seen": now}
                                      for dev, seq in moved.items()])
        return news, rejected

    def _ingest_statements(self) -> dict[str, Any]:
        """The ingest statements, built once with bound parameters (SQLAlchemy then reuses their compiled form)."""
        s: dict[str, Any] | None = getattr(self, "_ingest_stmts", None)
        if s is None:
            d, tt = self.t["devices"], self.t["telemetry"]
            s = {
                "marks": select(d.c.device_id, d.c.telemetry_seq)
                .where(and_(d.c.fleet == bindparam("b_fleet"), d.c.device_id.in_(bindparam("b_ids", expanding=True))))
                .order_by(d.c.device_id).with_for_update(),
                "add": update(tt).where(and_(tt.c.fleet == bindparam("b_fleet"), tt.c.group_name == bindparam("b_group"),
                                             tt.c.version == bindparam("b_version"), tt.c.kind == bindparam("b_kind")))
                .values(records=tt.c.records + bindparam("b_n"), predictions=tt.c.predictions + bindparam("b_pred"),
                        errors=tt.c.errors + bindparam("b_err"), invalid=tt.c.invalid + bindparam("b_inv")),
                "lock": update(d).where(and_(d.c.fleet == bindparam("b_fleet"),
                                             d.c.device_id.in_(bindparam("b_ids", expanding=True))))
                .values(telemetry_seq=d.c.telemetry_seq),
                "mark": update(d).where(and_(d.c.fleet == bindparam("b_fleet"), d.c.device_id == bindparam("b_dev")))
                .values(telemetry_seq=bindparam("b_seq"), last_seen=bindparam("b_seen")),
                "recent": update(d).where(and_(d.c.fleet == bindparam("b_fleet"), d.c.device_id == bindparam("b_dev")))
                .values(recent=bindparam("b_recent")),
            }
            self._ingest_stmts = s
        return s

    def _add_windows(self, c: Any, fleet: str, windows: dict[tuple[str, str, int], list[int]],
                     hists: dict[tuple[str, str, int], list[list[int]]]) -> None:
        """Add the per-minute sums of an ingest (counts, and the histograms summed bucket by bucket) to
        ``telemetry_windows`` (in its transaction)."""
        if not windows:
            return
        tw = self.t["telemetry_windows"]
        stmt = getattr(self, "_window_add", None)
        if stmt is None:
            cols = ["records", "predictions", "errors", "invalid", *[f"l{i}" for i in range(W.NB)]]
            stmt = self._window_add = (
                update(tw).where(and_(tw.c.fleet == bindparam("b_fleet"), tw.c.group_name == bindparam("b_group"),
                                      tw.c.version == bindparam("b_version"), tw.c.minute == bindparam("b_minute")))
                .values(**{col: tw.c[col] + bindparam(f"b_{col}") for col in cols}), cols)
        add, cols = stmt
        now = time.time()
        if now >= getattr(self, "_windows_pruned", 0.0) + 600:  # the minutes past the retention, every 10 minutes
            self._windows_pruned = now
            c.execute(delete(tw).where(tw.c.minute < int(now - W.RETENTION - W.MINUTE)))
        none = [0] * W.NB
        for (group, version, minute), counts in windows.items():
            found = hists.get((group, version, minute))
            sums = counts + ([sum(col) for col in zip(*found)] if found else none)
            if max(sums) > MAX_BIGINT:
                raise OverflowError("telemetry sums exceed a BIGINT")
            values = dict(zip(cols, sums))
            key = {"b_fleet": fleet, "b_group": group, "b_version": version, "b_minute": minute}
            if not c.execute(add, {**key, **{f"b_{k}": v for k, v in values.items()}}).rowcount:
                c.execute(insert(tw).values(fleet=fleet, group_name=group, version=version, minute=minute, **values))

    def telemetry_window(self, fleet: str, since: int, group: str | None = None, version: str | None = None
                         ) -> list[TelemetryWindow]:
        """The telemetry of each (group, version) summed over the minutes from ``since`` (epoch seconds) on."""
        tw = self.t["telemetry_windows"]
        sums = [func.sum(tw.c[col]) for col in ("records", "predictions", "errors", "invalid",
                                                *[f"l{i}" for i in range(W.NB)])]
        q = select(tw.c.group_name, tw.c.version, *sums).where(and_(tw.c.fleet == fleet, tw.c.minute >= since))
        if group:
            q = q.where(tw.c.group_name == group)
        if version:
            q = q.where(tw.c.version == version)
        q = q.group_by(tw.c.group_name, tw.c.version).order_by(tw.c.group_name, tw.c.version)
        with self.engine.connect() as c:
            return [TelemetryWindow(r[0], r[1], int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), int(r[5] or 0),
                                    [int(n or 0) for n in r[6:]]) for r in c.execute(q)]

    def prune_windows(self, before: float) -> int:
        """Drop the minutes older than ``before`` (epoch seconds); returns how many went."""
        tw = self.t["telemetry_windows"]
        with self._lock, self.engine.begin() as c:
            return int(c.execute(delete(tw).where(tw.c.minute < int(before))).rowcount or 0)

    def telemetry(self, fleet: str, group: str | None = None, version: str | None = None) -> list[TelemetryRow]:
        tt = self.t["telemetry"]
        q = select(tt).where(tt.c.fleet == fleet)
        if group:
            q = q.where(tt.c.group_name == group)
        if version:
            q = q.where(tt.c.version == version)
        with self.engine.connect() as c:
            return [TelemetryRow.from_row(r)
                    for r in c.execute(q.order_by(tt.c.group_name, tt.c.version, tt.c.kind)).mappings()]

    def put_quality(self, fleet: str, records: Sequence[tuple[str, str, float, QualityRecord]]) -> int:
        """Keep each ``(device, group, ts, record)``'s quality of its version, the newest record of a (device,
        version) winning (a batch re-sent, or older records after newer ones, change nothing); a device keeps its
        :data:`MAX_QUALITY_VERSIONS` most recent versions. The records are validated (wire ``QualityRecord``).
        Returns how many rows changed."""
        t = self.t["device_quality"]
        newest: dict[tuple[str, str], tuple[str, float, QualityRecord]] = {}
        for device, group, ts, rec in records:
            key = (device, rec.version)
            if key not in newest or ts >= newest[key][1]:
                newest[key] = (group, ts, rec)
        if not newest:
            return 0
        changed = 0
        with self._lock, self.engine.begin() as c:
            for (device, version), (group, ts, rec) in sorted(newest.items()):
                values = {"group_name": group, "ts": ts, "reference": rec.reference, "verdict": rec.verdict,
                          "signal": rec.signal, "head": rec.head, **{k: getattr(rec, k) for k in QUALITY_COUNTS + QUALITY_FLOATS}}
                where = and_(t.c.fleet == fleet, t.c.device_id == device, t.c.version == version)
                had = c.execute(select(t.c.ts).where(where)).scalar()
                if had is None:
                    c.execute(insert(t).values(fleet=fleet, device_id=device, version=version, **values))
                elif ts >= had:
                    c.execute(update(t).where(where).values(**values))
                else:
                    continue
                changed += 1
            for device in sorted({d for d, _ in newest}):
                extra = c.execute(select(t.c.version).where(and_(t.c.fleet == fleet, t.c.device_id == device))
                                  .order_by(t.c.ts.desc(), t.c.version).offset(MAX_QUALITY_VERSIONS)).scalars().all()
                if extra:
                    c.execute(delete(t).where(and_(t.c.fleet == fleet, t.c.device_id == device,
                                                   t.c.version.in_(list(extra)))))
        return changed

    def quality(self, fleet: str, device_id: str | None = None, group: str | None = None, version: str | None = None,
                limit: int = 1000) -> list[DeviceQuality]:
        """The devices' quality per version (:class:`DeviceQuality`), by device and version, at most ``limit``."""
        t = self.t["device_quality"]
        q = select(t).where(t.c.fleet == fleet)
        if device_id:
            q = q.where(t.c.device_id == device_id)
        if group:
            q = q.where(t.c.group_name == group)
        if version:
            q = q.where(t.c.version == version)
        with self.engine.connect() as c:
            return [DeviceQuality.from_row(r) for r in
                    c.execute(q.order_by(t.c.device_id, t.c.version).limit(limit)).mappings()]

    def alerts(self, fleet: str, limit: int = 100, device_id: str | None = None) -> list[Alert]:
        """The latest device alerts (newest first), of one device with ``device_id``."""
        al = self.t["alerts"]
        q = select(al).where(al.c.fleet == fleet)
        if device_id is not None:
            q = q.where(al.c.device_id == device_id)
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(al.c.id.desc()).limit(limit)).mappings()
            return [Alert.from_row(r) for r in rows]

    # -- what alerts are made of (coordinator/alerts.py) -------------------------------------------------------------
    def alert_cursors(self, fleet: str) -> tuple[int, int]:
        """The newest rollout event id and device alert id of the fleet (0: none): where alerting starts."""
        ev, dep, al = self.t["rollout_events"], self.t["deployments"], self.t["alerts"]
        with self.engine.connect() as c:
            last_event = c.execute(select(func.max(ev.c.id)).select_from(ev.join(dep, ev.c.deployment_id == dep.c.id))
                                   .where(dep.c.fleet == fleet)).scalar()
            last_alert = c.execute(select(func.max(al.c.id)).where(al.c.fleet == fleet)).scalar()
        return int(last_event or 0), int(last_alert or 0)

    def rollout_events_since(self, fleet: str, after: int, kinds: Iterable[str], limit: int = 1000
                             ) -> list[RolloutEvent]:
        """The fleet's rollout events of ``kinds`` with an id above ``after``, oldest first."""
        ev, dep = self.t["rollout_events"], self.t["deployments"]
        q = (select(ev).select_from(ev.join(dep, ev.c.deployment_id == dep.c.id))
             .where(and_(dep.c.fleet == fleet, ev.c.id > after, ev.c.kind.in_(list(kinds))))
             .order_by(ev.c.id).limit(limit))
        with self.engine.connect() as c:
            return [RolloutEvent.from_row(r) for r in c.execute(q).mappings()]

    def alerts_since(self, fleet: str, after: int, limit: int = 1000) -> list[Alert]:
        """The fleet's device alerts (drift) with an id above ``after``, oldest first."""
        al = self.t["alerts"]
        with self.engine.connect() as c:
            rows = c.execute(select(al).where(and_(al.c.fleet == fleet, al.c.id > after)).order_by(al.c.id)
                             .limit(limit)).mappings()
            return [Alert.from_row(r) for r in rows]

    def failed_runs_since(self, fleet: str, since: float, limit: int = 1000) -> list[FailedRun]:
        """The fleet's federated runs whose record says failed and changed at ``since`` or later."""
        t = self.t["fed_runs"]
        error = t.c["error"] if "error" in t.c else None
        cols = [t.c.id, t.c.group_name, t.c.status, t.c.updated] + ([error] if error is not None else [])
        q = (select(*cols).where(and_(t.c.fleet == fleet, t.c.updated >= since,
                                      or_(t.c.status == "failed", t.c.status.like("failed:%"))))
             .order_by(t.c.updated).limit(limit))
        with self.engine.connect() as c:
            return [FailedRun(r[0], r[1], r[2], r[4] if len(r) > 4 else "", float(r[3])) for r in c.execute(q)]

    def mark_alert(self, fleet: str, key: str, now: float) -> bool:
        """Claim the alert ``key`` (once per registry: coordinators sharing it send each alert once); False if it
        was claimed already."""
        m = self.t["alert_marks"]
        try:
            with self._lock, self.engine.begin() as c:
                if c.execute(select(m.c.key).where(and_(m.c.fleet == fleet, m.c.key == key[:255]))).first():
                    return False
                c.execute(insert(m).values(fleet=fleet, key=key[:255], ts=now))
        except IntegrityError:  # another coordinator claimed it at the same moment
            return False
        return True

    def prune_alert_marks(self, before: float) -> int:
        m = self.t["alert_marks"]
        with self._lock, self.engine.begin() as c:
            return int(c.execute(delete(m).where(m.c.ts < before)).rowcount or 0)

    # -- federated runs ----------------------------------------------------------------------------------------------
    def create_fed_run(self, fleet: str, group: str, strategy: str, rounds: int, *, trigger: str = "manual",
                       reason: str = "", status: RunStatus | str = RunStatus.STARTING,
                       config: dict[str, Any] | None = None) -> str:
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        state = RunStatus(status)
        with self._lock, self.engine.begin() as c:
            c.execute(insert(self.t["fed_runs"]).values(
                id=run_id, fleet=fleet, group_name=group, status=state.value, strategy=strategy, rounds=rounds,
                trigger=trigger, reason=reason, flower_run_id="", config=json.dumps(config or {}),
                result="{}", created=now, updated=now, error="", stop_requested=0.0))
            self._fed_event(c, run_id, now, "status", state.value, f"{trigger} run: {reason}" if reason else f"{trigger} run")
        return run_id

    def _fed_event(self, c: Any, run_id: str, ts: float, kind: str, status: str, message: str) -> None:
        c.execute(insert(self.t["fed_run_events"]).values(run_id=run_id, ts=ts, kind=kind, status=status,
                                                          message=message[:4000]))

    def set_fed_run(self, run_id: str, *, result: dict[str, Any] | None = None, status: RunStatus | str | None = None,
                    error: str | None = None, **fields: Any) -> bool:
        """Update a run; ``result`` is merged into the stored result document. A new ``status`` (with its ``error``)
        is recorded as an event, unless the run has ended with another status: an end is kept
        (:meth:`RunStatus.may_become`), and then neither is written. False when there is no such run."""
        t = self.t["fed_runs"]
        with self._lock, self.engine.begin() as c:
            row = c.execute(select(t.c.result, t.c.status).where(t.c.id == run_id)).first()
            if row is None:
                return False
            now = time.time()
            if result is not None:
                fields["result"] = json.dumps({**json.loads(row[0] or "{}"), **result}, default=float)
            if status is not None:
                current, _ = RunStatus.parse(row[1])
                new, legacy_error = RunStatus.parse(str(status))
                if current.may_become(new):
                    fields["status"] = new.value
                    fields["error"] = (error if error is not None else legacy_error)[:4000]
                    if new is not current:
                        self._fed_event(c, run_id, now, "status", new.value, fields["error"])
            r = c.execute(update(t).where(t.c.id == run_id).values(updated=now, **fields))
            return bool(r.rowcount)

    def request_fed_stop(self, run_id: str, who: str) -> FedRun | None:
        """Ask a run to stop (``who``: the token's name, for its events): its ``stop_requested`` is set, once, while
        it is active; the run's process polls it, a coordinator supervising the process stops it. The run."""
        t = self.t["fed_runs"]
        with self._lock, self.engine.begin() as c:
            row = c.execute(select(t.c.status, t.c.stop_requested).where(t.c.id == run_id)).first()
            if row is None:
                return None
            if RunStatus.parse(row[0])[0].active and not row[1]:
                now = time.time()
                c.execute(update(t).where(t.c.id == run_id).values(stop_requested=now, updated=now))
                self._fed_event(c, run_id, now, "stop", "", f"stop requested by {who}")
        return self.fed_run(run_id)

    def fed_run_events(self, run_id: str, limit: int = 1000) -> list[FedRunEvent]:
        """A run's events, oldest first (its latest ``limit``)."""
        t = self.t["fed_run_events"]
        with self.engine.connect() as c:
            rows = c.execute(select(t).where(t.c.run_id == run_id).order_by(t.c.id.desc()).limit(limit)).mappings()
            return [FedRunEvent.from_row(r) for r in reversed(list(rows))]

    def put_fed_round(self, run_id: str, rnd: int, **values: Any) -> None:
        """Store (or replace) the metrics of round ``rnd`` of a run."""
        t = self.t["fed_rounds"]
        with self._lock, self.engine.begin() as c:
            c.execute(delete(t).where(and_(t.c.run_id == run_id, t.c.round == rnd)))
            c.execute(insert(t).values(run_id=run_id, round=rnd, ts=time.time(), **values))

    def fed_run(self, run_id: str) -> FedRun | None:
        t, rt = self.t["fed_runs"], self.t["fed_rounds"]
        with self.engine.connect() as c:
            row = c.execute(select(t).where(t.c.id == run_id)).mappings().first()
            if row is None:
                return None
            rounds = c.execute(select(rt).where(rt.c.run_id == run_id).order_by(rt.c.round)).mappings()
            return FedRun.from_row(row, [FedRound.from_row(r) for r in rounds])

    def fed_runs(self, fleet: str, group: str | None = None, limit: int = 20) -> list[FedRun]:
        """The latest runs (newest first), each with its rounds."""
        t = self.t["fed_runs"]
        q = select(t.c.id).where(t.c.fleet == fleet)
        if group:
            q = q.where(t.c.group_name == group)
        with self.engine.connect() as c:
            ids = [r[0] for r in c.execute(q.order_by(t.c.created.desc()).limit(limit))]
        return [r for r in (self.fed_run(i) for i in ids) if r is not None]

    def set_retrain(self, fleet: str, group: str, on_drift: bool, policy: dict[str, Any]) -> None:
        t = self.t["retrain"]
        with self._lock, self.engine.begin() as c:
            c.execute(delete(t).where(and_(t.c.fleet == fleet, t.c.group_name == group)))
            c.execute(insert(t).values(fleet=fleet, group_name=group, on_drift=on_drift, policy=json.dumps(policy),
                                       updated=time.time()))

    def retrain(self, fleet: str, group: str | None = None) -> list[Retrain]:
        """Auto-retraining settings per group."""
        t = self.t["retrain"]
        q = select(t).where(t.c.fleet == fleet)
        if group:
            q = q.where(t.c.group_name == group)
        with self.engine.connect() as c:
            return [Retrain.from_row(r) for r in c.execute(q.order_by(t.c.group_name)).mappings()]

    # -- counts (Prometheus /metrics reads them at every scrape: one GROUP BY each) ---------------------------------
    def device_tallies(self, fleet: str) -> list[DeviceTally]:
        """The fleet's devices counted by group, active version and online."""
        d = self.t["devices"]
        q = (select(d.c.group_name, d.c.active_version, d.c.online, func.count()).where(d.c.fleet == fleet)
             .group_by(d.c.group_name, d.c.active_version, d.c.online)
             .order_by(d.c.group_name, d.c.active_version, d.c.online))
        with self.engine.connect() as c:
            return [DeviceTally(g, v, bool(o), int(n)) for g, v, o, n in c.execute(q)]

    def job_tallies(self, fleet: str) -> list[JobTally]:
        """The fleet's jobs counted by deployment, action and status."""
        t = self.t["jobs"]
        q = (select(t.c.deployment_id, t.c.action, t.c.status, func.count()).where(t.c.fleet == fleet)
             .group_by(t.c.deployment_id, t.c.action, t.c.status)
             .order_by(t.c.deployment_id, t.c.action, t.c.status))
        with self.engine.connect() as c:
            return [JobTally(dep, a, st, int(n)) for dep, a, st, n in c.execute(q)]

    def alert_tallies(self, fleet: str) -> list[AlertTally]:
        """The fleet's alerts counted by kind and model version."""
        al = self.t["alerts"]
        q = (select(al.c.kind, al.c.version, func.count()).where(al.c.fleet == fleet)
             .group_by(al.c.kind, al.c.version).order_by(al.c.kind, al.c.version))
        with self.engine.connect() as c:
            return [AlertTally(k, v, int(n)) for k, v, n in c.execute(q)]

    def fed_run_tallies(self, fleet: str) -> list[FedRunTally]:
        """The fleet's federated runs counted by group and status, with the rounds they recorded."""
        t, rt = self.t["fed_runs"], self.t["fed_rounds"]
        q = (select(t.c.group_name, t.c.status, func.count(func.distinct(t.c.id)), func.count(rt.c.round))
             .select_from(t.outerjoin(rt, rt.c.run_id == t.c.id)).where(t.c.fleet == fleet)
             .group_by(t.c.group_name, t.c.status).order_by(t.c.group_name, t.c.status))
        with self.engine.connect() as c:
            return [FedRunTally(g, st, int(runs), int(rounds)) for g, st, runs, rounds in c.execute(q)]

    # -- API tokens and the audit log ------------------------------------------------------------------------------
    def create_token(self, fleet: str, name: str, scope: str, expires_in: float | None = None) -> str:
        """A new random token of ``scope`` (read, deploy, admin) named ``name``, valid for ``expires_in`` seconds
        (None: until revoked; at most a year); only its sha256 is stored, the token itself is returned once."""
        import re
        import secrets

        if scope not in SCOPES:
            raise ConfigError(f"unknown token scope {scope!r}: one of {', '.join(SCOPES)}")
        if not re.fullmatch(TOKEN_NAME, name) or name == BOOTSTRAP:
            raise ConfigError(f"token name {name[:64]!r}: 1-64 letters, digits, '_', '.' or '-' (not {BOOTSTRAP!r})")
        if expires_in is not None and not 1 <= expires_in <= MAX_TOKEN_TTL:  # NaN too
            raise ConfigError(f"a token's lifetime must be within 1 s and {MAX_TOKEN_TTL / 86400:g} days")
        now = time.time()
        token = "eft_" + secrets.token_urlsafe(32)
        t = self.t["tokens"]
        try:
            with self._lock, self.engine.begin() as c:
                if c.execute(select(t.c.name).where(and_(t.c.fleet == fleet, t.c.name == name))).first() is not None:
                    raise ConfigError(f"a token named {name!r} already exists")
                c.execute(insert(t).values(fleet=fleet, name=name, scope=scope, sha256=_token_hash(token),
                                           created=now, expires=now + expires_in if expires_in else 0.0))
        except IntegrityError:  # created concurrently by another coordinator
            raise ConfigError(f"a token named {name!r} already exists") from None
        return token

    def check_token(self, fleet: str, token: str) -> Principal | None:
        """Who (name, scope) a valid token of the fleet, else None (looked up by its hash, compared in
        constant time; an expired token is not valid)."""
        import hmac

        digest = _token_hash(token)
        t = self.t["tokens"]
        with self.engine.connect() as c:
            row = c.execute(select(t.c.name, t.c.scope, t.c.sha256, t.c.expires).where(
                and_(t.c.fleet == fleet, t.c.sha256 == digest))).first()
        if row is None or not hmac.compare_digest(row[2].encode(), digest.encode()):
            return None
        if row[3] and row[3] <= time.time():
            return None
        return Principal(row[0], row[1])

    def tokens(self, fleet: str) -> list[Token]:
        """The fleet's tokens: name, scope, created, expires (0: never) and whether it has expired (never the token
        or its hash)."""
        t = self.t["tokens"]
        now = time.time()
        with self.engine.connect() as c:
            rows = c.execute(select(t.c.name, t.c.scope, t.c.created, t.c.expires).where(t.c.fleet == fleet)
                             .order_by(t.c.name))
            return [Token(r.name, r.scope, float(r.created), float(r.expires), bool(r.expires) and r.expires <= now)
                    for r in rows]

    def revoke_token(self, fleet: str, name: str) -> bool:
        t = self.t["tokens"]
        with self._lock, self.engine.begin() as c:
            return bool(c.execute(delete(t).where(and_(t.c.fleet == fleet, t.c.name == name))).rowcount)

    def add_audit(self, fleet: str, who: str, method: str, path: str, summary: str, status: int,
                  client: str = "") -> None:
        with self._lock, self.engine.begin() as c:
            c.execute(insert(self.t["audit"]).values(
                fleet=fleet, ts=time.time(), who=who[:128], method=method[:16], path=path[:2000],
                summary=summary[:2000], status=int(status), client=client[:128]))

    def auth_failed(self, fleet: str, client: str, now: float, *, max_failures: int, window: float, lockout: float,
                    max_clients: int = 10_000) -> float:
        """Count a failed authentication of ``client`` at ``now`` (wall-clock seconds); returns the end of its lockout
        (``now + lockout`` once ``max_failures`` fell within ``window`` seconds) or 0.0. Every coordinator of the
        registry counts into the same row, so a client is locked out by all of them, across restarts.

        The row is locked by an UPDATE before it is read (SQLite: the write lock; PostgreSQL: the row), so
        concurrent coordinators never lose a count. A new row first prunes rows that hold nothing (no failure
        within ``window``, no lockout running) and then the oldest beyond ``max_clients`` (addresses are the
        client's choice)."""
        f = self.t["auth_failures"]
        client = client[:128]
        key = and_(f.c.fleet == fleet, f.c.client == client)
        for attempt in range(3):
            try:
                with self._lock, self.engine.begin() as c:
                    if not c.execute(update(f).where(key).values(updated=now)).rowcount:
                        c.execute(delete(f).where(and_(f.c.fleet == fleet, f.c.updated < now - window,
                                                       f.c.locked_until < now)))
                        n = c.execute(select(func.count()).select_from(f).where(f.c.fleet == fleet)).scalar() or 0
                        if n >= max_clients:
                            oldest = select(f.c.client).where(f.c.fleet == fleet).order_by(f.c.updated) \
                                .limit(n - max_clients + 1)
                            c.execute(delete(f).where(and_(f.c.fleet == fleet, f.c.client.in_(
                                [r[0] for r in c.execute(oldest)]))))
                        c.execute(insert(f).values(fleet=fleet, client=client, times="[]", locked_until=0.0,
                                                   updated=now))
                    row = c.execute(select(f.c.times, f.c.locked_until).where(key)).first()
                    times = [t for t in json.loads(row[0] if row else "[]") if t > now - window] + [now]
                    until = float(row[1]) if row else 0.0
                    if len(times) >= max_failures:
                        until, times = now + lockout, []
                    c.execute(update(f).where(key).values(times=json.dumps(times[-max_failures:]),
                                                          locked_until=until, updated=now))
                    return until if until > now else 0.0
            except IntegrityError:  # another coordinator inserted the row first: count into it
                if attempt == 2:
                    raise
        return 0.0

    def auth_locked_until(self, fleet: str, client: str) -> float:
        """The end of ``client``'s lockout (wall-clock seconds; 0.0: none recorded)."""
        f = self.t["auth_failures"]
        with self.engine.connect() as c:
            row = c.execute(select(f.c.locked_until).where(and_(f.c.fleet == fleet, f.c.client == client[:128]))
                            ).first()
        return float(row[0]) if row else 0.0

    def audit(self, fleet: str, limit: int = 100, since: float = 0.0) -> list[AuditEntry]:
        """The latest audited calls, newest first."""
        a = self.t["audit"]
        q = select(a).where(and_(a.c.fleet == fleet, a.c.ts >= since)).order_by(a.c.id.desc()).limit(limit)
        with self.engine.connect() as c:
            return [AuditEntry.from_row(r) for r in c.execute(q).mappings()]


SCOPES = ("read", "deploy", "admin")  # each includes the ones before it
BOOTSTRAP = "bootstrap"  # the name the coordinator's own admin token (cloud serve's) is audited under
TOKEN_NAME = r"[A-Za-z0-9_.-]{1,64}"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _private_sqlite_file(url: str) -> None:
    """The registry holds the fleet's bundles and state: its SQLite file is the owner's alone (0600), made so
    before SQLite creates it (its -wal and -shm files take the database file's mode)."""
    import os

    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot create the registry file {path}: {exc}") from None


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


class NewJob(NamedTuple):
    """A job to create with :meth:`Registry.add_jobs` (its id is :func:`job_key` of deployment, device, action)."""

    device_id: str
    from_version: str = ""
    delivered: bool = False  # the device is online: the job reached it now (0.0: not yet)
    desired: str = ""  # the Desired message, kept to be published again


_JOB_COLUMNS = ("job_id", "deployment_id", "fleet", "device_id", "action", "status", "step", "reason", "message",
                "version", "stage", "from_version", "created", "updated", "started", "delivered", "desired")


def job_key(dep_id: str, device_id: str, action: str) -> str:
    """The id of a deployment's job of ``action`` for a device (one per triple)."""
    return hashlib.sha256(f"{dep_id}\0{device_id}\0{action}".encode()).hexdigest()[:16]


MAX_BIGINT = 2**63 - 1  # SQLite INTEGER and PostgreSQL BIGINT
MAX_NAME = 128  # version and group columns


def _metric_counts(versions: dict[str, Any]) -> list[tuple[str, int, int, int]] | None:
    """The (version, predictions, errors, invalid_inputs) of a metrics record, or None if any is out of bounds:
    counts are absent, null, or integers (or finite floats, truncated) within 0..BIGINT; version names fit their column."""
    out = []
    for v, st in versions.items():  # JSON object keys: always str
        if type(st) is not dict:
            continue
        if len(v) > MAX_NAME or "\x00" in v:
            return None
        p, e, i = st.get("predictions", 0), st.get("errors", 0), st.get("invalid_inputs", 0)
        if not (type(p) is int and 0 <= p <= MAX_BIGINT):
            p = _count(p)
        if not (type(e) is int and 0 <= e <= MAX_BIGINT):
            e = _count(e)
        if not (type(i) is int and 0 <= i <= MAX_BIGINT):
            i = _count(i)
        if p < 0 or e < 0 or i < 0:
            return None
        out.append((v, p, e, i))
    return out


def _count(v: Any) -> int:
    """A bounded count (absent or null: 0), or -1 for a value out of bounds or of the wrong type."""
    if v is None:
        return 0
    if type(v) is float and math.isfinite(v) and 0 <= v <= MAX_BIGINT:
        return int(v)
    return -1

