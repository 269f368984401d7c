"""The registry's rows, typed: one frozen dataclass per table (JSON columns decoded), as ``Registry`` returns them.

Code reads fields (``dep.stage``, ``job.status``); the HTTP API turns a row into its JSON with :meth:`Row.to_dict`,
whose keys and their order are the API's (``group`` for the ``group_name`` column of devices, deployments and
federated runs, as before). A row is a snapshot: change the registry (``set_device``, ``force_job``, ...) and read
it again, or ``dataclasses.replace`` it for a local copy.

A job's ``status`` is the shared :class:`edgefleet.jobstate.JobState` (a ``str`` enum: it compares equal to its wire
string, and ``to_dict`` gives that string); a federated run's is :class:`RunStatus`, the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, Mapping, Sequence

from edgefleet.jobstate import JobState


def _plain(v: Any) -> Any:
    if isinstance(v, Row):
        return v.to_dict()
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _json(text: str | None, empty: str) -> Any:
    return json.loads(text or empty)


class Row:
    """A registry row: its fields in the order of the API's JSON."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The row as the HTTP API answers it (a new dict; lists and documents copied)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Inventory(Row):
    """What a device reported it is in its latest birth (``wire.protocol.Inventory``, bounded there), and when
    (``reported``, the coordinator's wall clock; 0.0: never). Empty or zero fields were not reported."""

    os: str = ""
    os_release: str = ""
    arch: str = ""
    python: str = ""
    free_disk_bytes: int = 0
    total_disk_bytes: int = 0
    reported: float = 0.0

    @classmethod
    def from_json(cls, text: str | None) -> Inventory:
        doc = _json(text, "{}")
        if not isinstance(doc, dict):
            return cls()
        return cls(**{f.name: doc[f.name] for f in fields(cls)
                      if f.name in doc and type(doc[f.name]) is type(getattr(_NO_INVENTORY, f.name))})


_NO_INVENTORY = Inventory()


@dataclass(frozen=True, slots=True)
class Device(Row):
    """A device: its operator-assigned ``group`` and ``tags``, what it claims (``claimed_tags``), its liveness
    (``online``, ``session`` of its latest birth, ``first_seen``/``last_seen`` wall-clock seconds), what it runs
    and the high-water mark of its telemetry."""

    fleet: str
    device_id: str
    tags: list[str]
    online: bool
    session: int
    first_seen: float
    last_seen: float
    active_version: str
    archive_sha256: str
    agent_version: str
    telemetry_seq: int
    claimed_tags: list[str]
    group: str
    inventory: Inventory
    recent: dict[str, Any]  # its newest metrics record, summarized (``windows.device_summary``); {}: none yet

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Device:
        return cls(fleet=r["fleet"], device_id=r["device_id"], tags=_json(r["tags"], "[]"), online=bool(r["online"]),
                   session=int(r["session"]), first_seen=float(r["first_seen"]), last_seen=float(r["last_seen"]),
                   active_version=r["active_version"], archive_sha256=r["archive_sha256"],
                   agent_version=r["agent_version"], telemetry_seq=int(r["telemetry_seq"]),
                   claimed_tags=_json(r["claimed_tags"], "[]"), group=r["group_name"],
                   inventory=Inventory.from_json(r.get("inventory")), recent=_json(r.get("recent"), "{}"))


@dataclass(frozen=True, slots=True)
class Decommissioned(Row):
    """A device the operator decommissioned (``DELETE /v1/devices/{id}``): its messages are refused from then on,
    like those of a device outside the allow-list, until the operator assigns it a group again."""

    device_id: str
    group: str
    ts: float
    who: str

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Decommissioned:
        return cls(device_id=r["device_id"], group=r["group_name"], ts=float(r["ts"]), who=r["who"])


@dataclass(frozen=True, slots=True)
class Artifact(Row):
    """A bundle archive (``data``) registered for deployment, by its sha256 (``file_id``)."""

    file_id: str
    name: str
    version: str
    size: int
    data: bytes
    created: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Artifact:
        return cls(file_id=r["file_id"], name=r["name"], version=r["version"], size=int(r["size"]),
                   data=bytes(r["data"]), created=float(r["created"]))


