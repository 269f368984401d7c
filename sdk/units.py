"""Durations and percentages as people write them (``6h``, ``30d``, ``5%``, ``0.05``): one parser each.

The command line reads them through :mod:`edgefleet.clitypes` (click parameter types), the coordinator's
API and rollout plans through the same functions, so ``--cooldown 6h`` means what ``cooldown_s`` does.
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhdw]?)\s*$")


def parse_seconds(text: str | float, what: str = "duration", *, bare: str = "s", lo: float = 0.0,
                  hi: float = math.inf) -> float:
    """``90``, ``90s``, ``10m``, ``6h``, ``30d`` or ``2w`` as seconds within ``lo``..``hi``; a bare number is in
    unit ``bare`` (seconds for timeouts and windows, days for metadata expiry)."""
    m = _DURATION.match(str(text).lower())
    if not m:
        raise ConfigError(f"{what} {text!r} is not a duration (like 90s, 10m, 6h, 30d or 2w)")
    v = float(m.group(1)) * UNITS[m.group(2) or bare]
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ConfigError(f"{what} {text!r} must be between {lo:g}s and {hi:g}s")
    return v


def parse_percent(text: str | float, what: str = "percentage") -> float:
    """``5%`` or ``0.05`` as 0.05. A bare number of 1 or more is refused as ambiguous: ``1`` could be 1% or
    100% (it was read as 100% while ``2`` was 2%, so ``--max-failure 1`` switched the health gate off)."""
    t = str(text).strip()
    pct = t.endswith("%")
    try:
        v = float(t[:-1]) / 100 if pct else float(t)
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not a percentage (like 5% or 0.05)") from None
    if not pct and v >= 1:
        raise ConfigError(f"{what} {text!r} is ambiguous: write a percentage with % (like {t}% or 100%) "
                          f"or a fraction below 1 (like 0.05)")
    if not (math.isfinite(v) and 0 <= v <= 1):
        raise ConfigError(f"{what} {text!r} is not within 0..100%")
    return v
