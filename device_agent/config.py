"""The agent's typed configuration, read from TOML and validated with clear errors.

Every option is a typed field of a frozen dataclass; unknown sections or keys
are refused (a typo must not silently fall back to a default). Example::

    [agent]
    state_dir = "/var/lib/edgefleet"
    device_id = "press-7"
    model_name = "digits"           # the one model this device serves (default: the first installed)
    hardware_tags = ["arm64"]
    trusted_keys = ["/etc/edgefleet/fleet.pub"]
    tuf_root = "/etc/edgefleet/root.json"   # pin a TUF root: installs are checked against TUF metadata

    [update]
    probation_seconds = 60
    shadow = false
    clock = "auto"                  # rollback orders' time bounds: "system", "none" (no reliable clock) or auto
    clock_skew_seconds = 300

    [quality]                       # a new version against the one it replaces, on the same live inputs
    mode = "enforce"                # "off", "report" (measured, never rolls back) or "enforce" (a failed test rolls back)
    agreement_good = 0.6            # the sequential test: keep at this top-1 agreement, roll back at agreement_bad
    agreement_bad = 0.3

    [telemetry]
    max_events = 100000

    [samples]
    enabled = true
    key_file = "/etc/edgefleet/device.key"

    [federated]                     # take part in federated retraining (needs [samples])
    enabled = true
    superlink = "fl.example.com:9092"
    root_certificates = "/etc/edgefleet/flower-ca.pem"   # TLS; or insecure = true (loopback only)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.manifest import check_name
from edgefleet.tables import Wording, from_table, read_toml

if TYPE_CHECKING:
    from .quality import Thresholds

T = TypeVar("T")

_WORDING = Wording(not_table="[{where}] must be a table",
                   unknown="[{where}] has unknown option(s) {unknown}; known: {known}")


def _section(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a TOML table (absent: the defaults), refusing unknown keys and wrong types."""
    return from_table(cls, {} if data is None else data, where, _WORDING)


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class StoreConfig:
    quota_mb: float = 512.0  # disk budget for stored bundles (active + previous always kept)

    def __post_init__(self) -> None:
        _positive("store.quota_mb", self.quota_mb)


@dataclass(frozen=True)
class UpdateConfig:
    probation_seconds: float = 60.0  # watch a new version this long before committing it
    probation_min_predictions: int = 0  # and for at least this many predictions (0: time only)
    max_error_rate: float = 0.05  # failed predictions / predictions during probation
    min_error_count: int = 3  # do not judge the error rate on fewer failures than this
    max_latency_ms: float = 0.0  # p95 latency ceiling during probation (0: off)
    latency_factor: float = 0.0  # p95 vs the previous version's p95 (0: off)
    shadow: bool = False  # run a candidate beside the active version before promoting
    shadow_predictions: int = 100
    shadow_seconds: float = 300.0
    min_agreement: float = 0.95
    agreement_atol: float = 1e-3
    clock: str = "auto"  # rollback orders' time bounds: "auto", "system" or "none" (no reliable clock); see .orders
    clock_skew_seconds: float = 300.0  # tolerated difference between the order signer's clock and this device's

    def __post_init__(self) -> None:
        if self.clock not in ("auto", "system", "none"):
            raise ConfigError(f"update.clock must be one of 'auto', 'system', 'none', got {self.clock!r}")
        _positive("update.clock_skew_seconds", self.clock_skew_seconds, allow_zero=True)
        _positive("update.probation_seconds", self.probation_seconds, allow_zero=True)
        _positive("update.probation_min_predictions", self.probation_min_predictions, allow_zero=True)
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"update.max_error_rate must be within [0, 1], got {self.max_error_rate}")
        _positive("update.min_error_count", self.min_error_count, allow_zero=True)
        _positive("update.max_latency_ms", self.max_latency_ms, allow_zero=True)
        _positive("update.latency_factor", self.latency_factor, allow_zero=True)
        _positive("update.shadow_predictions", self.shadow_predictions)
        _positive("update.shadow_seconds", self.shadow_seconds)
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ConfigError(f"update.min_agreement must be within [0, 1], got {self.min_agreement}")


QUALITY_MODES = ("off", "report", "enforce")