@dataclass(frozen=True, slots=True)
class ArtifactUse(Row):
    """A deployment that rolled an artifact out: its id, group, tags, state and when it was created."""

    id: str
    group: str
    tags: list[str]
    state: str
    created: float


@dataclass(frozen=True, slots=True)
class ArtifactInfo(Row):
    """An artifact as listed (never its bytes): ``sha256`` (its file id), model ``name`` and ``version``, ``size``,
    when it was stored, the ``lineage`` of its manifest and the deployments that used it (oldest first)."""

    sha256: str
    name: str
    version: str
    size: int
    created: float
    lineage: dict[str, Any]
    deployments: list[ArtifactUse]


@dataclass(frozen=True, slots=True)
class Delta(Row):
    """The delta from one artifact to another; ``file_id`` "" (and ``data`` None) when no delta is worth sending."""

    base_id: str
    target_id: str
    file_id: str
    size: int
    data: bytes | None

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Delta:
        data = r["data"]
        return cls(base_id=r["base_id"], target_id=r["target_id"], file_id=r["file_id"], size=int(r["size"]),
                   data=None if data is None else bytes(data))


class DeploymentState(StrEnum):
    """Where a staged rollout is: ``running`` (stages being dispatched), ``paused`` (by the operator), then one of
    the outcomes: ``halted`` (its failure rate went over ``max_failure``), ``completed`` (every stage done; it
    still dispatches to devices that join its group later), ``rolled_back`` or ``canceled`` (by the operator)."""

    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    CANCELED = "canceled"

    @property
    def live(self) -> bool:
        """Still dispatching stages (running) or waiting to (paused)."""
        return self in (DeploymentState.RUNNING, DeploymentState.PAUSED)


@dataclass(frozen=True, slots=True)
class Deployment(Row):
    """A staged rollout of artifact ``artifact_id`` (model ``name`` ``version``) to ``group`` ("": every group;
    only its devices the operator gave every one of ``tags``, and with ``devices`` only those): its plan
    (``canary``, ``waves``, ``max_failure``, ``rate`` devices a minute at most (0: no limit), ``min_finished`` jobs
    ended before the failure rate is judged), ``state`` (running, paused, halted, completed, rolled_back, canceled)
    and ``stage``, the ``targets`` (``planned`` of them at creation), the job timeout and the lease of the
    coordinator ticking it."""

    id: str
    fleet: str
    artifact_id: str
    name: str
    version: str
    canary: float
    waves: list[float]
    max_failure: float
    state: DeploymentState
    stage: int
    reason: str
    targets: list[str]
    created: float
    updated: float
    job_timeout: float
    planned: int
    lease_owner: str
    lease_until: float
    tags: list[str]
    group: str
    rate: int
    min_finished: int
    devices: list[str]
    quality: dict[str, float | int | str]  # the quality policy sent with its jobs (wire QualityPolicy's options)

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Deployment:
        return cls(id=r["id"], fleet=r["fleet"], artifact_id=r["artifact_id"], name=r["name"], version=r["version"],
                   canary=float(r["canary"]), waves=_json(r["waves"], "[]"), max_failure=float(r["max_failure"]),
                   state=DeploymentState(r["state"]), stage=int(r["stage"]), reason=r["reason"],
                   targets=_json(r["targets"], "[]"),
                   created=float(r["created"]), updated=float(r["updated"]), job_timeout=float(r["job_timeout"]),
                   planned=int(r["planned"]), lease_owner=r["lease_owner"], lease_until=float(r["lease_until"]),
                   tags=_json(r["tags"], "[]"), group=r["group_name"], rate=int(r["rate"]),
                   min_finished=int(r["min_finished"]), devices=_json(r["devices"], "[]"),
                   quality=_json(r.get("quality"), "{}"))


