"""Issue 13: tags are assigned, not claimed. A device's status message lists its ``hardware_tags``; the coordinator
keeps them as a claim (``claimed_tags`` in the device record, counted as ``tag_claims``) and never as the device's
``tags``, which only the operator sets (``PATCH /v1/devices/{id}``, ``fleet tag``). A deployment may select the
devices of its group by tags (``POST /v1/deployments?tags=...``, ``fleet deploy --tags``): only assigned tags count,
so a device cannot give itself a tag that makes it a target (nor lose one the operator gave it)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from helpers import pg_url, serve_api

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.cloud_sync.wire import protocol as P

BOOT = "tags-admin-" + uuid.uuid4().hex
H = {"Authorization": f"Bearer {BOOT}"}


@pytest.fixture()
def live(tmp_path: Path, keys: dict[str, Any]) -> Iterator[tuple[str, Coordinator]]:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f", trusted_keys=[keys["pub"]],
                        groups={"cam-1": "cams", "cam-2": "cams", "cam-3": "cams"})
    coord.transport.connect()
    with serve_api(coord, BOOT) as url:
        yield url, coord
    coord.transport.close()
    reg.close()


def _deploy(base: str, archive: Path, **params: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/deployments", headers={**H, "Content-Type": "application/octet-stream"},
                      content=archive.read_bytes(), params={"group": "cams", "waves": "100%", **params}, timeout=30)


def test_a_device_cannot_tag_itself_into_a_deployment(live: tuple[str, Coordinator],
                                                      archives: dict[str, Path]) -> None:
    base, coord = live
    # Arrange: the operator tags cam-1 "gpu"; cam-2 claims "gpu" in its status; cam-1 announces no tags at all
    r = httpx.patch(f"{base}/v1/devices/cam-1", headers=H, json={"tags": ["gpu", "arm64"]})
    assert r.status_code == 200 and r.json()["tags"] == ["arm64", "gpu"]
    coord.handle("cam-1", P.Status("cam-1", True, 1, hardware_tags=()))
    coord.handle("cam-2", P.Status("cam-2", True, 1, hardware_tags=("gpu", "arm64")))
    coord.handle("cam-3", P.Status("cam-3", True, 1, hardware_tags=("arm64",)))

    # Assert: claims are recorded as claims; the operator's tags are what the record's tags say
    cam1, cam2 = (httpx.get(f"{base}/v1/devices/{d}", headers=H).json() for d in ("cam-1", "cam-2"))
    assert cam1["tags"] == ["arm64", "gpu"] and cam1["claimed_tags"] == []  # a status does not take them away
    assert cam2["tags"] == [] and cam2["claimed_tags"] == ["gpu", "arm64"]
    assert coord.counters["tag_claims"] == 2  # cam-2 and cam-3 claimed tags they were not given

    # Act: a deployment to the group's "gpu" devices
    r = _deploy(base, archives["1"], tags="gpu")

    # Assert: only cam-1 is targeted, now and as the rollout goes on (cam-2 claims again in a new session)
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["tags"] == ["gpu"] and dep["targets"] == 1
    coord.handle("cam-2", P.Status("cam-2", True, 2, hardware_tags=("gpu",)))
    for _ in range(3):
        coord.tick()
    row = coord.registry.deployment(dep["id"])
    assert row is not None and row.targets == ["cam-1"]
    assert {j.device_id for j in coord.registry.jobs(dep["id"])} == {"cam-1"}

    # the operator tags cam-3: it joins the deployment; cam-2 still does not
    assert httpx.patch(f"{base}/v1/devices/cam-3", headers=H, json={"tags": ["gpu"]}).status_code == 200
    coord.tick()
    row = coord.registry.deployment(dep["id"])
    assert row is not None and row.targets == ["cam-1", "cam-3"]

    # a selector no assigned device has is refused (400), even though cam-2 claims it
    coord.handle("cam-2", P.Status("cam-2", True, 3, hardware_tags=("npu",)))
    r = _deploy(base, archives["1"], tags="npu")
    assert r.status_code == 400 and "npu" in r.json()["detail"]
    # without tags the whole group is targeted, as before
    r = _deploy(base, archives["2"])
    assert r.status_code == 201 and r.json()["targets"] == 3


def test_tags_that_do_not_fit_are_422(live: tuple[str, Coordinator]) -> None:
    base, coord = live
    coord.handle("cam-1", P.Status("cam-1", True, 1))
    for tags in ([""], ["a,b"], ["x" * 129], [f"t{i}" for i in range(65)], ["bad\nline"]):
        r = httpx.patch(f"{base}/v1/devices/cam-1", headers=H, json={"tags": tags})
        assert r.status_code == 422, (tags, r.text)
    assert coord.registry.device("f", "cam-1").tags == []  # type: ignore[index]


def test_fleet_tag_and_deploy_tags_cli(live: tuple[str, Coordinator], archives: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli import main as cli_main

    base, coord = live
    monkeypatch.setenv("EDGEFLEET_API", base)
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    monkeypatch.setenv("COLUMNS", "240")
    for d in ("cam-1", "cam-2", "cam-3"):
        coord.handle(d, P.Status(d, True, 1, hardware_tags=("gpu",) if d == "cam-3" else ()))
    capsys.readouterr()
    assert cli_main(["fleet", "tag", "cam-1", "cam-2", "--tags", "gpu, line-4"]) == 0
    out = capsys.readouterr().out
    assert "cam-1" in out and "gpu,line-4" in out
    assert cli_main(["fleet", "devices", "--json"]) == 0
    rows = {d["device_id"]: d for d in json.loads(capsys.readouterr().out)}
    assert rows["cam-2"]["tags"] == ["gpu", "line-4"] and rows["cam-3"]["tags"] == []
    assert rows["cam-3"]["claimed_tags"] == ["gpu"]
    assert cli_main(["fleet", "deploy", str(archives["1"]), "--group", "cams", "--tags", "line-4,gpu",
                     "--canary", "50%", "--waves", "100%"]) == 0
    assert "to 2 device(s) of group cams tagged gpu,line-4" in capsys.readouterr().out
    assert cli_main(["fleet", "tag", "cam-2", "--tags", ""]) == 0  # clears them
    assert coord.registry.device("f", "cam-2").tags == []  # type: ignore[index]
    # refused by the parser, before any call: one line, exit code 2
    assert cli_main(["fleet", "tag", "cam-1", "--tags", "x" * 200]) == 2
    assert "1-128 characters" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_registrys_tags_become_claims(backend: str, tmp_path: Path) -> None:
    """A registry from before claimed_tags held each device's own tags in ``tags``: they become claims."""
    from sqlalchemy import text

    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'reg.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    reg.upsert_device("f", "d1", tags='["gpu"]')
    with reg.engine.begin() as c:  # as the registry was before
        c.execute(text(f"ALTER TABLE {prefix}devices DROP COLUMN claimed_tags"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        d1 = reg.device("f", "d1")
        assert d1 is not None and d1.tags == [] and d1.claimed_tags == ["gpu"]
        reg.close()
        reg = Registry(url, prefix=prefix)  # opened again: nothing moves twice
        reg.set_device("f", "d1", tags='["cam"]')
        d1 = reg.device("f", "d1")
        assert d1 is not None and d1.tags == ["cam"] and d1.claimed_tags == ["gpu"]
    finally:
        reg.drop_all()
        reg.close()