@dataclass(frozen=True)
class QualityConfig:
    """``[quality]``: quality probation without labels (:mod:`.quality`). While a new version is on probation (or
    runs in shadow) the version it replaces runs on the same live inputs and a sequential test decides: ``mode``
    "enforce" rolls a version that fails it back (reason ``quality``), "report" only measures and reports, "off"
    does neither. A deployment may override any of these (the install job's ``quality`` policy)."""

    mode: str = "report"
    min_samples: int = 50  # live inputs compared before a label-free verdict
    max_samples: int = 2000  # the test decides by then (truncated); comparing stops
    agreement_good: float = 0.6  # H0 of the SPRT: top-1 agreement of a version to keep
    agreement_bad: float = 0.3  # H1: the agreement of a version to roll back (about chance for a broken one)
    alpha: float = 0.02  # risk of rolling back a good version
    beta: float = 0.02  # risk of keeping a bad one
    max_confidence_drop: float = 0.25  # mean top-1 confidence falling by more rolls back (0: off)
    max_psi: float = 0.0  # PSI of the predicted classes against the previous version's over it rolls back (0: off,
    # reported only: after a drift the version being replaced may predict a few classes only, and its fix shifts them)
    labelled_bad: float = 0.2  # with feedback labels: the new version's share of wins where only one is right, H1
    wait_seconds: float = 600.0  # an undecided test holds probation this long past probation_seconds, then promotes

    def __post_init__(self) -> None:
        if self.mode not in QUALITY_MODES:
            raise ConfigError(f"quality.mode must be one of {', '.join(QUALITY_MODES)}, got {self.mode!r}")
        if not 1 <= self.min_samples <= 1_000_000:
            raise ConfigError(f"quality.min_samples must be within 1..1000000, got {self.min_samples}")
        if not self.min_samples <= self.max_samples <= 10_000_000:
            raise ConfigError(f"quality.max_samples must be within min_samples ({self.min_samples})..10000000, "
                              f"got {self.max_samples}")
        if not 0.0 < self.agreement_bad < self.agreement_good < 1.0:
            raise ConfigError("quality.agreement_bad and quality.agreement_good must be 0 < bad < good < 1, got "
                              f"{self.agreement_bad} and {self.agreement_good}")
        for name in ("alpha", "beta"):
            if not 0.0 < getattr(self, name) < 0.5:
                raise ConfigError(f"quality.{name} must be within (0, 0.5), got {getattr(self, name)}")
        if not 0.0 < self.labelled_bad < 0.5:
            raise ConfigError(f"quality.labelled_bad must be within (0, 0.5), got {self.labelled_bad}")
        if not 0.0 <= self.max_confidence_drop <= 1.0:
            raise ConfigError(f"quality.max_confidence_drop must be within [0, 1], got {self.max_confidence_drop}")
        if not (0.0 <= self.max_psi <= 100.0):
            raise ConfigError(f"quality.max_psi must be within [0, 100], got {self.max_psi}")
        if not 0.0 <= self.wait_seconds <= 7 * 86400.0:
            raise ConfigError(f"quality.wait_seconds must be within 0..604800, got {self.wait_seconds}")

    def thresholds(self) -> Thresholds:
        """The sequential test's parameters (:class:`.quality.Thresholds`)."""
        from .quality import Thresholds

        return Thresholds(self.min_samples, self.max_samples, self.agreement_good, self.agreement_bad, self.alpha,
                          self.beta, self.max_confidence_drop, self.max_psi, self.labelled_bad)

    def overridden(self, policy: Mapping[str, Any] | None) -> QualityConfig:
        """This configuration with a deployment's ``policy`` (a table of the same keys) over it, checked by the
        same coercer as the TOML (ConfigError: an unknown key, a wrong type, a value out of bounds, or a result
        that is inconsistent, such as agreement_bad >= agreement_good)."""
        if not policy:
            return self
        if not isinstance(policy, Mapping):
            raise ConfigError("the quality policy must be a table")
        unknown = sorted(set(policy) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"the quality policy has unknown option(s) {unknown}")
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        merged.update(policy)
        return from_table(QualityConfig, merged, "quality policy", _WORDING)


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = True
    max_events: int = 100_000  # queue bound; the oldest are dropped (and counted) beyond it
    flush_seconds: float = 10.0  # how often aggregated metrics become a queued record
    drift_threshold: float = 0.25  # PSI above this raises a drift event
    drift_window: int = 500  # inputs per drift judgement (tumbling window)

    def __post_init__(self) -> None:
        _positive("telemetry.max_events", self.max_events)
        _positive("telemetry.flush_seconds", self.flush_seconds)
        _positive("telemetry.drift_threshold", self.drift_threshold)
        _positive("telemetry.drift_window", self.drift_window)


@dataclass(frozen=True)
class SamplesConfig:
    enabled: bool = False
    max_samples: int = 10_000  # oldest samples are evicted beyond this
    key_file: str | None = None  # 32-byte device key (raw or base64); encrypts samples at rest

    def __post_init__(self) -> None:
        _positive("samples.max_samples", self.max_samples)