@dataclass(frozen=True, slots=True)
class DeploymentHeads:
    """What a rollout tick visits: ``live`` (id, state, group) of the running and paused deployments plus each
    group's newest one if it completed; ``newest`` maps a group to its newest deployment's id (of those that
    select by group and tags: a deployment to a list of devices takes no joiners)."""

    live: list[tuple[str, str, str]] = field(default_factory=list)
    newest: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceBrief(Row):
    """What a rollout tick reads of a device (``Registry.device_briefs``): its assignment (``group``, ``tags``),
    whether it is online, and what it runs (a delta base); none of a :class:`Device`'s documents, so ticking a
    10,000-device fleet decodes 10,000 tag lists, not 40,000 JSON columns."""

    device_id: str
    group: str
    tags: list[str]
    online: bool
    active_version: str
    archive_sha256: str

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> DeviceBrief:
        """From (device_id, group_name, tags, online, active_version, archive_sha256)."""
        return cls(r[0], r[1], [] if r[2] == "[]" else _json(r[2], "[]"), bool(r[3]), r[4], r[5])


@dataclass(frozen=True, slots=True)
class Job(Row):
    """A device's job of a deployment (``action`` install or rollback) in state ``status``; ``version`` the device's update counter (stale updates are
    refused); ``started``/``delivered`` 0.0 until the device reported / was online; ``desired`` the Desired
    message to re-send."""

    job_id: str
    deployment_id: str
    fleet: str
    device_id: str
    action: str
    status: JobState
    step: str
    reason: str
    message: str
    version: int
    stage: int
    from_version: str
    created: float
    updated: float
    started: float
    delivered: float
    desired: str

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Job:
        return cls(job_id=r["job_id"], deployment_id=r["deployment_id"], fleet=r["fleet"], device_id=r["device_id"],
                   action=r["action"], status=JobState(r["status"]), step=r["step"], reason=r["reason"], message=r["message"],
                   version=int(r["version"]), stage=int(r["stage"]), from_version=r["from_version"],
                   created=float(r["created"]), updated=float(r["updated"]), started=float(r["started"]),
                   delivered=float(r["delivered"]), desired=r["desired"])


@dataclass(frozen=True, slots=True)
class RolloutEvent(Row):
    """A deployment's recorded event (stage, joined, paused, halted, timed_out, completed, ...)."""

    id: int
    deployment_id: str
    kind: str
    stage: int
    detail: str
    owner: str
    ts: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> RolloutEvent:
        return cls(id=int(r["id"]), deployment_id=r["deployment_id"], kind=r["kind"], stage=int(r["stage"]),
                   detail=r["detail"], owner=r["owner"], ts=float(r["ts"]))


@dataclass(frozen=True, slots=True)
class DeviceQuality(Row):
    """How well one version serves one device: its newest ``quality`` telemetry record (wire ``QualityRecord``, taken
    at ``ts`` by the device's clock): the mean top-1 ``confidence`` and ``entropy`` of the predictions it sampled
    (``scored``), its ``accuracy`` on ``labelled`` feedback labels (None without labels), and its latest comparison
    with the version it replaced (``reference``; ``compared`` live inputs, ``agreement``, the shifts, ``psi`` and
    the sequential test's ``verdict`` and deciding ``signal``); ``head``: the head it serves there (a personal
    one after a ``--personalize`` run)."""

    device_id: str
    group: str
    version: str
    ts: float
    scored: int
    confidence: float
    entropy: float
    labelled: int
    correct: int
    accuracy: float | None
    reference: str
    compared: int
    agreement: float
    confidence_shift: float
    entropy_shift: float
    psi: float
    verdict: str
    signal: str
    head: str = ""  # which head the version serves on the device: global, personal ("" unknown or none)

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> DeviceQuality:
        labelled, correct = int(r["labelled"]), int(r["correct"])
        return cls(device_id=r["device_id"], group=r["group_name"], version=r["version"], ts=float(r["ts"]),
                   scored=int(r["scored"]), confidence=float(r["confidence"]), entropy=float(r["entropy"]),
                   labelled=labelled, correct=correct, accuracy=correct / labelled if labelled else None,
                   reference=r["reference"], compared=int(r["compared"]), agreement=float(r["agreement"]),
                   confidence_shift=float(r["confidence_shift"]), entropy_shift=float(r["entropy_shift"]),
                   psi=float(r["psi"]), verdict=r["verdict"], signal=r["signal"], head=str(r.get("head") or ""))


