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

Devices that join the group after the deployment was created are appended to
its targets (``View.planned`` counts the original ones, which alone decide the
stage sizes). A joiner is due once the rollout has passed the canary (or at
once if the plan has a single stage): it is dispatched with the current wave,
or right away when the deployment has completed. A paused deployment holds
joiners until it resumes; a halted or rolled-back one never dispatches them.

Two limits shape a rollout further (both off by default):

* ``rate``: at most that many devices dispatched in any minute (AWS IoT Jobs' ``maximumPerMinute``): a stage
  whose devices do not fit goes out over several ticks, the devices not yet dispatched being ``held``;
* ``min_finished``: the health gate judges the failure rate only once that many jobs have ended (AWS'
  ``minNumberOfExecutedThings``), or every target's has: one failed canary does not halt a rollout at
  ``100% > 2%`` when the operator asked for ten finished devices first.

The operator may cancel a running or paused deployment (state ``canceled``): devices not dispatched yet get
nothing, jobs not started (queued or downloading) are canceled, installs under way finish; nothing is rolled back.
:func:`action_refusal` says why a requested action (pause, resume, rollback, cancel) does not apply to a state.

Jobs time out like AWS IoT Jobs' in-progress timer (:func:`timed_out`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from edgefleet.errors import ConfigError, ProtocolError
from edgefleet.units import parse_percent

if TYPE_CHECKING:
    from ..wire.protocol import QualityPolicy

from .rows import DeploymentState

BAD = frozenset({"FAILED", "REJECTED", "ROLLED_BACK", "TIMED_OUT"})
ENDED = BAD | {"SUCCEEDED", "CANCELED"}
STARTED = frozenset({"DOWNLOADING", "IN_PROGRESS"})
DEFAULT_JOB_TIMEOUT = 3600.0  # seconds a started job may take before it is TIMED_OUT
MAX_JOB_TIMEOUT = 7 * 86400.0


@dataclass(frozen=True)
class RolloutPlan:
    canary: float = 0.05  # fraction of the targets
    waves: tuple[float, ...] = (1.0,)  # cumulative fractions, the last one 1.0
    max_failure: float = 0.0  # halt when bad/dispatched exceeds this
    rate: int = 0  # devices dispatched per minute at most (0: no limit)
    min_finished: int = 0  # jobs ended before the failure rate is judged (0: judged from the first failure)

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary <= 1.0:
            raise ConfigError(f"canary must be within 0..100%, got {self.canary:.0%}")
        if not self.waves or any(not 0 < w <= 1 for w in self.waves) or list(self.waves) != sorted(self.waves):
            raise ConfigError("waves must be increasing percentages within (0, 100%]")
        if not 0.0 <= self.max_failure <= 1.0:
            raise ConfigError(f"max failure must be within 0..100%, got {self.max_failure}")
        if not 0 <= self.rate <= MAX_DISPATCH_RATE:
            raise ConfigError(f"the rate must be within 1..{MAX_DISPATCH_RATE} devices per minute (0: no limit), "
                              f"got {self.rate}")
        if not 0 <= self.min_finished <= MAX_MIN_FINISHED:
            raise ConfigError(f"min finished must be within 0..{MAX_MIN_FINISHED} devices, got {self.min_finished}")

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


MAX_DISPATCH_RATE = 100_000  # devices per minute: beyond it a limit limits nothing
MAX_MIN_FINISHED = 1_000_000
RATE_WINDOW = 60.0  # seconds: ``rate`` devices at most are dispatched within any window this long
#: the states a rollout ends in (completed ones still dispatch to joiners)
OUTCOMES = tuple(s for s in DeploymentState if not s.live)


def parse_dispatch_rate(text: str | int) -> int:
    """``--rate``: ``20/min``, ``600/h`` or a bare number (per minute) as devices per minute; ``off`` or ``0``: no
    limit (0). A rate per hour must come to whole devices per minute (AWS IoT Jobs counts per minute too)."""
    t = str(text).strip().lower().replace(" ", "")
    if t in ("off", "none", "0", "0/min", "0/h"):
        return 0
    num, _, unit = t.partition("/")
    per = {"": 1, "min": 1, "m": 1, "h": 60, "hour": 60}.get(unit)
    try:
        n = int(num)
    except ValueError:
        n = -1
    if per is None or n <= 0 or n % per or not 1 <= n // per <= MAX_DISPATCH_RATE:
        raise ConfigError(f"rate {text!r} is not a number of devices per minute (like 20/min or 600/h) within "
                          f"1..{MAX_DISPATCH_RATE}/min, or off")
    return n // per


def action_refusal(action: str, state: DeploymentState | str, reason: str = "") -> str:
    """Why ``action`` (pause, resume, rollback, cancel) does not apply to a deployment in ``state`` ("" if it
    does). A refused action changes nothing; the API answers 409 with this text."""
    why = f" ({reason})" if reason else ""
    state = DeploymentState(state)
    allowed = {"pause": (DeploymentState.RUNNING,), "resume": (DeploymentState.PAUSED,),
               "cancel": (DeploymentState.RUNNING, DeploymentState.PAUSED),
               "rollback": tuple(s for s in DeploymentState if s is not DeploymentState.ROLLED_BACK)}
    if action not in allowed:
        return f"unknown action {action!r}: pause, resume, rollback or cancel"
    if state in allowed[action]:
        return ""
    if (action, state) in (("pause", DeploymentState.PAUSED), ("cancel", DeploymentState.CANCELED),
                           ("rollback", DeploymentState.ROLLED_BACK)):
        return f"the deployment is {state.replace('_', ' ')} already{why}: nothing to {action}"
    if action == "resume" and state is DeploymentState.RUNNING:
        return "the deployment is running, not paused: nothing to resume"
    if action == "resume" and state is DeploymentState.HALTED:
        return (f"the deployment halted{why}; a halted rollout cannot resume: roll it back, or deploy again "
                "(with --max-failure or --min-finished if the gate was too strict)")
    if state is DeploymentState.COMPLETED:
        return f"the deployment has completed: nothing to {action} (roll it back to undo it)"
    return f"the deployment is {state.replace('_', ' ')}{why}: it cannot {action}"


MAX_TOKEN_TTL = 366 * 86400.0  # an API token's lifetime at most (a year, leap day included)


def parse_duration(text: str | float, what: str = "job timeout", lo: float = 1.0, hi: float = MAX_JOB_TIMEOUT
                   ) -> float:
    """``90``, ``90s``, ``10m``, ``2h`` or ``1d`` as seconds, within ``lo``..``hi`` (a job timeout: 1 s .. 7 days;
    an API token's lifetime: 1 s .. 366 days)."""
    t = str(text).strip().lower()
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    try:
        v = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise ConfigError(f"{text!r} is not a duration (like 90s, 10m, 2h or 1d)") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{what} {text!r} must be between {_fmt(lo)} and {_fmt(hi)}")
    return v


MAX_RATE = 1e9  # records per second: beyond it a limit limits nothing


def parse_rate(text: str | float) -> float | None:
    """A rate of telemetry records per device: ``1000/s``, ``6000/min``, ``50000/h`` or a bare number (per second)
    as records per second; ``off`` or ``0``: no limit (None)."""
    t = str(text).strip().lower().replace(" ", "")
    if t in ("off", "none", "0", "0/s", "0/min", "0/h"):
        return None
    num, _, unit = t.partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hour": 3600.0}.get(unit)
    try:
        v = float(num) / per if per else math.nan
    except ValueError:
        v = math.nan
    if not 0 < v <= MAX_RATE:  # NaN too
        raise ConfigError(f"{text!r} is not a rate (like 1000/s, 6000/min, 50000/h, or off)")
    return v


def timed_out(status: str, started: float, delivered: float, online: bool, now: float, timeout: float) -> str:
    """Why a job is TIMED_OUT now ("" if it is not).

    A started job (the device reported DOWNLOADING or IN_PROGRESS) has ``timeout``
    seconds from its first report to reach a terminal state, online or not. A
    queued job times out only while its device is online: the clock runs from
    the moment the job reached the online device (``delivered``, reset when the
    device comes back). An offline device that has not started is never timed
    out: it gets its job when it returns.
    """
    if status in STARTED and started > 0 and now - started > timeout:
        return f"no terminal status within {_fmt(timeout)} of starting (last: {status})"
    if status == "QUEUED" and online and delivered > 0 and now - delivered > timeout:
        return f"the online device did not start the job within {_fmt(timeout)}"
    return ""


def _fmt(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


MAX_TAGS = 64  # a device's tags and a deployment's selector: as many as a status message may carry
TAG = r"[^,\x00-\x20\x7f]{1,128}"  # one tag: 1-128 characters, no comma, space or control character


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags the operator gives (a device's, a deployment's selector): distinct, sorted, bounded; ConfigError else."""
    import re

    out = sorted(set(tags))
    if len(out) > MAX_TAGS or not all(isinstance(t, str) and re.fullmatch(TAG, t) for t in out):
        raise ConfigError(f"tags must be at most {MAX_TAGS} names of 1-128 characters without commas, spaces or "
                          "control characters")
    return out


def parse_plan(canary: str, waves: str, max_failure: str) -> RolloutPlan:
    """A rollout plan from its option strings (``fleet deploy``, ``federated run --deploy``, the API)."""
    return RolloutPlan(parse_percent(canary, "canary"),
                       tuple(parse_percent(w, "wave") for w in str(waves).split(",") if w.strip()),
                       parse_percent(max_failure, "max failure"))


def parse_quality(text: str) -> QualityPolicy | None:
    """A deployment's quality policy from its option string (``fleet deploy --quality``, the API's ``quality``):
    comma-separated ``option=value`` pairs of the devices' ``[quality]`` options (``mode=enforce,agreement_bad=0.3``),
    a bare word being the mode (``enforce``); "" none. ConfigError for an unknown option or a value out of bounds."""
    from ..wire.protocol import QUALITY_BOUNDS, QualityPolicy

    t = str(text).strip()
    if not t:
        return None
    options: dict[str, object] = {}
    for part in t.split(","):
        key, eq, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            key, value = "mode", key
        if key in options:
            raise ConfigError(f"quality option {key!r} is given twice")
        if key == "mode":
            options[key] = value
        elif key in QUALITY_BOUNDS:
            try:
                options[key] = int(value) if QUALITY_BOUNDS[key][0] is int else float(value)
            except ValueError:
                raise ConfigError(f"quality option {key}={value!r} is not a number") from None
        else:
            raise ConfigError(f"unknown quality option {key!r}; known: mode, {', '.join(QUALITY_BOUNDS)}")
    try:
        return QualityPolicy.from_dict(options)
    except ProtocolError as exc:
        raise ConfigError(f"quality policy: {exc}") from None


@dataclass(frozen=True)
class View:
    state: DeploymentState
    stage: int  # the highest stage dispatched so far (-1: none yet)
    targets: tuple[str, ...]
    jobs: dict[str, str]  # device -> status of its install job (dispatched devices only)
    online: frozenset[str]
    planned: int = -1  # how many of ``targets`` were planned at creation (the rest joined later); -1: all
    dispatch_times: tuple[float, ...] = ()  # when each install job was dispatched (for the plan's rate)
    now: float = 0.0  # the clock of ``dispatch_times``
    reasons: dict[str, str] = field(default_factory=dict)  # device -> the reason its failed job reported


@dataclass(frozen=True)
class Decision:
    dispatch: tuple[str, ...] = ()
    stage: int | None = None
    halt: str = ""
    rollback: tuple[str, ...] = ()  # devices that run the new version and must go back
    cancel: tuple[str, ...] = ()  # dispatched jobs not started yet
    complete: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    held: tuple[str, ...] = ()  # devices due now but held back by the plan's rate (dispatched on later ticks)
    failed: tuple[str, ...] = ()  # the devices whose jobs failed (bad states), when the rollout halts


def budget(plan: RolloutPlan, view: View) -> int | None:
    """How many devices may be dispatched now under the plan's rate (None: no limit): the rate less the jobs
    dispatched within the last :data:`RATE_WINDOW` seconds."""
    if not plan.rate:
        return None
    recent = sum(1 for t in view.dispatch_times if view.now - RATE_WINDOW < t <= view.now)
    return max(0, plan.rate - recent)


def judged(plan: RolloutPlan, view: View) -> bool:
    """Whether the health gate judges the failure rate now: once ``min_finished`` jobs have ended, or every
    target's job has (a fleet smaller than ``min_finished`` is judged at its end)."""
    ended = sum(1 for s in view.jobs.values() if s in ENDED)
    return ended >= min(plan.min_finished, len(view.targets)) or (
        len(view.jobs) >= len(view.targets) and ended == len(view.jobs))


def _names(devices: list[str], most: int = 5) -> str:
    return ", ".join(devices[:most]) + (f" and {len(devices) - most} more" if len(devices) > most else "")


def evaluate(plan: RolloutPlan, view: View) -> Decision:
    counts: dict[str, int] = {}
    for s in view.jobs.values():
        counts[s] = counts.get(s, 0) + 1
    allowed = budget(plan, view)

    def limited(due: tuple[str, ...], stage: int) -> Decision:
        """Dispatch ``due`` (as ``stage``) within the rate: the first ones that fit, the rest held."""
        n = len(due) if allowed is None else allowed
        if not due[:n]:
            return Decision(counts=counts, held=due)
        return Decision(dispatch=due[:n], held=due[n:], stage=stage, counts=counts)

    if view.state == DeploymentState.COMPLETED:  # only joiners are left: they get the job right away
        late = tuple(d for d in view.targets if d not in view.jobs)
        return limited(late, view.stage) if late else Decision(counts=counts)
    if not DeploymentState(view.state).live:
        return Decision(counts=counts)
    dispatched = len(view.jobs)
    failed = sorted(d for d, s in view.jobs.items() if s in BAD)
    bad = len(failed)
    if dispatched and bad / dispatched > plan.max_failure and judged(plan, view):
        return Decision(
            halt=f"{bad} of {dispatched} dispatched jobs failed ({bad / dispatched:.0%} > {plan.max_failure:.0%}"
                 + (f", {sum(1 for s in view.jobs.values() if s in ENDED)} finished"
                    f" >= {plan.min_finished}" if plan.min_finished else "") + "): "
                 + _names([f"{d} ({view.reasons[d]})" if view.reasons.get(d) else d for d in failed]),
            rollback=tuple(sorted(d for d, s in view.jobs.items() if s == "SUCCEEDED")),
            cancel=tuple(sorted(d for d, s in view.jobs.items() if s in ("QUEUED", "DOWNLOADING"))),
            counts=counts, failed=tuple(failed),
        )
    if view.state == DeploymentState.PAUSED:
        return Decision(counts=counts)
    if not view.targets:
        return Decision(complete=True, counts=counts)
    planned = view.planned if 0 <= view.planned <= len(view.targets) else len(view.targets)
    ends = plan.stage_ends(planned) or [0]
    last = len(ends) - 1
    joiners = view.targets[planned:]

    def due(stage: int) -> tuple[str, ...]:
        """Who must have a job once ``stage`` has started; joiners from the first wave after the canary."""
        return view.targets[: ends[stage]] + (joiners if stage >= min(1, last) else ())

    if view.stage < 0:
        return limited(due(0), 0)
    stage = min(view.stage, last)
    missing = tuple(d for d in due(stage) if d not in view.jobs)
    if missing:  # devices of this stage the rate held back, or that joined the group during it
        return limited(missing, stage)
    waiting = [d for d, s in view.jobs.items() if s not in ENDED and d in view.online]
    ended = sum(1 for s in view.jobs.values() if s in ENDED)
    if waiting or ended == 0:
        return Decision(counts=counts)
    if stage < last:
        return limited(tuple(d for d in due(stage + 1) if d not in view.jobs), stage + 1)
    if all(s in ENDED for s in view.jobs.values()) and len(view.jobs) == len(view.targets):
        return Decision(complete=True, counts=counts)
    return Decision(counts=counts)


__all__ = ["RolloutPlan", "View", "Decision", "evaluate", "budget", "judged", "action_refusal", "parse_dispatch_rate",
           "OUTCOMES", "parse_percent", "parse_plan", "parse_quality", "parse_duration", "timed_out", "BAD",
           "ENDED", "STARTED", "DEFAULT_JOB_TIMEOUT"]
