"""Staged rollouts as a pure function: ``evaluate(view) -> decision``.

A deployment's targets (sorted device ids) are split into cumulative stages:
the canary (a percentage, at least one device), then each wave percentage, the
last being 100%. A stage is dispatched all at once. The next stage starts when
every dispatched job has ended or belongs to a device that is offline (it will
get its job when it returns: the desired state is retained) and at least one
job of the stage has ended. The health gate is checked all the time: when the
bad outcomes (failed, rejected, rolled back, timed out) over the dispatched
jobs exceed ``max_failure``, the rollout halts, queued jobs are canceled and
devices that already run the new version are ordered back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgefleet.errors import ConfigError

BAD = frozenset({"FAILED", "REJECTED", "ROLLED_BACK", "TIMED_OUT"})
ENDED = BAD | {"SUCCEEDED", "CANCELED"}


@dataclass(frozen=True)
class RolloutPlan:
    canary: float = 0.05  # fraction of the targets
    waves: tuple[float, ...] = (1.0,)  # cumulative fractions, the last one 1.0
    max_failure: float = 0.0  # halt when bad/dispatched exceeds this

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary <= 1.0:
            raise ConfigError(f"canary must be within 0..100%, got {self.canary:.0%}")
        if not self.waves or any(not 0 < w <= 1 for w in self.waves) or list(self.waves) != sorted(self.waves):
            raise ConfigError("waves must be increasing percentages within (0, 100%]")
        if not 0.0 <= self.max_failure <= 1.0:
            raise ConfigError(f"max failure must be within 0..100%, got {self.max_failure}")

    def stage_ends(self, n: int) -> list[int]:
        """Cumulative device counts at the end of each stage (canary first)."""
        if n == 0:
            return []
        ends: list[int] = []
        if self.canary > 0:
            ends.append(min(n, max(1, math.ceil(self.canary * n))))
        for w in self.waves:
            e = min(n, max(1, math.ceil(w * n)))
            if not ends or e > ends[-1]:
                ends.append(e)
        if ends[-1] != n:
            ends.append(n)
        return ends


def parse_percent(text: str) -> float:
    t = str(text).strip()
    try:
        v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"{text!r} is not a percentage (like 5% or 0.05)") from None
    if v > 1 and not t.endswith("%"):
        v = v / 100
    if not 0 <= v <= 1:
        raise ConfigError(f"{text!r} is not within 0..100%")
    return v


@dataclass(frozen=True)
class View:
    state: str  # running | paused | halted | completed | rolled_back
    stage: int  # the highest stage dispatched so far (-1: none yet)
    targets: tuple[str, ...]
    jobs: dict[str, str]  # device -> status of its install job (dispatched devices only)
    online: frozenset[str]


@dataclass(frozen=True)
class Decision:
    dispatch: tuple[str, ...] = ()
    stage: int | None = None
    halt: str = ""
    rollback: tuple[str, ...] = ()  # devices that run the new version and must go back
    cancel: tuple[str, ...] = ()  # dispatched jobs not started yet
    complete: bool = False
    counts: dict[str, int] = field(default_factory=dict)


def evaluate(plan: RolloutPlan, view: View) -> Decision:
    counts: dict[str, int] = {}
    for s in view.jobs.values():
        counts[s] = counts.get(s, 0) + 1
    if view.state not in ("running", "paused"):
        return Decision(counts=counts)
    dispatched = len(view.jobs)
    bad = sum(1 for s in view.jobs.values() if s in BAD)
    if dispatched and bad / dispatched > plan.max_failure:
        return Decision(
            halt=f"{bad} of {dispatched} dispatched jobs failed ({bad / dispatched:.0%} > {plan.max_failure:.0%})",
            rollback=tuple(sorted(d for d, s in view.jobs.items() if s == "SUCCEEDED")),
            cancel=tuple(sorted(d for d, s in view.jobs.items() if s in ("QUEUED", "DOWNLOADING"))),
            counts=counts,
        )
    if view.state == "paused":
        return Decision(counts=counts)
    ends = plan.stage_ends(len(view.targets))
    if not ends:
        return Decision(complete=True, counts=counts)
    if view.stage < 0:
        return Decision(dispatch=tuple(view.targets[: ends[0]]), stage=0, counts=counts)
    waiting = [d for d, s in view.jobs.items() if s not in ENDED and d in view.online]
    ended = sum(1 for s in view.jobs.values() if s in ENDED)
    if waiting or ended == 0:
        return Decision(counts=counts)
    if view.stage + 1 < len(ends):
        start = ends[view.stage]
        return Decision(dispatch=tuple(view.targets[start : ends[view.stage + 1]]), stage=view.stage + 1,
                        counts=counts)
    if all(s in ENDED for s in view.jobs.values()) and len(view.jobs) == len(view.targets):
        return Decision(complete=True, counts=counts)
    return Decision(counts=counts)


__all__ = ["RolloutPlan", "View", "Decision", "evaluate", "parse_percent", "BAD", "ENDED"]
