"""Following a deployment from the client side, as pure functions of the API's summary of it
(``GET /v1/deployments/{id}``, :meth:`Coordinator.summary`): the progress line, how it ended and the error that
outcome is on the command line, the failing devices, and the devices' answers to a rollback.

``fleet deploy --wait``, ``fleet status DEP --watch`` and ``fleet rollback`` poll the API
(:func:`edgefleet.cloud_sync.coordinator.client.follow`) and decide with these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edgefleet.errors import (
    RollbackIncompleteError,
    RolloutCanceledError,
    RolloutError,
    RolloutHaltedError,
    RolloutRolledBackError,
)

from .rollout import BAD, OUTCOMES

TERMINAL = BAD | {"SUCCEEDED", "CANCELED"}
Summary = Mapping[str, Any]


def ended(s: Summary) -> bool:
    """Whether the rollout has an outcome (completed, halted, rolled back, canceled); running and paused have not."""
    return s.get("state") in OUTCOMES


def progress_line(s: Summary) -> str:
    """One line of progress: state, stage, devices done of the targets, the jobs' states, dispatched."""
    counts = s.get("counts") or {}
    states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    line = (f"{s.get('id')} {s.get('state')}: stage {s.get('stage')}, {s.get('done', 0)}/{s.get('targets', 0)} done, "
            f"{s.get('dispatched', sum(counts.values()))} dispatched" + (f" ({states})" if states else ""))
    rollbacks = s.get("rollbacks") or {}
    if rollbacks:
        line += "; rollbacks " + " ".join(f"{k}={v}" for k, v in sorted(rollbacks.items()))
    if s.get("reason") and s.get("state") != "running":
        line += f" - {s['reason']}"
    return line


def _job_text(j: Mapping[str, Any]) -> str:
    why = ": ".join(x for x in (j.get("reason") or "", j.get("message") or "") if x)
    return f"{j.get('device_id')} {j.get('status')}" + (f" ({why})" if why else "")


def failure_lines(s: Summary, most: int = 20) -> list[str]:
    """The failed install jobs, one line each: the device, its job's state, the reason and message it reported."""
    fails = list(s.get("failures") or [])
    lines = [_job_text(j) for j in fails[:most]]
    if len(fails) > most:
        lines.append(f"... and {len(fails) - most} more (--json lists them all)")
    return lines


def outcome_error(s: Summary) -> RolloutError | None:
    """The error a rollout's outcome is (None: completed, or no outcome yet)."""
    state, dep = s.get("state"), s.get("id")
    if state == "halted":
        fails = failure_lines(s, 5)
        return RolloutHaltedError(f"deployment {dep} halted: {s.get('reason') or 'the health gate'}"
                                  + (f"; failed: {'; '.join(fails)}" if fails else ""))
    if state == "rolled_back":
        return RolloutRolledBackError(f"deployment {dep} was rolled back: {s.get('reason') or ''}".rstrip(": "))
    if state == "canceled":
        return RolloutCanceledError(f"deployment {dep} was canceled: {s.get('reason') or ''}".rstrip(": "))
    return None


@dataclass(frozen=True)
class RollbackReport:
    """The devices' answers to a deployment's rollback: ``results`` (device, status, reason, message) of every
    rollback job; ``waiting`` the devices that have not answered yet (and those still installing the version,
    which are ordered back when they finish); ``failed`` those whose rollback failed or was refused."""

    results: tuple[tuple[str, str, str, str], ...]
    waiting: tuple[str, ...]
    failed: tuple[str, ...]

    @property
    def settled(self) -> bool:
        return not self.waiting


def rollback_report(s: Summary) -> RollbackReport:
    jobs = list(s.get("jobs") or [])
    rb = {j["device_id"]: j for j in jobs if j.get("action") == "rollback"}
    installing = sorted(j["device_id"] for j in jobs
                        if j.get("action") == "install" and j.get("status") not in TERMINAL and j["device_id"] not in rb)
    results = tuple((d, str(j.get("status")), str(j.get("reason") or ""), str(j.get("message") or ""))
                    for d, j in sorted(rb.items()))
    waiting = tuple(sorted([d for d, st, _, _ in results if st not in TERMINAL] + installing))
    # a device that runs another version than the one undone cancels the order (not_on_version): not on it either
    failed = tuple(d for d, st, reason, _ in results
                   if st in BAD or (st == "CANCELED" and reason != "not_on_version"))
    return RollbackReport(results, waiting, failed)


def rollback_error(s: Summary, report: RollbackReport, waited: float) -> RollbackIncompleteError | None:
    """The error a rollback's outcome is: a device failed, or did not answer within ``waited`` seconds."""
    parts = []
    if report.failed:
        parts.append(f"{len(report.failed)} device(s) failed to roll back: " + ", ".join(report.failed[:10]))
    if report.waiting:
        parts.append(f"{len(report.waiting)} device(s) did not answer within {waited:g}s: "
                     + ", ".join(report.waiting[:10]))
    if not parts:
        return None
    return RollbackIncompleteError(f"deployment {s.get('id')}: " + "; ".join(parts))


__all__ = ["ended", "progress_line", "failure_lines", "outcome_error", "RollbackReport", "rollback_report",
           "rollback_error"]
