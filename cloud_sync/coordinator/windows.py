"""Telemetry over time windows (pure: no I/O): what the registry keeps per minute and what a window reports.

Devices flush one ``metrics`` record per interval (``device_agent.telemetry``): per model version the
predictions, errors, invalid inputs and a latency histogram over fixed buckets (``device_agent.health.BUCKETS_MS``).
The registry adds each record to the minute it was taken in (per fleet, group and version: counts and the
histogram's bucket counts), so ``GET /v1/telemetry?window=1h`` sums the minutes of the last hour and reads p50/p95
from the summed histogram. A device's newest record is also kept, summarized (:func:`device_summary`), as its
recent telemetry.

Nothing here trusts the device: a histogram must have exactly the known buckets, each count an integer within a
BIGINT (else the record is refused, as out-of-bounds counts are); a histogram over other bucket bounds (another
agent version) is left out of the percentiles, its counts still counted. A record's time is the device's clock:
one from the future counts as now, one older than :data:`RETENTION` only in the all-time totals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from edgefleet.device_agent.health import BUCKETS_MS

MINUTE = 60  # seconds per stored slot
RETENTION = 7 * 86400.0  # slots older than this are pruned, and a window is at most this long
MIN_WINDOW = 60.0
NB = len(BUCKETS_MS) + 1  # histogram buckets, the last one open-ended
_BOUNDS = [float(b) for b in BUCKETS_MS]
_INT = {int}  # the one type a histogram count may have (not bool, not float)
MAX_BIGINT = 2**63 - 1
MAX_RECENT_VERSIONS = 8  # a device's recent telemetry: its busiest versions only (version names are its choice)
MAX_FUTURE = 300.0  # seconds a device's clock may run ahead before its record counts as "now"


def latency_counts(st: Mapping[str, Any]) -> list[int] | None | bool:
    """The bucket counts of one version's ``latency`` histogram: a list of :data:`NB` counts; None when there is
    none or it has other bucket bounds (left out of the percentiles); False when it is malformed (refuse the
    record)."""
    lat = st.get("latency")
    if lat is None:
        return None
    if type(lat) is not dict:
        return False
    bounds, counts = lat.get("buckets_ms"), lat.get("counts")
    if bounds != _BOUNDS:
        return None if type(bounds) is list else False
    if type(counts) is not list or len(counts) != NB or set(map(type, counts)) != _INT:
        return False
    if min(counts) < 0 or max(counts) > MAX_BIGINT:
        return False
    return counts


def slot(ts: float, now: float) -> int | None:
    """The minute (its start, epoch seconds) a record taken at ``ts`` (the device's clock) counts in; None when it
    is older than the retention (it counts in the all-time totals only)."""
    if not math.isfinite(ts):
        return None
    t = now if ts > now + MAX_FUTURE else ts
    if t < now - RETENTION:
        return None
    return int(t // MINUTE) * MINUTE


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram as its bucket's upper bound in milliseconds (conservative, as the
    device's own); the open-ended last bucket reads as its lower bound (the quantile is at least that); None
    without samples."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if n and seen >= rank:
            return _BOUNDS[i] if i < len(_BOUNDS) else _BOUNDS[-1]
    return _BOUNDS[-1]


@dataclass(frozen=True)
class WindowStats:
    """One (group, version) over a window: summed counts and latency histogram, read as rates and percentiles."""

    group: str
    version: str
    records: int
    predictions: int
    errors: int
    invalid: int
    latency: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        samples = sum(self.latency)
        return {"group": self.group, "version": self.version, "records": self.records,
                "predictions": self.predictions, "errors": self.errors, "invalid": self.invalid,
                "error_rate": self.errors / self.predictions if self.predictions else 0.0,
                "latency_samples": samples, "p50_ms": quantile(self.latency, 0.5),
                "p95_ms": quantile(self.latency, 0.95)}


def window_since(now: float, seconds: float) -> int:
    """The first minute slot of a window of ``seconds`` ending ``now``: every minute it touches counts (so a window
    of an hour sums 60 or 61 minute slots)."""
    return int((now - seconds) // MINUTE) * MINUTE


def _num(v: Any) -> float | None:
    if type(v) in (int, float) and math.isfinite(v) and abs(v) < 1e15:
        return float(v)
    return None


def device_summary(ts: float, data: Mapping[str, Any], counts: Mapping[str, tuple[int, int, int, list[int] | None]]
                   ) -> dict[str, Any]:
    """A device's newest metrics record, summarized for its page (bounded whatever it sent): when, its window,
    per version (its :data:`MAX_RECENT_VERSIONS` busiest) predictions, errors, invalid inputs, p50/p95, and its
    drift scores. ``counts``: version -> (predictions, errors, invalid, latency bucket counts or None), validated."""
    busiest = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_RECENT_VERSIONS]
    versions = {v: {"predictions": p, "errors": e, "invalid_inputs": i,
                    "p50_ms": quantile(lat, 0.5) if lat else None, "p95_ms": quantile(lat, 0.95) if lat else None}
                for v, (p, e, i, lat) in busiest}
    out: dict[str, Any] = {"ts": ts, "window_start": _num(data.get("window_start")),
                           "window_end": _num(data.get("window_end")), "versions": versions}
    drift = data.get("drift")
    if type(drift) is dict:
        version = drift.get("version")
        out["drift"] = {"psi_max": _num(drift.get("psi_max")), "psi_mean": _num(drift.get("psi_mean")),
                        "alerting": drift.get("alerting") is True,
                        "version": version[:128] if type(version) is str else ""}
    return out


__all__ = ["MINUTE", "NB", "RETENTION", "WindowStats", "device_summary", "latency_counts", "quantile", "slot",
           "window_since"]
