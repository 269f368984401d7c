"""The edgefleet MQTT protocol: topics and messages (pure: no I/O, no paho).

Topics (``{f}`` fleet, ``{d}`` device id; everything a device may touch sits
under its own id, so a broker ACL with ``%c`` confines it)::

    edgefleet/v1/{f}/devices/{d}/up/status       device -> cloud  retained; birth, and the last will (death)
    edgefleet/v1/{f}/devices/{d}/up/telemetry    device -> cloud  zlib-compressed JSON batch
    edgefleet/v1/{f}/devices/{d}/up/job          device -> cloud  job status updates (with versions)
    edgefleet/v1/{f}/devices/{d}/up/reported     device -> cloud  reported state
    edgefleet/v1/{f}/devices/{d}/up/chunks       device -> cloud  "send me these chunks" (bitmap)
    edgefleet/v1/{f}/devices/{d}/down/desired    cloud -> device  retained; the job the device should run
    edgefleet/v1/{f}/devices/{d}/down/ack        cloud -> device  telemetry acknowledgements
    edgefleet/v1/{f}/devices/{d}/down/chunk      cloud -> device  binary chunk frames

Messages are JSON objects with ``"v"`` (schema version) and ``"type"``; every
message class is a frozen dataclass whose ``from_dict`` validates strictly and
raises :class:`ProtocolError`. Drivers count and drop what does not parse.
Telemetry, the one stream a coordinator must keep up with, is decoded and
validated in one pass by msgspec (:class:`TelemetryRecord` is a
``msgspec.Struct`` whose field types carry the bounds).

Chunks are binary frames (no base64 inflation on the wire)::

    b"EFC1" | u32 header length | header JSON {file_id, index, sha256} | data
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import zlib
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Annotated, Any, ClassVar, Iterable, Iterator, Mapping, Protocol, TypeVar

import msgspec

from edgefleet.errors import ProtocolError
from edgefleet.jobstate import JOB_STATES, TERMINAL_STATES, JobState

SCHEMA_VERSION = 1
PREFIX = "edgefleet/v1"
MAX_MESSAGE_BYTES = 4 << 20  # nothing we parse may be larger
MAX_TELEMETRY_RECORDS = 5000
_MAX_SEQ = 1 << 62  # the largest counter (seq, version, size) a message may carry
_MAX_TS = 1e18  # seconds: finite, and an int this large still converts to float
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNKS = 1 << 16
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def check_id(value: Any, what: str = "id") -> str:
    """Fleet and device ids: 1-128 of [A-Za-z0-9_.:-], no MQTT wildcards or slashes."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ProtocolError(f"{what} {value!r} is not a valid id (1-128 of A-Z a-z 0-9 _ . : -)")
    return value


# -- topics ------------------------------------------------------------------------------------
class Up(str, Enum):
    STATUS = "status"
    TELEMETRY = "telemetry"
    JOB = "job"
    REPORTED = "reported"
    CHUNKS = "chunks"


class Down(str, Enum):
    DESIRED = "desired"
    ACK = "ack"
    CHUNK = "chunk"


def device_topic(fleet: str, device: str, direction: str, kind: str) -> str:
    return f"{PREFIX}/{check_id(fleet, 'fleet')}/devices/{check_id(device, 'device id')}/{direction}/{kind}"


def up_topic(fleet: str, device: str, kind: Up) -> str:
    return device_topic(fleet, device, "up", kind.value)


def down_topic(fleet: str, device: str, kind: Down) -> str:
    return device_topic(fleet, device, "down", kind.value)


def up_filter(fleet: str, share_group: str | None = None) -> str:
    """What a coordinator subscribes to; with ``share_group`` an MQTT 5 shared subscription."""
    f = f"{PREFIX}/{check_id(fleet, 'fleet')}/devices/+/up/#"
    return f"$share/{check_id(share_group, 'share group')}/{f}" if share_group else f


def down_filter(fleet: str, device: str) -> str:
    return f"{PREFIX}/{check_id(fleet, 'fleet')}/devices/{check_id(device, 'device id')}/down/#"


@dataclass(frozen=True)
class TopicInfo:
    fleet: str
    device: str
    direction: str
    kind: str


