"""click parameter types shared by every ``edgefleet`` command: a duration and a percentage.

One converter each (:mod:`edgefleet.units` parses): ``--cooldown 6h``, ``--expires 30d``, ``--canary 5%``
read the same everywhere. A value they refuse is a :class:`~edgefleet.errors.ConfigError` naming the option,
so the command line reports it as every refusal: one line, exit code 2.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import click

from .units import parse_percent, parse_seconds


def _name(param: click.Parameter | None, default: str) -> str:
    opts = getattr(param, "opts", None)
    return max(opts, key=len) if opts else default


class Duration(click.ParamType["float | dt.timedelta"]):
    """``90s``, ``10m``, ``6h``, ``30d``, ``2w`` (a bare number is in unit ``bare``): seconds (a float), or a
    ``timedelta`` with ``timedelta=True``; refused outside ``lo``..``hi`` seconds."""

    name = "duration"

    def __init__(self, *, bare: str = "s", lo: float = 0.0, hi: float = math.inf, timedelta: bool = False) -> None:
        self.bare, self.lo, self.hi, self.timedelta = bare, lo, hi, timedelta

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | dt.timedelta:
        if isinstance(value, (dt.timedelta, float, int)) and not isinstance(value, bool):
            seconds = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
        else:
            seconds = parse_seconds(value, _name(param, "duration"), bare=self.bare, lo=self.lo, hi=self.hi)
        return dt.timedelta(seconds=seconds) if self.timedelta else seconds


class Percent(click.ParamType[str]):
    """``5%`` or ``0.05`` (a bare number of 1 or more is refused as ambiguous), comma-separated with
    ``many``; the option keeps its text (what the API takes) once it is checked."""

    name = "percent"

    def __init__(self, what: str = "percentage", many: bool = False) -> None:
        self.what, self.many = what, many

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        for part in (text.split(",") if self.many else [text]):
            if part.strip() or not self.many:
                parse_percent(part, self.what if param is None else f"{_name(param, self.what)} {self.what}")
        return text


#: metadata expiry and clock skew: a bare number is days
DURATION_DAYS = Duration(bare="d", timedelta=True)
