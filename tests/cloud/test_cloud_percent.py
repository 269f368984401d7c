"""Percentages (issue 13, finding 5): ``5%`` or ``0.05``; a bare number >= 1 is ambiguous (``1`` was 100% but
``2`` was 2%, so ``--max-failure 1`` switched the health gate off) and refused everywhere with a named error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from edgefleet.cloud_sync.coordinator.api import create_app
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import parse_percent
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.federated.autorun import RetrainSettings
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.errors import ConfigError

TOKEN = "t0ken"


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("0.05", 0.05), ("100%", 1.0), ("0", 0.0), ("0%", 0.0),
                                         (" 2.5% ", 0.025), ("0.999", 0.999)])
def test_percent_forms_accepted(text: str, value: float) -> None:
    assert parse_percent(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1", "2", "1.0", "50", "100"])
def test_bare_number_of_one_or_more_is_ambiguous(text: str) -> None:
    with pytest.raises(ConfigError, match="ambiguous"):
        parse_percent(text, "max failure")


@pytest.mark.parametrize("text", ["101%", "-1%", "nan", "inf%", "1e400%", "x", ""])
def test_not_a_percentage(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_percent(text)


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f")
    reg.upsert_device("f", "d1", group_name="g")
    with TestClient(create_app(coord, TOKEN)) as c:
        yield c
    reg.close()


@pytest.mark.parametrize("param", [{"canary": "1"}, {"max_failure": "1"}, {"waves": "50%,1"}])
def test_api_deploy_refuses_ambiguous_percentages(client: TestClient, archives: dict[str, Path],
                                                  param: dict[str, str]) -> None:
    r = client.post("/v1/deployments", params={"group": "g", **param}, content=archives["1"].read_bytes(),
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and "ambiguous" in r.json()["detail"], r.text


def test_fleet_deploy_cli_refuses_before_uploading(archives: dict[str, Path], capsys: Any) -> None:
    from edgefleet.cli import main

    # refused by the parser (exit code 2): nothing is uploaded
    assert main(["fleet", "deploy", str(archives["1"]), "--group", "g", "--max-failure", "1",
                 "--api", "http://127.0.0.1:9", "--token", "t"]) == 2
    assert "max failure '1' is ambiguous" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ambiguous"):  # the library call refuses before uploading too
        from edgefleet.cloud_sync.coordinator.client import deploy_bundle

        deploy_bundle("http://127.0.0.1:9", "t", archives["1"], "g", canary="2")


def test_federated_run_and_retrain_options_refuse_ambiguous_percentages() -> None:
    from edgefleet.cloud_sync.federated.cli import parse_run_args

    with pytest.raises(ConfigError, match="ambiguous"):
        parse_run_args(["--deploy", "--canary", "1"])
    with pytest.raises(ConfigError, match="ambiguous"):
        RetrainSettings("g", args=("--deploy", "--max-failure", "2"))
    assert parse_run_args(["--deploy", "--canary", "0.05", "--waves", "50%,100%"]).canary == "0.05"