@dataclass(frozen=True, slots=True)
class TelemetryRow(Row):
    """The telemetry aggregate of one (group, version, kind): records, and for metrics the summed counts.
    (``group_name``, as the API has always named it here.)"""

    fleet: str
    group_name: str
    version: str
    kind: str
    records: int
    predictions: int
    errors: int
    invalid: int

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> TelemetryRow:
        return cls(fleet=r["fleet"], group_name=r["group_name"], version=r["version"], kind=r["kind"],
                   records=int(r["records"]), predictions=int(r["predictions"]), errors=int(r["errors"]),
                   invalid=int(r["invalid"]))


@dataclass(frozen=True, slots=True)
class FailedRun(Row):
    """A federated run that failed: its id, group, stored ``status`` and ``error`` (why, when the registry keeps it
    apart from the status) and when its record last changed."""

    id: str
    group: str
    status: str
    error: str
    updated: float


@dataclass(frozen=True, slots=True)
class TelemetryWindow(Row):
    """The telemetry of one (group, version) summed over the minutes of a window: records, the metrics' counts and
    the latency histogram's bucket counts (``windows.NB`` of them)."""

    group: str
    version: str
    records: int
    predictions: int
    errors: int
    invalid: int
    latency: list[int]


@dataclass(frozen=True, slots=True)
class Alert(Row):
    """A device's alert (``kind`` drift): the record's ``data`` decoded."""

    id: int
    fleet: str
    device_id: str
    kind: str
    version: str
    data: dict[str, Any]
    ts: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Alert:
        return cls(id=int(r["id"]), fleet=r["fleet"], device_id=r["device_id"], kind=r["kind"], version=r["version"],
                   data=_json(r["data"], "{}"), ts=float(r["ts"]))


@dataclass(frozen=True, slots=True)
class FedRound(Row):
    """The metrics of one round of a federated run (None: not measured)."""

    round: int
    participants: int
    failures: int
    declined: int
    examples: int
    train_loss: float | None
    train_accuracy: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    central_loss: float | None
    central_accuracy: float | None
    seconds: float | None
    dp_epsilon: float | None
    strategy: str
    ts: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> FedRound:
        return cls(**{f.name: r[f.name] for f in fields(cls)})


