"""edgefleet.logs: one configure(level, fmt) for every daemon: text or one JSON object a line, extra fields kept."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgefleet import logs
from edgefleet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root, package = logging.getLogger(), logging.getLogger(logs.ROOT)
    handlers, levels = list(root.handlers), (root.level, package.level)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(levels[0])
    package.setLevel(levels[1])


def test_json_lines_carry_ts_level_logger_msg_and_the_extra_fields() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("edgefleet.cloud_sync.coordinator.service")
    log.info("device %s connected", "d1", extra={"event": "device_connected", "device": "d1", "session": 3,
                                                 "tags": ("a", "b"), "odd": object(), "lag": float("inf")})
    log.debug("not at info")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("ingest failed", extra={"event": "ingest_error"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["level"] == "info" and first["logger"] == "edgefleet.cloud_sync.coordinator.service"
    assert first["msg"] == "device d1 connected" and first["ts"].endswith("Z")
    assert first["event"] == "device_connected" and first["device"] == "d1" and first["session"] == 3
    assert first["tags"] == ["a", "b"] and first["odd"].startswith("<object") and first["lag"] == "inf"
    assert lines[1]["level"] == "error" and "ValueError: bad" in lines[1]["exc"]


def test_text_lines_and_the_stream_of_the_moment(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("debug", "text")  # no stream: sys.stderr when each record is written
    logging.getLogger("edgefleet.device_agent.agent").debug("installed %s", "v2", extra={"event": "install"})
    err = capsys.readouterr().err
    assert " DEBUG edgefleet.device_agent.agent: installed v2 event=\"install\"" in err


def test_configure_replaces_its_handler_and_leaves_other_libraries_at_warnings() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("info", "text", stream=first)
    logs.configure("info", "json", stream=second)
    ours = [h for h in logging.getLogger().handlers if h.formatter is not None and
            isinstance(h.formatter, (logs.JsonFormatter, logs.TextFormatter))]
    assert len(ours) == 1
    logging.getLogger("httpx").info("HTTP Request: GET /")  # a library's info line: not shown
    logging.getLogger("edgefleet.x").info("ours")
    assert first.getvalue() == "" and [json.loads(x)["msg"] for x in second.getvalue().splitlines()] == ["ours"]


def test_daemons_log_from_info_unless_a_level_was_given() -> None:
    out = io.StringIO()
    log = logging.getLogger("edgefleet.cloud_sync.device.driver")
    logs.configure("warning", "json", stream=out, given=False)  # a command's default
    log.info("hidden")
    logs.daemon()
    log.info("connected")
    logs.configure("error", "json", stream=out)  # the user's choice holds for daemons too
    logs.daemon()
    log.info("hidden too")
    assert [json.loads(x)["msg"] for x in out.getvalue().splitlines()] == ["connected"]


@pytest.mark.parametrize("level, fmt", [("loud", "text"), ("info", "xml"), (5, "text")])
def test_unknown_level_or_format_is_a_config_error(level: str | int, fmt: str) -> None:
    with pytest.raises(ConfigError) as err:
        logs.configure(level, fmt, stream=io.StringIO())
    assert err.value.exit_code == 2 and ("debug, info" in str(err.value) or "text, json" in str(err.value))


def test_logs_module_is_mypy_strict_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           str(ROOT / "sdk" / "logs.py")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
