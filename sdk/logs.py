"""Logging of the edgefleet daemons (``cloud serve``, ``agent run``, ``sync run``): one place, stdlib logging.

Modules log with ``logging.getLogger(__name__)`` and structured fields through ``extra``::

    log.info("device %s connected", device, extra={"event": "device_connected", "device": device})

:func:`configure` installs one handler on the root logger (calling it again replaces it) writing to the
standard error of the moment (a test that swaps ``sys.stderr`` sees the lines), in one of two formats:

- ``text``: ``2025-01-31T12:00:00.123Z INFO edgefleet.cloud_sync.coordinator.service: message key=value ...``
- ``json``: one JSON object a line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``msg``, then the fields given
  through ``extra`` (values JSON cannot hold are written as their ``str``) and ``exc`` for a traceback.

``level`` is that of edgefleet's own loggers; other libraries' loggers pass warnings and above (and everything at
``debug``). The ``edgefleet`` command sets both from ``--log-level``/``--log-format`` (or ``EDGEFLEET_LOG_LEVEL``/
``EDGEFLEET_LOG_FORMAT``); without a level, commands log warnings and the daemons raise that to ``info``
(:func:`daemon`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Final

from .errors import ConfigError

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
FORMATS: Final = ("text", "json")
ROOT: Final = "edgefleet"  # the package's loggers all live under it

#: the attributes every LogRecord has: anything else on a record came through ``extra``
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                        "taskName"}
if TYPE_CHECKING:
    _Stream = logging.StreamHandler[IO[str]]
else:
    _Stream = logging.StreamHandler

_given = False  # whether the last configure() had a level chosen by the user (not a default)


def _level(level: str | int) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        if level not in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            raise ConfigError(f"log level {level!r}: one of {', '.join(LEVELS)}")
        return level
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ConfigError(f"log level {str(level)[:40]!r}: one of {', '.join(LEVELS)}")
    value: int = getattr(logging, name.upper())
    return value


def _timestamp(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (what its call passed through ``extra``), in their given order."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _plain(value: Any) -> Any:
    """``value`` if JSON holds it as it is (nested too), else its ``str``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the ``extra`` fields, exc (a traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for key, value in fields(record).items():
            doc.setdefault(key, _plain(value))  # an extra named like a base key does not replace it
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger: message key=value ...`` (the ``extra`` fields appended), then a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = " ".join(f"{k}={json.dumps(_plain(v), ensure_ascii=False)}" for k, v in fields(record).items())
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _StderrHandler(_Stream):
    """Writes to ``sys.stderr`` as it is when a record is emitted (never a stream closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


class _Handler(_Stream):
    """The handler :func:`configure` installs on a given stream (the root logger holds one of ours at most)."""


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (text or json); a ConfigError names the choices otherwise."""
    name = str(fmt).strip().lower()
    if name == "json":
        return JsonFormatter()
    if name == "text":
        return TextFormatter()
    raise ConfigError(f"log format {str(fmt)[:40]!r}: one of {', '.join(FORMATS)}")


def configure(level: str | int = "info", fmt: str = "text", *, stream: IO[str] | None = None,
              given: bool = True) -> logging.Handler:
    """Log edgefleet's records at ``level`` and above (debug, info, warning, error, critical) in ``fmt`` (text or
    json) to ``stream`` (default: the standard error of the moment). Replaces the handler an earlier call
    installed; returns the new one. ``given=False`` marks ``level`` as a default that :func:`daemon` may lower
    to info. A level or format that does not exist is a ConfigError (exit code 2)."""
    global _given
    value, form = _level(level), formatter(fmt)
    handler: logging.Handler = _StderrHandler() if stream is None else _Handler(stream)
    handler.setFormatter(form)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, (_StderrHandler, _Handler))]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(value if value <= logging.DEBUG else max(value, logging.WARNING))
    logging.getLogger(ROOT).setLevel(value)
    _given = given
    return handler


def daemon() -> None:
    """A daemon starts: unless the user chose a level, edgefleet's loggers log from info up (connects, installs,
    rollouts), where one-shot commands log errors only (they report their outcome themselves)."""
    package = logging.getLogger(ROOT)
    if not _given and package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)


__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "configure", "daemon", "fields", "formatter"]