def parse_topic(topic: str) -> TopicInfo:
    parts = topic.split("/")
    if len(parts) != 7 or "/".join(parts[:2]) != PREFIX or parts[3] != "devices" or parts[5] not in ("up", "down"):
        raise ProtocolError(f"not an edgefleet device topic: {topic!r}")
    kinds = {e.value for e in (Up if parts[5] == "up" else Down)}
    if parts[6] not in kinds:
        raise ProtocolError(f"unknown message kind {parts[6]!r} in {topic!r}")
    return TopicInfo(check_id(parts[2], "fleet"), check_id(parts[4], "device id"), parts[5], parts[6])


# -- field validation helpers ---------------------------------------------------------------------
def _get(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ProtocolError(f"field {key!r} is missing")
        return default
    value = d[key]
    if value is None and default is None:
        return None
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise ProtocolError(f"field {key!r} must be a number, got a boolean")
    if not isinstance(value, typ):
        raise ProtocolError(f"field {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"field {key!r} is not finite")
    return value


def _nonneg(d: Mapping[str, Any], key: str, default: Any = ...) -> int:
    v = _get(d, key, int, default)
    if v < 0 or v > _MAX_SEQ:
        raise ProtocolError(f"field {key!r} is out of range: {v}")
    return int(v)


def _str(d: Mapping[str, Any], key: str, default: Any = ..., max_len: int = 4096) -> str:
    v = _get(d, key, str, default)
    if v is not None and len(v) > max_len:
        raise ProtocolError(f"field {key!r} is longer than {max_len}")
    return v  # type: ignore[no-any-return]


def _hex64(d: Mapping[str, Any], key: str, default: Any = ...) -> str:
    v = _get(d, key, str, default)
    if v is None or (v == "" and default == ""):
        return v  # type: ignore[no-any-return]
    if not _HEX64.match(v):
        raise ProtocolError(f"field {key!r} is not a sha256 hex digest")
    return v  # type: ignore[no-any-return]


# -- messages --------------------------------------------------------------------------------------
M = TypeVar("M", bound="Message")


class Message:
    """Base of all JSON messages: ``to_bytes``/``parse`` with the schema version and type."""

    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)  # type: ignore[call-overload]
        return {"v": SCHEMA_VERSION, "type": self.TYPE, **body}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_dict(cls: type[M], d: Mapping[str, Any]) -> M:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def parse(cls: type[M], payload: bytes) -> M:
        return cls.from_dict(decode_json(payload, cls.TYPE))


def decode_json(payload: bytes, expected_type: str) -> dict[str, Any]:
    if not isinstance(payload, (bytes, bytearray)):
        raise ProtocolError("payload is not bytes")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        d = json.loads(bytes(payload).decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise ProtocolError("payload is not a JSON object")
    v = d.get("v")
    if v != SCHEMA_VERSION or isinstance(v, bool):
        raise ProtocolError(f"unsupported schema version {v!r} (this side speaks {SCHEMA_VERSION})")
    if d.get("type") != expected_type:
        raise ProtocolError(f"expected a {expected_type!r} message, got type {d.get('type')!r}")
    return d


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")  # inventory text: printable ASCII, nothing that could fool a terminal
INVENTORY_TEXT = {"os": 32, "os_release": 128, "arch": 32, "python": 32}  # field -> the most characters it holds


def _printable(d: Mapping[str, Any], key: str, max_len: int) -> str:
    v = _str(d, key, "", max_len)
    if not _PRINTABLE.match(v):
        raise ProtocolError(f"field {key!r} must be printable ASCII")
    return v


@dataclass(frozen=True)
class Inventory:
    """What a device is, sent with its birth (:class:`Status`): the operating system (``platform.system()``), its
    release, the CPU architecture (``platform.machine()``), the Python version and the free and total bytes of the
    file system holding its state directory. Every field is bounded (printable ASCII within
    :data:`INVENTORY_TEXT` characters, byte counts within 0..2**62); an empty or zero field is "not reported".
    Unknown keys are ignored (a newer agent's), never kept."""

    os: str = ""
    os_release: str = ""
    arch: str = ""
    python: str = ""
    free_disk_bytes: int = 0
    total_disk_bytes: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> Inventory:
        if not isinstance(d, Mapping):
            raise ProtocolError("inventory must be an object")
        free, total = _nonneg(d, "free_disk_bytes", 0), _nonneg(d, "total_disk_bytes", 0)
        if total and free > total:
            raise ProtocolError(f"inventory: free disk {free} exceeds the total {total}")
        return cls(free_disk_bytes=free, total_disk_bytes=total,
                   **{k: _printable(d, k, n) for k, n in INVENTORY_TEXT.items()})


@dataclass(frozen=True)
class Status(Message):
    """Birth (online=True) and death (online=False, the last will). ``session`` rises per process start (a
    reconnection repeats the birth with the same session); a death whose session is older than the last birth is
    stale and ignored. ``update``: not a birth but the same session's new inventory (the disk filled up), which
    changes the record only (an older coordinator, which ignores the key, takes it for a reconnection)."""

    TYPE: ClassVar[str] = "status"
    device_id: str
    online: bool
    session: int
    ts: float = 0.0
    agent_version: str = ""
    active_version: str = ""
    active_id: str = ""
    archive_sha256: str = ""  # the deterministic .efb of the active version (a delta base)
    hardware_tags: tuple[str, ...] = ()
    group: str = ""  # the group the device asks to join on first contact (the registry may override)
    inventory: Inventory | None = None  # what the device is (births only; absent from older agents)
    update: bool = False  # an inventory update of an online session, not a (re)connection

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["inventory"] is None:
            del d["inventory"]
        if not d["update"]:
            del d["update"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        tags = _get(d, "hardware_tags", list, [])
        if len(tags) > 64 or not all(isinstance(t, str) and len(t) <= 128 for t in tags):
            raise ProtocolError("hardware_tags must be a list of short strings")
        return cls(
            device_id=check_id(_get(d, "device_id", str), "device_id"),
            online=_get(d, "online", bool),
            session=_nonneg(d, "session"),
            ts=float(_get(d, "ts", (int, float), 0.0)),
            agent_version=_str(d, "agent_version", "", 64),
            active_version=_str(d, "active_version", "", 128),
            active_id=_str(d, "active_id", "", 128),
            archive_sha256=_hex64(d, "archive_sha256", ""),
            hardware_tags=tuple(tags),
            group=_str(d, "group", "", 128),
            inventory=Inventory.from_dict(d["inventory"]) if d.get("inventory") is not None else None,
            update=_get(d, "update", bool, False),
        )


MAX_URL = 2048  # the longest origin URL a file may carry (a presigned S3 URL is about 1,500 characters)
_URL = re.compile(r"^https?://[\x21-\x7e]+$")  # printable ASCII, no spaces: what a device may fetch from


@dataclass(frozen=True)
class FileInfo:
    """A file offered for chunked transfer, and where it can be fetched over HTTP(S) (``url``: the coordinator's
    origin, see :mod:`edgefleet.cloud_sync.origin`; "" for MQTT chunks only). The URL is a location, not a
    credential of the content: the device checks ``size`` and ``file_id`` (sha256) of whatever it downloads."""

    file_id: str  # sha256 of the content
    size: int
    chunk_size: int = DEFAULT_CHUNK_SIZE
    url: str = ""  # http(s) URL of the same bytes at an origin ("": none)

    def __post_init__(self) -> None:
        if not _HEX64.match(self.file_id):
            raise ProtocolError("file_id must be the sha256 hex digest of the file")
        if self.size <= 0 or self.chunk_size <= 0 or self.chunk_size > (1 << 20):
            raise ProtocolError(f"bad file size {self.size} or chunk size {self.chunk_size}")
        if self.chunks > MAX_CHUNKS:
            raise ProtocolError(f"{self.chunks} chunks exceed the limit of {MAX_CHUNKS}")
        if self.url and (len(self.url) > MAX_URL or not _URL.match(self.url)):
            raise ProtocolError(f"file url {self.url[:80]!r} is not an http(s) URL of at most {MAX_URL} "
                                "printable characters")

    @property
    def chunks(self) -> int:
        return (self.size + self.chunk_size - 1) // self.chunk_size

    def chunk_len(self, index: int) -> int:
        if not 0 <= index < self.chunks:
            raise ProtocolError(f"chunk {index} is outside 0..{self.chunks - 1}")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    @classmethod
    def from_dict(cls, d: Any) -> FileInfo:
        if not isinstance(d, Mapping):
            raise ProtocolError("file info must be an object")
        return cls(_hex64(d, "file_id"), _nonneg(d, "size"), _nonneg(d, "chunk_size", DEFAULT_CHUNK_SIZE),
                   _str(d, "url", "", MAX_URL))


QUALITY_MODES = ("off", "report", "enforce")
#: a quality policy's numbers: name -> (type, low, high, low excluded, high excluded)
QUALITY_BOUNDS: dict[str, tuple[type, float, float, bool, bool]] = {
    "min_samples": (int, 1, 1_000_000, False, False),
    "max_samples": (int, 1, 10_000_000, False, False),
    "agreement_good": (float, 0.0, 1.0, True, True),
    "agreement_bad": (float, 0.0, 1.0, True, True),
    "alpha": (float, 0.0, 0.5, True, True),
    "beta": (float, 0.0, 0.5, True, True),
    "max_confidence_drop": (float, 0.0, 1.0, False, False),
    "max_psi": (float, 0.0, 100.0, False, False),
    "labelled_bad": (float, 0.0, 0.5, True, True),
    "wait_seconds": (float, 0.0, 7 * 86400.0, False, False),
}


def _bounded(d: Mapping[str, Any], key: str, spec: tuple[type, float, float, bool, bool]) -> float | int | None:
    typ, lo, hi, lo_open, hi_open = spec
    v = _get(d, key, (int, float) if typ is float else int, None)
    if v is None:
        return None
    if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
        raise ProtocolError(f"field {key!r} is out of range: {v} (within {'(' if lo_open else '['}{lo:g}, {hi:g}"
                            f"{')' if hi_open else ']'})")
    return float(v) if typ is float else int(v)


@dataclass(frozen=True)
class QualityPolicy:
    """A deployment's quality probation settings (the device's ``[quality]`` options, see
    ``device_agent.config.QualityConfig``): every field optional, None meaning the device's own. Bounded here
    (``mode`` one of :data:`QUALITY_MODES`, numbers within :data:`QUALITY_BOUNDS`, ``agreement_bad`` below
    ``agreement_good`` and ``min_samples`` at most ``max_samples`` when both are given); the device checks the
    result against its own settings again. Unknown keys are ignored (a newer coordinator's)."""

    mode: str | None = None
    min_samples: int | None = None
    max_samples: int | None = None
    agreement_good: float | None = None
    agreement_bad: float | None = None
    alpha: float | None = None
    beta: float | None = None
    max_confidence_drop: float | None = None
    max_psi: float | None = None
    labelled_bad: float | None = None
    wait_seconds: float | None = None

    def options(self) -> dict[str, Any]:
        """The fields that are set (what the device lays over its own settings)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any) -> QualityPolicy:
        if not isinstance(d, Mapping):
            raise ProtocolError("a quality policy must be an object")
        mode = _get(d, "mode", str, None)
        if mode is not None and mode not in QUALITY_MODES:
            raise ProtocolError(f"quality mode {mode[:20]!r} is not one of {', '.join(QUALITY_MODES)}")
        values = {k: _bounded(d, k, spec) for k, spec in QUALITY_BOUNDS.items()}
        good, bad = values["agreement_good"], values["agreement_bad"]
        if good is not None and bad is not None and not bad < good:
            raise ProtocolError(f"agreement_bad {bad} must be below agreement_good {good}")
        lo, hi = values["min_samples"], values["max_samples"]
        if lo is not None and hi is not None and lo > hi:
            raise ProtocolError(f"min_samples {lo} exceeds max_samples {hi}")
        return cls(mode=mode, **values)  # type: ignore[arg-type]


QUALITY_VERDICTS = ("", "pass", "fail", "undecided")
#: which head a version with a trainable head serves on the device: "" (unknown, or no head), the bundle's signed
#: ``global`` one, or the device's ``personal`` one (a ``--personalize`` run's, ``device_agent.personal``)
QUALITY_HEADS = ("", "global", "personal")
QUALITY_SIGNALS = ("", "agreement", "labelled_accuracy", "confidence", "psi")


@dataclass(frozen=True)
class QualityRecord:
    """The ``data`` of a device's ``quality`` telemetry record (``device_agent.telemetry.QualityTotals``): one
    version's quality on that device, cumulative. ``scored`` predictions sampled, their mean top-1 ``confidence``
    and ``entropy`` (nats); ``correct`` of ``labelled`` feedback labels; and its latest comparison with the version
    it replaced (``reference``): ``compared`` live inputs, top-1 ``agreement``, the ``confidence_shift`` and
    ``entropy_shift`` (new minus old), the ``psi`` of the predicted classes, the sequential test's ``verdict`` and
    the ``signal`` that decided it; ``head``: which head the version serves there (:data:`QUALITY_HEADS`). Every
    field bounded (a record out of bounds is refused); the accuracy is
    computed here from the counts, not taken from the device."""

    version: str
    scored: int = 0
    confidence: float = 0.0
    entropy: float = 0.0
    labelled: int = 0
    correct: int = 0
    reference: str = ""
    compared: int = 0
    agreement: float = 0.0
    confidence_shift: float = 0.0
    entropy_shift: float = 0.0
    psi: float = 0.0
    verdict: str = ""
    signal: str = ""
    head: str = ""

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @classmethod
    def from_dict(cls, d: Any) -> QualityRecord:
        if not isinstance(d, Mapping):
            raise ProtocolError("a quality record must be an object")

        def num(key: str, lo: float, hi: float) -> float:
            v = _get(d, key, (int, float), 0.0)
            if not lo <= v <= hi:
                raise ProtocolError(f"field {key!r} is out of range: {v}")
            return float(v)

        labelled, correct = _nonneg(d, "labelled", 0), _nonneg(d, "correct", 0)
        if correct > labelled:
            raise ProtocolError(f"{correct} correct of {labelled} labelled")
        verdict, signal = _str(d, "verdict", "", 16), _str(d, "signal", "", 32)
        if verdict not in QUALITY_VERDICTS or signal not in QUALITY_SIGNALS:
            raise ProtocolError(f"unknown quality verdict {verdict!r} or signal {signal!r}")
        head = _str(d, "head", "", 16)
        if head not in QUALITY_HEADS:
            raise ProtocolError(f"unknown head {head!r} (one of {', '.join(h for h in QUALITY_HEADS if h)})")
        return cls(version=_str(d, "version", max_len=128), scored=_nonneg(d, "scored", 0),
                   confidence=num("confidence", 0.0, 1.0), entropy=num("entropy", 0.0, 100.0), labelled=labelled,
                   correct=correct, reference=_str(d, "reference", "", 128), compared=_nonneg(d, "compared", 0),
                   agreement=num("agreement", 0.0, 1.0), confidence_shift=num("confidence_shift", -1.0, 1.0),
                   entropy_shift=num("entropy_shift", -100.0, 100.0), psi=num("psi", 0.0, 1000.0),
                   verdict=verdict, signal=signal, head=head)


class JobAction(str, Enum):
    INSTALL = "install"
    ROLLBACK = "rollback"
    NONE = "none"  # nothing to do (a cleared desired state)


@dataclass(frozen=True)
class Desired(Message):
    """The job a device should run (retained, so a device that was away gets it when it returns)."""

    TYPE: ClassVar[str] = "desired"
    job_id: str
    action: str
    deployment_id: str = ""
    target_version: str = ""
    file: FileInfo | None = None
    delta: FileInfo | None = None  # optional bsdiff4 patch from ``delta_base`` to ``file``
    delta_base: str = ""
    rollback_to: str = ""  # for ROLLBACK: the version to return to
    rollback_order: dict[str, Any] | None = None
    ts: float = 0.0
    # TUF metadata (``edgefleet.trust.client_metadata``: file name -> JSON text) when the coordinator has a
    # repository: a device in TUF mode checks ``file`` (length, sha256) against the signed target before the
    # first byte is asked for. Not trusted here: names and sizes are bounded, python-tuf checks the rest.
    tuf: dict[str, str] | None = None
    model: str = ""  # the model the job installs: a device serving another refuses it before downloading
    quality: QualityPolicy | None = None  # the deployment's quality probation settings (None: the device's own)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for k in ("file", "delta", "rollback_order", "tuf", "model", "quality"):
            if d[k] is None or d[k] == "":
                del d[k]
            elif k == "quality":
                d[k] = {o: v for o, v in d[k].items() if v is not None}
            elif k in ("file", "delta") and not d[k]["url"]:
                del d[k]["url"]  # no origin: the message is what it was before URLs existed
        return d

    def for_jobs(self, job_ids: Iterable[str]) -> Iterator[bytes]:
        """This message with each of ``job_ids`` in turn, encoded (what :meth:`to_bytes` of a copy with that
        ``job_id`` parses as): the same desired state for many devices, turned into a dict once and encoded by
        msgspec (keys sorted), so a stage of 10,000 devices is not 10,000 dataclass walks and ``json.dumps``."""
        d = self.to_dict()
        for job_id in job_ids:
            d["job_id"] = job_id
            yield _ENCODE_SORTED.encode(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Desired:
        action = _str(d, "action", max_len=16)
        if action not in {a.value for a in JobAction}:
            raise ProtocolError(f"unknown job action {action!r}")
        file = FileInfo.from_dict(d["file"]) if "file" in d else None
        delta = FileInfo.from_dict(d["delta"]) if "delta" in d else None
        if action == JobAction.INSTALL.value and file is None:
            raise ProtocolError("an install job needs a file")
        order = _get(d, "rollback_order", dict, None)
        return cls(
            job_id=check_id(_get(d, "job_id", str), "job_id"),
            action=action,
            deployment_id=_str(d, "deployment_id", "", 128),
            target_version=_str(d, "target_version", "", 128),
            file=file,
            delta=delta,
            delta_base=_hex64(d, "delta_base", ""),
            rollback_to=_str(d, "rollback_to", "", 128),
            rollback_order=order,
            ts=float(_get(d, "ts", (int, float), 0.0)),
            tuf=_tuf_files(d),
            model=_str(d, "model", "", 128),
            quality=QualityPolicy.from_dict(d["quality"]) if d.get("quality") is not None else None,
        )


def _tuf_files(d: Mapping[str, Any]) -> dict[str, str] | None:
    from edgefleet.trust import CLIENT_METADATA_RE, MAX_CLIENT_METADATA_BYTES, MAX_CLIENT_METADATA_FILES

    files = _get(d, "tuf", dict, None)
    if files is None:
        return None
    if len(files) > MAX_CLIENT_METADATA_FILES:
        raise ProtocolError(f"at most {MAX_CLIENT_METADATA_FILES} TUF metadata files")
    total = 0
    for name, text in files.items():
        if not CLIENT_METADATA_RE.match(name) or not isinstance(text, str):
            raise ProtocolError(f"bad TUF metadata entry {name[:80]!r}")
        total += len(text)
    if total > MAX_CLIENT_METADATA_BYTES:
        raise ProtocolError(f"TUF metadata of {total} characters exceeds {MAX_CLIENT_METADATA_BYTES}")
    return dict(files)


# job states are one enum shared with the device's update machine (edgefleet.jobstate); on the wire, its values


@dataclass(frozen=True)
class JobUpdate(Message):
    """A device's job status. ``version`` rises with every change the device makes; the
    coordinator applies an update only when ``version`` is newer than what it holds
    (``expected_version`` is the version the device last saw accepted), so a duplicate
    or an out-of-order (stale) update is rejected. A job the coordinator ended itself
    (TIMED_OUT) is final, as in AWS IoT Jobs: a late update from the device is counted
    and ignored (the version the device reports running is still recorded)."""

    TYPE: ClassVar[str] = "job"
    job_id: str
    status: str
    version: int
    expected_version: int = 0
    step: str = ""
    reason: str = ""
    message: str = ""
    active_version: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobUpdate:
        status = _str(d, "status", max_len=32)
        if status not in JOB_STATES:
            raise ProtocolError(f"unknown job status {status!r}")
        return cls(
            job_id=check_id(_get(d, "job_id", str), "job_id"),
            status=status,
            version=_nonneg(d, "version"),
            expected_version=_nonneg(d, "expected_version", 0),
            step=_str(d, "step", "", 64),
            reason=_str(d, "reason", "", 128),
            message=_str(d, "message", "", 2000),
            active_version=_str(d, "active_version", "", 128),
            details=_get(d, "details", dict, {}),
            ts=float(_get(d, "ts", (int, float), 0.0)),
        )


@dataclass(frozen=True)
class Reported(Message):
    """A device's reported state (the counterpart of ``Desired``)."""

    TYPE: ClassVar[str] = "reported"
    device_id: str
    active_version: str = ""
    previous_version: str = ""
    job_id: str = ""
    job_status: str = ""
    queued_telemetry: int = 0
    ts: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reported:
        return cls(
            device_id=check_id(_get(d, "device_id", str), "device_id"),
            active_version=_str(d, "active_version", "", 128),
            previous_version=_str(d, "previous_version", "", 128),
            job_id=_str(d, "job_id", "", 128),
            job_status=_str(d, "job_status", "", 32),
            queued_telemetry=_nonneg(d, "queued_telemetry", 0),
            ts=float(_get(d, "ts", (int, float), 0.0)),
        )


class RecordLike(Protocol):
    """A telemetry record as the device's durable queue holds it (:class:`edgefleet.device_agent.telemetry.Record`)."""

    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...


_Seq = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SEQ)]
_Ts = Annotated[float, msgspec.Meta(gt=-_MAX_TS, lt=_MAX_TS)]  # seconds since the epoch; JSON has no NaN or inf


class TelemetryRecord(msgspec.Struct, frozen=True, gc=False):
    """One telemetry record on the wire: the fields of the device queue's record. Its bounds are its field types
    (``seq`` within 0..2**62, ``ts`` a finite number of seconds, ``kind`` at most 64 characters, ``data`` an object
    with string keys), checked by msgspec as a batch is decoded (:meth:`TelemetryBatch.parse`): a record out of
    bounds refuses its batch with a :class:`ProtocolError` naming the field. What ``data`` holds is the registry's
    to judge, record by record. :meth:`of` is the one conversion from the queue's record.

    Not tracked by the garbage collector (``gc=False``): a record refers to its data and nothing refers back, so
    it is never part of a cycle, and a coordinator ingesting 100,000 records a second does not hand the collector
    100,000 more objects to walk."""

    seq: _Seq
    ts: _Ts
    kind: Annotated[str, msgspec.Meta(max_length=64)]
    data: dict[str, Any]

    @classmethod
    def of(cls, record: RecordLike) -> TelemetryRecord:
        """The wire record of a record drained from the device's queue (``device_agent.telemetry.Record``)."""
        return cls(record.seq, record.ts, record.kind, record.data)

    @classmethod
    def from_dict(cls, d: Any) -> TelemetryRecord:
        return _convert(d, cls, "telemetry record")

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "data": self.data}


