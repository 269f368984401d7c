"""``fleet devices`` says when the coordinator itself is cut off from the broker (issue 15: every device showed
its last state, exit 0, while the real fault was visible only at /healthz)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator, device, serve_api

from edgefleet.cli import main
from edgefleet.errors import SyncError

TOKEN = "admin-token-broker-state"


def test_fleet_devices_warns_when_the_coordinator_lost_the_broker(broker: Any, tmp_path: Path, make_agent: Any,
                                                                 archives: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)
    coord = coordinator(broker.url, tmp_path / "reg.db")
    sync = device(broker.url, make_agent("cam-1", install=archives["1"]), tmp_path, group="g")
    try:
        wait_for(lambda: coord.registry.device("f1", "cam-1") is not None and
                 coord.registry.device("f1", "cam-1").online)  # type: ignore[union-attr]
        with serve_api(coord, TOKEN) as url:
            capsys.readouterr()
            assert main(["fleet", "devices", "--api", url]) == 0  # connected: the list, nothing else
            out, err = capsys.readouterr()
            assert "cam-1" in out and "disconnected" not in err

            broker.kill()  # the broker dies; the registry keeps what it last heard
            wait_for(lambda: not coord.transport.connected)
            code = main(["fleet", "devices", "--api", url])
            out, err = capsys.readouterr()
            assert code == SyncError.exit_code != 0
            assert "cam-1" in out  # the list is still shown ...
            warning = [line for line in err.splitlines() if "warning" in line]
            assert warning and "coordinator is disconnected from the broker" in warning[0], err
            assert "not live" in warning[0]

            assert main(["fleet", "devices", "--api", url, "--json"]) == SyncError.exit_code  # scripts notice too
            out, err = capsys.readouterr()
            assert [d["device_id"] for d in json.loads(out)] == ["cam-1"] and "disconnected from the broker" in err
    finally:
        sync.stop(graceful=False)
