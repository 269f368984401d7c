"""When drift alerts start a federated run: a pure policy, no I/O (the coordinator drives it).

``DriftTrigger.handle(alert, now)`` returns a :class:`StartRun` when the operator
enabled automatic retraining for the alert's group, enough distinct devices of the
group reported drift within ``window_s``, no run for the group is in progress and
the cool-down since the last run has passed. The coordinator calls
:meth:`DriftTrigger.finished` when the run ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.errors import ConfigError


@dataclass(frozen=True)
class TriggerPolicy:
    enabled: bool = False
    min_devices: int = 2  # distinct devices of the group reporting drift
    window_s: float = 3600.0  # ... within this window
    cooldown_s: float = 6 * 3600.0  # between two automatic runs of a group
    rounds: int = 5
    strategy: str = "fedavg"

    def __post_init__(self) -> None:
        if self.min_devices < 1 or self.window_s <= 0 or self.cooldown_s < 0 or self.rounds < 1:
            raise ConfigError("min_devices and rounds must be >= 1, window_s > 0, cooldown_s >= 0")


@dataclass(frozen=True)
class DriftAlert:
    group: str
    device_id: str
    version: str
    score: float = 0.0


@dataclass(frozen=True)
class StartRun:
    group: str
    rounds: int
    strategy: str
    reason: str


@dataclass
class _GroupState:
    alerts: dict[str, float] = field(default_factory=dict)  # device -> last alert time
    running: bool = False
    last_start: float | None = None


class DriftTrigger:
    def __init__(self, policies: dict[str, TriggerPolicy] | None = None) -> None:
        self.policies = dict(policies or {})
        self._groups: dict[str, _GroupState] = {}

    def set_policy(self, group: str, policy: TriggerPolicy) -> None:
        self.policies[group] = policy

    def handle(self, alert: DriftAlert, now: float) -> StartRun | None:
        policy = self.policies.get(alert.group)
        if policy is None or not policy.enabled:
            return None
        st = self._groups.setdefault(alert.group, _GroupState())
        st.alerts[alert.device_id] = now
        for dev in [d for d, t in st.alerts.items() if now - t > policy.window_s]:
            del st.alerts[dev]
        if st.running or len(st.alerts) < policy.min_devices:
            return None
        if st.last_start is not None and now - st.last_start < policy.cooldown_s:
            return None
        st.running, st.last_start = True, now
        devices = sorted(st.alerts)
        st.alerts.clear()
        return StartRun(alert.group, policy.rounds, policy.strategy,
                        f"drift on {len(devices)} device(s) of {alert.group}: {', '.join(devices[:5])}")

    def restore(self, group: str, last_start: float) -> None:
        """Carry the start time of a run recorded before a restart into the cool-down."""
        st = self._groups.setdefault(group, _GroupState())
        st.last_start = max(st.last_start or last_start, last_start)

    def finished(self, group: str) -> None:
        st = self._groups.get(group)
        if st is not None:
            st.running = False


__all__ = ["TriggerPolicy", "DriftAlert", "StartRun", "DriftTrigger"]