class _Batch(msgspec.Struct, kw_only=True):
    """A telemetry batch as msgspec decodes it; ``v``, ``type`` and ``device_id`` are checked after (their own
    messages), the rest by the field types. Unknown keys are ignored, as every message's are."""

    v: Any = None
    type: Any = None
    device_id: Any = None
    batch_id: Annotated[str, msgspec.Meta(max_length=128)]
    records: Annotated[list[TelemetryRecord], msgspec.Meta(max_length=MAX_TELEMETRY_RECORDS)]


_BATCH = msgspec.json.Decoder(_Batch)
_ENCODE_SORTED = msgspec.json.Encoder(order="sorted")


_T = TypeVar("_T")


def _convert(d: Any, typ: type[_T], what: str) -> _T:
    try:
        return msgspec.convert(d, typ)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad {what}: {exc}") from None


@dataclass(frozen=True)
class TelemetryBatch(Message):
    """Records drained from a device's durable queue; deleted there only once acknowledged."""

    TYPE: ClassVar[str] = "telemetry"
    device_id: str
    batch_id: str
    records: tuple[TelemetryRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, "type": self.TYPE, "device_id": self.device_id, "batch_id": self.batch_id,
                "records": [r.to_dict() for r in self.records]}

    def to_bytes(self) -> bytes:
        return zlib.compress(super().to_bytes(), 6)

    @classmethod
    def parse(cls, payload: bytes) -> TelemetryBatch:
        """Inflate (at most :data:`MAX_MESSAGE_BYTES`), then decode and validate the batch and its records in one
        pass (msgspec): no JSON tree is built and walked again; each record is its :class:`TelemetryRecord`."""
        try:
            d = zlib.decompressobj()
            raw = d.decompress(bytes(payload), MAX_MESSAGE_BYTES)
            if d.unconsumed_tail:
                raise ProtocolError("telemetry batch inflates beyond the size limit")
        except zlib.error as exc:
            raise ProtocolError(f"telemetry batch is not zlib data: {exc}") from None
        try:
            b = _BATCH.decode(raw)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"bad telemetry batch: {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"telemetry batch is not JSON: {exc}") from None
        return cls._checked(b)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TelemetryBatch:
        return cls._checked(_convert(d, _Batch, "telemetry batch"))

    @classmethod
    def _checked(cls, b: _Batch) -> TelemetryBatch:
        if b.v != SCHEMA_VERSION or isinstance(b.v, bool):
            raise ProtocolError(f"unsupported schema version {b.v!r} (this side speaks {SCHEMA_VERSION})")
        if b.type != cls.TYPE:
            raise ProtocolError(f"expected a {cls.TYPE!r} message, got type {b.type!r}")
        return cls(check_id(b.device_id, "device_id"), b.batch_id, tuple(b.records))