class RunStatus(StrEnum):
    """Where a federated run is: ``starting`` (a drift run's record, before its process adopts it), ``running``
    (rounds going on), ``aggregated`` (the rounds are done; the aggregate is being gated, signed, deployed), then
    one of the ends: ``finished`` (not promoted, or not gated), ``promoted`` (signed as the next version),
    ``deployed`` (and rolled out), ``failed`` (the run's ``error`` says why) or ``stopped`` (on request)."""

    STARTING = "starting"
    RUNNING = "running"
    AGGREGATED = "aggregated"
    FINISHED = "finished"
    PROMOTED = "promoted"
    DEPLOYED = "deployed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        """Not ended: a process may still be working on the run (and may be asked to stop)."""
        return self in (RunStatus.STARTING, RunStatus.RUNNING, RunStatus.AGGREGATED)

    def may_become(self, other: RunStatus) -> bool:
        """An ended run keeps its end: a late report (the process of a stopped run saying it failed) is refused."""
        return self.active or other is self

    @classmethod
    def parse(cls, text: str) -> tuple[RunStatus, str]:
        """A stored or reported status and its error: ``failed: REASON`` (how runs and registries before this enum
        spelt a failure) is ``(FAILED, REASON)``; anything else must be a value (``ValueError`` otherwise)."""
        head, sep, rest = text.partition(":")
        if sep and head.strip() == cls.FAILED.value:
            return cls.FAILED, rest.strip()
        return cls(text), ""


@dataclass(frozen=True, slots=True)
class FedRunEvent(Row):
    """Something that happened to a federated run: ``kind`` ``status`` (it became ``status``; ``message``: the
    error of a failure, or who stopped it), ``stop`` (a stop was asked for, by ``message``) or ``note``."""

    id: int
    run_id: str
    ts: float
    kind: str
    status: str
    message: str

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> FedRunEvent:
        return cls(id=int(r["id"]), run_id=r["run_id"], ts=float(r["ts"]), kind=r["kind"], status=r["status"],
                   message=r["message"])


@dataclass(frozen=True, slots=True)
class FedRun(Row):
    """A federated retraining run of ``group``: its :class:`RunStatus` (``error``: why it failed or stopped), what
    started it (``trigger`` manual or drift, ``reason``), its ``config`` and ``result`` documents, its rounds, and
    ``stop_requested`` (wall-clock time a stop was asked for through the API; 0.0: never)."""

    id: str
    fleet: str
    status: RunStatus
    strategy: str
    rounds: int
    trigger: str
    reason: str
    flower_run_id: str
    config: dict[str, Any]
    result: dict[str, Any]
    created: float
    updated: float
    group: str
    rounds_done: int
    round_metrics: list[FedRound]
    error: str
    stop_requested: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any], rounds: list[FedRound]) -> FedRun:
        status, legacy_error = RunStatus.parse(r["status"])
        return cls(id=r["id"], fleet=r["fleet"], status=status, strategy=r["strategy"], rounds=int(r["rounds"]),
                   trigger=r["trigger"], reason=r["reason"], flower_run_id=r["flower_run_id"],
                   config=_json(r["config"], "{}"), result=_json(r["result"], "{}"), created=float(r["created"]),
                   updated=float(r["updated"]), group=r["group_name"], rounds_done=len(rounds),
                   round_metrics=rounds, error=r["error"] or legacy_error, stop_requested=float(r["stop_requested"] or 0.0))


@dataclass(frozen=True, slots=True)
class Retrain(Row):
    """A group's auto-retraining settings: whether drift starts a run, and the run's ``policy`` document."""

    group: str
    on_drift: bool
    policy: dict[str, Any]
    updated: float

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> Retrain:
        return cls(group=r["group_name"], on_drift=bool(r["on_drift"]), policy=_json(r["policy"], "{}"),
                   updated=float(r["updated"]))


@dataclass(frozen=True, slots=True)
class DeviceTally(Row):
    """How many devices of a fleet are in ``group``, run ``version`` ("" for none) and are ``online`` or not."""

    group: str
    version: str
    online: bool
    devices: int


@dataclass(frozen=True, slots=True)
class JobTally(Row):
    """How many jobs of ``action`` (install, rollback) of a deployment are in ``status``."""

    deployment_id: str
    action: str
    status: str
    jobs: int


@dataclass(frozen=True, slots=True)
class AlertTally(Row):
    """How many alerts of ``kind`` (drift) devices raised on model ``version``."""

    kind: str
    version: str
    alerts: int


@dataclass(frozen=True, slots=True)
class FedRunTally(Row):
    """The federated runs of ``group`` in ``status`` (the registry's text, e.g. ``failed: exit code 1``): how many,
    and the rounds they recorded between them."""

    group: str
    status: str
    runs: int
    rounds: int


@dataclass(frozen=True, slots=True)
class Principal(Row):
    """Who a valid API token is: its ``name`` (audited) and ``scope`` (read, deploy, admin)."""

    name: str
    scope: str


@dataclass(frozen=True, slots=True)
class Token(Row):
    """An API token as listed: never the token or its hash. ``expires`` 0.0: never; ``expired`` when it has."""

    name: str
    scope: str
    created: float
    expires: float
    expired: bool


@dataclass(frozen=True, slots=True)
class AuditEntry(Row):
    """One audited mutating API call: when, who (the token's name), what, the answer's status, the client."""

    id: int
    ts: float
    who: str
    method: str
    path: str
    summary: str
    status: int
    client: str

    @classmethod
    def from_row(cls, r: Mapping[Any, Any]) -> AuditEntry:
        return cls(id=int(r["id"]), ts=float(r["ts"]), who=r["who"], method=r["method"], path=r["path"],
                   summary=r["summary"], status=int(r["status"]), client=r["client"])


__all__ = ["Alert", "AlertTally", "Artifact", "ArtifactInfo", "ArtifactUse", "AuditEntry", "Decommissioned", "Delta", "DeploymentState",
           "Deployment", "DeploymentHeads", "Device", "DeviceBrief", "DeviceTally", "FailedRun", "FedRound", "FedRun",
           "FedRunEvent", "FedRunTally", "Inventory", "Job", "JobTally", "Principal", "Retrain", "RolloutEvent",
           "Row", "RunStatus", "TelemetryRow", "TelemetryWindow", "Token"]