@dataclass(frozen=True)
class FederatedNodeConfig:
    """``[federated]``: the agent runs and supervises this device's ``flower-supernode``."""

    enabled: bool = False
    superlink: str = ""  # HOST:PORT of the coordinator's SuperLink
    root_certificates: str | None = None  # CA certificate of a TLS SuperLink
    insecure: bool = False  # plain HTTP: refused unless the SuperLink is on loopback
    port: int = 9094  # the node's local ClientApp I/O port
    auth_private_key: str | None = None  # SuperNode authentication: OpenSSH EC key (flwr supernode register)
    auth_public_key: str | None = None  # not needed with Flower 1.41 (derived from the private key)
    log_file: str | None = None  # default: <state_dir>/flower-node.log
    # serve the personal head a --personalize run kept for a version (edgefleet.device_agent.personal), when
    # the version is installed; false: always the bundle's signed global head
    personal_heads: bool = True

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        from .flower_node import is_loopback

        if ":" not in self.superlink:
            raise ConfigError(f"federated.superlink must be HOST:PORT, got {self.superlink!r}")
        if self.insecure and not is_loopback(self.superlink):
            raise ConfigError("federated.insecure is for a SuperLink on loopback only; "
                              "set federated.root_certificates for TLS")
        if not self.insecure and not self.root_certificates:
            raise ConfigError("federated.root_certificates is required for a TLS SuperLink "
                              "(or insecure = true for one on loopback)")
        if self.auth_public_key and not self.auth_private_key:
            raise ConfigError("federated node authentication needs auth_private_key")
        if not 0 < self.port < 65536:
            raise ConfigError(f"federated.port must be in 1..65535, got {self.port}")


@dataclass(frozen=True)
class AgentConfig:
    state_dir: str = "edgefleet-state"
    device_id: str = ""
    #: the model this device serves; a bundle of another name is refused (``wrong_model``).
    #: Empty: the name of the first model installed (setting it to another name re-assigns).
    model_name: str = ""
    hardware_tags: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()  # PEM files; also every *.pub in <state_dir>/trust/
    #: a TUF root.json pinned into <state_dir>/tuf/ at the first start (``agent trust-root``): from then
    #: on installs are checked against TUF metadata (see .tuf_mode); the device keeps its own chain after
    tuf_root: str | None = None
    require_signature: bool = True
    backend: str | None = None
    threads: int = 1
    store: StoreConfig = field(default_factory=StoreConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    federated: FederatedNodeConfig = field(default_factory=FederatedNodeConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        if not self.state_dir:
            raise ConfigError("agent.state_dir must not be empty")
        if self.model_name:
            try:
                check_name(self.model_name, "agent.model_name")
            except EdgefleetError as exc:
                raise ConfigError(str(exc)) from None
        _positive("agent.threads", self.threads)
        if self.federated.enabled and not self.samples.enabled:
            raise ConfigError("federated training needs local samples: set enabled = true in the [samples] section")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    def with_overrides(self, **changes: Any) -> AgentConfig:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> AgentConfig:
        """Build from the parsed TOML document; relative paths resolve against ``base_dir``."""
        if not isinstance(data, Mapping):
            raise ConfigError("the config must be a table")
        sections = {"agent", "store", "update", "telemetry", "samples", "federated", "quality"}
        unknown = sorted(set(data) - sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted(sections)}")
        agent_raw = dict(data.get("agent") or {})
        if not isinstance(data.get("agent", {}), Mapping):
            raise ConfigError("[agent] must be a table")
        nested = {"store", "update", "telemetry", "samples", "federated", "quality"} & set(agent_raw)
        if nested:
            raise ConfigError(f"{sorted(nested)} are sections of their own, not [agent] options")
        top = _section(_AgentTop, agent_raw, "agent")
        samples = _section(SamplesConfig, data.get("samples"), "samples")
        base = Path(base_dir) if base_dir is not None else None

        def resolve(p: str) -> str:
            return str(base / p) if base is not None and not os.path.isabs(p) else p

        if samples.key_file:
            samples = replace(samples, key_file=resolve(samples.key_file))
        federated = _section(FederatedNodeConfig, data.get("federated"), "federated")
        paths: dict[str, Any] = {k: resolve(v) for k in ("root_certificates", "auth_private_key", "auth_public_key",
                                                         "log_file") if isinstance(v := getattr(federated, k), str) and v}
        federated = replace(federated, **paths)
        return cls(
            state_dir=resolve(top.state_dir),
            device_id=top.device_id,
            model_name=top.model_name,
            hardware_tags=top.hardware_tags,
            trusted_keys=tuple(resolve(k) for k in top.trusted_keys),
            tuf_root=resolve(top.tuf_root) if top.tuf_root else None,
            require_signature=top.require_signature,
            backend=top.backend,
            threads=top.threads,
            store=_section(StoreConfig, data.get("store"), "store"),
            update=_section(UpdateConfig, data.get("update"), "update"),
            telemetry=_section(TelemetryConfig, data.get("telemetry"), "telemetry"),
            samples=samples,
            federated=federated,
            quality=_section(QualityConfig, data.get("quality"), "quality"),
        )


@dataclass(frozen=True)
class _AgentTop:
    state_dir: str = "edgefleet-state"
    device_id: str = ""
    model_name: str = ""
    hardware_tags: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    tuf_root: str | None = None
    require_signature: bool = True
    backend: str | None = None
    threads: int = 1


def load_config(path: str | os.PathLike) -> AgentConfig:
    """Read and validate an ``agent.toml``; relative paths are relative to its folder."""
    p = Path(path)
    data = read_toml(p, "config")
    try:
        return AgentConfig.from_dict(data, base_dir=p.parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