@dataclass(frozen=True)
class TelemetryAck(Message):
    TYPE: ClassVar[str] = "ack"
    batch_id: str
    seqs: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:  # dataclasses.asdict copies every seq: a hot path of telemetry ingest
        return {"v": SCHEMA_VERSION, "type": self.TYPE, "batch_id": self.batch_id, "seqs": list(self.seqs)}

    def to_bytes(self) -> bytes:  # one per ingested batch: msgspec, keys sorted as Message.to_bytes sorts them
        return _ENCODE_SORTED.encode(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TelemetryAck:
        seqs = _get(d, "seqs", list)
        if len(seqs) > MAX_TELEMETRY_RECORDS or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                        for s in seqs):
            raise ProtocolError("seqs must be a list of non-negative integers")
        return cls(_str(d, "batch_id", max_len=128), tuple(seqs))


def encode_bitmap(indices: list[int] | set[int], total: int) -> str:
    bits = bytearray((total + 7) // 8)
    for i in indices:
        if not 0 <= i < total:
            raise ProtocolError(f"chunk {i} is outside 0..{total - 1}")
        bits[i >> 3] |= 1 << (i & 7)
    return base64.b64encode(bytes(bits)).decode()


def decode_bitmap(text: str, total: int) -> list[int]:
    try:
        bits = base64.b64decode(text.encode(), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError("bitmap is not base64") from None
    if len(bits) != (total + 7) // 8:
        raise ProtocolError(f"bitmap has {len(bits)} bytes for {total} chunks")
    out = [i for i in range(total) if bits[i >> 3] >> (i & 7) & 1]
    return out


@dataclass(frozen=True)
class ChunkRequest(Message):
    """The device asks for the chunks whose bits are set (AWS IoT MQTT file streams style)."""

    TYPE: ClassVar[str] = "chunks"
    job_id: str
    file_id: str
    total: int
    bitmap: str

    @property
    def wanted(self) -> list[int]:
        return decode_bitmap(self.bitmap, self.total)

    @classmethod
    def make(cls, job_id: str, file_id: str, total: int, wanted: list[int] | set[int]) -> ChunkRequest:
        return cls(job_id, file_id, total, encode_bitmap(wanted, total))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChunkRequest:
        total = _nonneg(d, "total")
        if not 0 < total <= MAX_CHUNKS:
            raise ProtocolError(f"total {total} is out of range")
        req = cls(check_id(_get(d, "job_id", str), "job_id"), _hex64(d, "file_id"), total, _str(d, "bitmap", max_len=20000))
        req.wanted  # noqa: B018 - validate now
        return req


_FRAME = b"EFC1"


@dataclass(frozen=True)
class Chunk:
    file_id: str
    index: int
    data: bytes
    sha256: str = ""

    def to_bytes(self) -> bytes:
        digest = self.sha256 or hashlib.sha256(self.data).hexdigest()
        header = json.dumps({"v": SCHEMA_VERSION, "file_id": self.file_id, "index": self.index, "sha256": digest},
                            separators=(",", ":")).encode()
        return _FRAME + struct.pack(">I", len(header)) + header + self.data

    @classmethod
    def parse(cls, payload: bytes) -> Chunk:
        """Parse a frame and check the chunk's own hash (its length is checked by the receiver)."""
        payload = bytes(payload)
        if len(payload) < 8 or payload[:4] != _FRAME:
            raise ProtocolError("not a chunk frame")
        (n,) = struct.unpack(">I", payload[4:8])
        if n > 1024 or 8 + n > len(payload):
            raise ProtocolError("chunk header length is out of range")
        try:
            h = json.loads(payload[8 : 8 + n].decode())
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError("chunk header is not JSON") from None
        if not isinstance(h, dict) or h.get("v") != SCHEMA_VERSION:
            raise ProtocolError("chunk header has an unsupported schema version")
        data = payload[8 + n :]
        digest = _hex64(h, "sha256")
        if hashlib.sha256(data).hexdigest() != digest:
            raise ProtocolError(f"chunk {h.get('index')} fails its sha256")
        return cls(_hex64(h, "file_id"), _nonneg(h, "index"), data, digest)


__all__ = [
    "SCHEMA_VERSION", "PREFIX", "DEFAULT_CHUNK_SIZE", "Up", "Down", "up_topic", "down_topic", "up_filter",
    "down_filter", "parse_topic", "TopicInfo", "check_id", "Message", "Status", "Inventory", "INVENTORY_TEXT",
    "FileInfo", "JobAction", "Desired", "QualityPolicy", "QualityRecord", "QUALITY_MODES", "QUALITY_BOUNDS",
    "JobUpdate", "Reported", "TelemetryRecord", "TelemetryBatch", "TelemetryAck", "ChunkRequest", "Chunk",
    "encode_bitmap", "decode_bitmap", "TERMINAL_STATES", "JOB_STATES", "JobState", "RecordLike",
]
