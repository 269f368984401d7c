"""Issue 15, fleet housekeeping: what an operator sees of one device and does with it.

Each "Why" this answers, against a real mosquitto, real agents and a real registry:

- no last-seen and no inventory: a device's birth carries its inventory (OS, release, architecture, Python, free
  and total disk of its state directory; its hardware tags as before), the registry keeps it with ``last_seen``
  (moved by telemetry and job reports too), ``GET /v1/devices[/{id}]`` answer them; a hostile device cannot store
  more than the bounded fields;
- no per-device job history in the CLI: ``edgefleet fleet device ID`` shows the inventory, the jobs with their
  reasons, the recent telemetry (and sets the group/tags);
- no way to decommission a device: ``DELETE /v1/devices/{id}`` (``fleet decommission``) removes it, cancels its
  jobs, refuses it when it comes back, and revokes its broker credentials (ACL deny, password line, broker reload);
- no artifact list: ``GET /v1/artifacts`` (``fleet artifacts``) lists the stored versions with size, sha256,
  lineage and deployments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from conftest import wait_for
from helpers import OPERATED, coordinator, device, mqtt, pg_url, serve_api
from test_cloud_broker_config import _passwords

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator.acl import BrokerAccess, write_acl
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.errors import ProtocolError

TOKEN = "housekeeping-" + uuid.uuid4().hex
H = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """``edgefleet ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("EDGEFLEET_TOKEN", TOKEN)
    monkeypatch.setenv("COLUMNS", "250")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


# -- inventory, last seen, fleet device -----------------------------------------------------------------------------
def test_a_device_reports_its_inventory_and_the_fleet_sees_it(broker: Any, tmp_path: Path, make_agent: Any,
                                                              archives: dict[str, Path], cli: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agent = make_agent("d1", install=archives["1"])
    sync = device(broker.url, agent, tmp_path)
    row = wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None and d.inventory.reported and d)
    inv = row.inventory
    disk = shutil.disk_usage(agent.config.state_dir)
    assert (inv.os, inv.os_release, inv.arch, inv.python) == (
        platform.system(), platform.release(), platform.machine(), platform.python_version())
    assert 0 < inv.free_disk_bytes <= inv.total_disk_bytes == disk.total
    assert row.claimed_tags == ["test-board"] and row.agent_version
    assert abs(row.last_seen - time.time()) < 30

    with serve_api(coord, TOKEN) as base:
        listed = httpx.get(f"{base}/v1/devices", headers=H).json()
        assert listed[0]["inventory"]["arch"] == platform.machine() and listed[0]["last_seen"] >= row.last_seen
        one = httpx.get(f"{base}/v1/devices/d1", headers=H).json()
        assert one["inventory"]["free_disk_bytes"] == inv.free_disk_bytes and one["recent"] == {}

        # telemetry moves last_seen and becomes the device's recent telemetry
        time.sleep(0.5)
        seen = coord.registry.device("f1", "d1").last_seen  # type: ignore[union-attr]
        for _ in range(5):
            agent.predict([[0.1, 0.2, 0.3, 0.4]])
        agent.flush_telemetry()
        row = wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None and d.recent and d, 20)
        assert row.last_seen > seen
        assert row.recent["versions"]["1"]["predictions"] == 5 and row.recent["versions"]["1"]["p50_ms"] is not None

        # a failing job, with its reason, in the device's history
        dep = coord.create_deployment(archives["3bad"].read_bytes(), "g", RolloutPlan(1.0, (1.0,), 0.0))
        wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 30)  # type: ignore[union-attr]
        job = coord.registry.jobs(dep.id)[0]
        assert job.status == "REJECTED" and job.reason

        code, out, err = cli("fleet", "devices", "--api", base)
        assert code == 0, err
        assert "last seen" in out and f"{platform.system()} {platform.machine()}" in out and "ago" in out
        code, out, err = cli("fleet", "device", "d1", "--api", base)
        assert code == 0, err
        assert "inventory: " + platform.system() in out and "free of" in out
        assert dep.id in out and "REJECTED" in out and job.reason in out  # the job history with its reason
        assert "recent telemetry" in out and "predictions" in out
        code, out, _ = cli("fleet", "device", "d1", "--api", base, "--json")
        doc = json.loads(out)
        assert doc["inventory"]["os"] == platform.system() and doc["jobs"][-1]["reason"] == job.reason
        assert doc["recent"]["versions"]["1"]["predictions"] == 5

        # the operator sets the group and tags through the same command
        code, out, err = cli("fleet", "device", "d1", "--group", "line-2", "--tags", "gpu,cam", "--api", base,
                             "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["group"] == "line-2" and doc["tags"] == ["cam", "gpu"]
        code, _, err = cli("fleet", "device", "ghost", "--api", base)
        assert code == 2 and "404" in err and "Traceback" not in err
    sync.stop()


@pytest.mark.parametrize("inventory, why", [
    ({"os": "L" * 33}, "longer than 32"),
    ({"os_release": "x" * 129}, "longer than 128"),
    ({"arch": "x86\x1b[31m"}, "printable"),
    ({"python": "3.11\x00"}, "printable"),
    ({"os": ["Linux"]}, "wrong type"),
    ({"free_disk_bytes": -1}, "out of range"),
    ({"free_disk_bytes": 2**70}, "out of range"),
    ({"free_disk_bytes": True}, "boolean"),
    ({"free_disk_bytes": 1.5}, "wrong type"),
    ({"free_disk_bytes": 10, "total_disk_bytes": 5}, "exceeds the total"),
    ("Linux", "must be an object"),
])
def test_inventory_fields_are_bounded(inventory: Any, why: str) -> None:
    doc = {"v": 1, "type": "status", "device_id": "d1", "online": True, "session": 1, "inventory": inventory}
    with pytest.raises(ProtocolError, match=why):
        P.Status.from_dict(doc)


def test_inventory_changes_that_matter() -> None:
    from edgefleet.cloud_sync.device.driver import inventory_changed

    gib = 1 << 30
    old = P.Inventory("Linux", "6.1", "aarch64", "3.11.2", free_disk_bytes=20 * gib, total_disk_bytes=32 * gib)
    assert not inventory_changed(old, old)
    assert not inventory_changed(old, dataclasses.replace(old, free_disk_bytes=20 * gib - (100 << 20)))  # < 1%
    assert inventory_changed(old, dataclasses.replace(old, free_disk_bytes=19 * gib))
    assert inventory_changed(old, dataclasses.replace(old, os_release="6.6"))
    small = P.Inventory(free_disk_bytes=500 << 20, total_disk_bytes=1 << 30)  # 1% is 10 MiB: 64 MiB it is
    assert not inventory_changed(small, dataclasses.replace(small, free_disk_bytes=450 << 20))
    assert inventory_changed(small, dataclasses.replace(small, free_disk_bytes=400 << 20))
    # the update flag goes on the wire only when set; an older device's birth has none
    st = P.Status("d1", True, 3, inventory=old, update=True)
    assert P.Status.parse(st.to_bytes()) == st and "update" not in P.Status("d1", True, 3).to_dict()


def test_a_device_whose_disk_fills_reports_it_without_reconnecting(broker: Any, tmp_path: Path, make_agent: Any,
                                                                   archives: dict[str, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The inventory was sent at the birth only: a disk that filled up afterwards stayed invisible. Now the device
    looks again every inventory_interval and reports a material change as an update of the same session, which
    changes the record and redelivers nothing (no reconnection is logged or counted)."""
    from edgefleet.cloud_sync.device import driver

    coord = coordinator(broker.url, tmp_path / "reg.db")
    agent = make_agent("d1", install=archives["1"])
    real = driver.device_inventory
    full = {"on": False}

    def inventory(state_dir: Any) -> P.Inventory:
        inv = real(state_dir)
        return dataclasses.replace(inv, free_disk_bytes=inv.free_disk_bytes // 100) if full["on"] else inv

    monkeypatch.setattr(driver, "device_inventory", inventory)
    sync = device(broker.url, agent, tmp_path, inventory_interval=0.2)
    try:
        row = wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None and d.inventory.reported and d)
        first, redelivered = row.inventory.free_disk_bytes, coord.counters["desired_redelivered"]
        session = row.session
        born = wait_for(lambda: coord._births.get("d1"))  # when the coordinator saw the session born
        full["on"] = True
        row = wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None
                       and d.inventory.free_disk_bytes < first // 10 and d, 20)
        assert row.online and row.session == session
        assert coord.counters["desired_redelivered"] == redelivered and coord._births["d1"] == born  # no rebirth
    finally:
        sync.stop()


def test_a_hostile_device_cannot_store_unbounded_inventory(broker: Any, tmp_path: Path) -> None:
    """Over a real broker: a birth with an oversized or malformed inventory is dropped (counted as malformed) and
    stores nothing; unknown inventory keys are never kept; what is kept is the bounded fields."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    evil = mqtt(broker.url, "evil")
    evil.connect()
    assert evil.wait_connected(10)  # type: ignore[attr-defined]
    topic = P.up_topic("f1", "evil", P.Up.STATUS)

    def birth(session: int, inventory: Any) -> bytes:
        return json.dumps({"v": 1, "type": "status", "device_id": "evil", "online": True, "session": session,
                           "inventory": inventory}).encode()

    evil.publish(topic, birth(1, {"os": "A" * 1_000_000}), qos=1)
    evil.publish(topic, birth(2, {"os": "Linux", "free_disk_bytes": -5}), qos=1)
    wait_for(lambda: coord.counters["malformed"] >= 2)
    assert coord.registry.device("f1", "evil") is None  # nothing stored
    evil.publish(topic, birth(3, {"os": "Linux", "arch": "arm64", "free_disk_bytes": 7, "total_disk_bytes": 9,
                                  "extra": "x" * 100_000, "nested": {"a": [1, 2, 3]}}), qos=1)
    row = wait_for(lambda: (d := coord.registry.device("f1", "evil")) is not None and d.inventory.reported and d)
    assert row.inventory.os == "Linux" and row.inventory.arch == "arm64" and row.inventory.free_disk_bytes == 7
    t = coord.registry.t["devices"]
    with coord.registry.engine.connect() as c:
        stored = c.execute(t.select().where(t.c.device_id == "evil")).mappings().one()
    assert set(json.loads(stored["inventory"])) == {"os", "os_release", "arch", "python", "free_disk_bytes",
                                                    "total_disk_bytes", "reported"}
    assert len(stored["inventory"]) < 300
    evil.close()


# -- decommissioning ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_decommission_revokes_the_broker_credentials_and_no_rollout_waits(
        make_broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path], cli: Any) -> None:
    """A real mosquitto with a password file and the generated ACL (as cloud broker-config writes them): after
    ``fleet decommission d2`` the broker has dropped d2's connection and refuses it, the ACL denies it the fleet,
    its password line is gone; d1 goes on; the rollout that targeted d2 completes without it."""
    pw = _passwords(tmp_path / "passwd", {"coord": "cpw", "d1": "p1", "d2": "p2"})
    acl = write_acl(tmp_path / "acl", "f1", ["coord"])
    b = make_broker(acl_file=acl, passwords=pw)
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, mqtt(b.url, "coord", username="coord", password="cpw"), "f1", tick_seconds=0.1)
    coord.broker_access = BrokerAccess.from_config(b.conf, "f1")
    coord.start()
    OPERATED.append(coord)
    syncs = {d: device(b.url, make_agent(d, install=archives["1"]), tmp_path, username=d, password=f"p{d[1]}")
             for d in ("d1", "d2")}
    wait_for(lambda: sum(d.online for d in reg.devices("f1")) == 2)

    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.5, (1.0,), 0.0))
    coord.set_state(dep.id, "pause")  # the canary (d1) may have its job; d2 has none yet
    with serve_api(coord, TOKEN) as base:
        code, out, err = cli("fleet", "decommission", "d2", "--yes", "--api", base)
        assert code == 0, err
        assert "device d2 (group g) decommissioned; broker:" in out and "reloaded" in out
        # the broker dropped d2 and refuses it from now on; d1 is untouched
        wait_for(lambda: not syncs["d2"].transport.connected, 10)
        time.sleep(2.0)  # d2 keeps trying to reconnect (every 0.2-1 s)
        assert not syncs["d2"].transport.connected and syncs["d1"].transport.connected
        assert "not authorised" in b.log_tail(20_000)
        text = acl.read_text()
        assert "user d2\ntopic deny edgefleet/v1/f1/#" in text and "user coord\ntopic readwrite" in text
        assert "d2:" not in pw.read_text() and "d1:" in pw.read_text()
        # the registry: gone, with a tombstone; its job of the rollout canceled, so the rollout does not wait
        assert reg.device("f1", "d2") is None and [d.device_id for d in reg.decommissioned("f1")] == ["d2"]
        coord.set_state(dep.id, "resume")
        wait_for(lambda: reg.deployment(dep.id).state == "completed", 60)  # type: ignore[union-attr]
        jobs = {j.device_id: j for j in reg.jobs(dep.id)}
        assert set(jobs) == {"d1"} and jobs["d1"].status == "SUCCEEDED" and syncs["d1"].agent.active_version == "2"
        assert reg.deployment(dep.id).targets == ["d1"]  # type: ignore[union-attr]
        assert [e.detail for e in reg.events(dep.id) if e.kind == "decommissioned"] == ["d2 by bootstrap"]
        assert syncs["d2"].agent.active_version == "1"
        # asked again: a 404 saying so, one line and exit code 2
        code, _, err = cli("fleet", "decommission", "d2", "--yes", "--api", base)
        assert code == 2 and "decommissioned already" in err and "Traceback" not in err
        r = httpx.get(f"{base}/v1/audit", headers=H).json()
        assert any(e["method"] == "DELETE" and e["path"] == "/v1/devices/d2" and e["status"] == 200 for e in r)
    for s in syncs.values():
        s.stop(graceful=False)


def test_a_decommissioned_device_that_comes_back_is_refused(broker: Any, tmp_path: Path, make_agent: Any,
                                                            archives: dict[str, Path]) -> None:
    """On a broker that still lets it in (anonymous, no ACL): the coordinator refuses the device's birth and
    telemetry like those of a device outside the allow-list, and never registers it again; the operator's
    assignment re-admits it."""
    coord = coordinator(broker.url, tmp_path / "reg.db")
    agent = make_agent("d1", install=archives["1"])
    sync = device(broker.url, agent, tmp_path)
    wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None and d.online)
    with serve_api(coord, TOKEN) as base:
        r = httpx.delete(f"{base}/v1/devices/d1", headers=H)
        assert r.status_code == 200, r.text
        assert r.json() == {"device_id": "d1", "group": "g", "decommissioned": True, "broker": [], "broker_error": ""}
        records = sum(r.records for r in coord.registry.telemetry("f1"))
        sync.stop(graceful=False)
        # it comes back: a new session, a birth, telemetry
        sync = device(broker.url, agent, tmp_path)
        agent.predict([[0.1, 0.2, 0.3, 0.4]])
        agent.flush_telemetry()
        wait_for(lambda: coord.refused["d1"] >= 2, 20)
        time.sleep(0.5)
        assert coord.registry.device("f1", "d1") is None
        assert httpx.get(f"{base}/v1/devices/d1", headers=H).status_code == 404
        assert "d1" not in {d["device_id"] for d in httpx.get(f"{base}/v1/devices", headers=H).json()}
        assert sum(r.records for r in coord.registry.telemetry("f1")) == records  # nothing of it ingested
        # the operator assigns it again: re-admitted, the next birth registers it
        assert httpx.patch(f"{base}/v1/devices/d1", headers=H, json={"group": "g"}).status_code == 200
        assert coord.registry.decommissioned("f1") == []
        sync.stop(graceful=False)
        sync = device(broker.url, agent, tmp_path)
        wait_for(lambda: (d := coord.registry.device("f1", "d1")) is not None and d.online, 20)
    sync.stop()


def test_decommissioned_stays_refused_across_a_restart_and_the_allow_file(tmp_path: Path, broker: Any) -> None:
    """The tombstone is the registry's: a coordinator started later refuses the device too, even when its --allow
    file still lists it (only the operator's assignment through the API re-admits it)."""
    db = tmp_path / "reg.db"
    first = coordinator(broker.url, db, groups={"d1": "g"})
    assert first.registry.decommission("f1", "d1", "test") is not None
    first.stop()
    again = coordinator(broker.url, db, allow_list={"d1"}, groups={"d1": "g"})
    assert "d1" in again.gone and again.registry.device("f1", "d1") is None
    again.handle("d1", P.Status("d1", True, 5))
    assert again.refused["d1"] == 1 and again.registry.device("f1", "d1") is None


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_broker_access_refuses_an_acl_it_did_not_write(tmp_path: Path) -> None:
    from edgefleet.cloud_sync.broker import local_config
    from edgefleet.errors import ConfigError

    foreign = tmp_path / "foreign.acl"
    foreign.write_text("user admin\ntopic readwrite #\n")
    files = local_config(tmp_path / "b", 1883, acl_file=foreign, password_file=_passwords(tmp_path / "pw", {"a": "b"}))
    with pytest.raises(ConfigError, match="not generated by edgefleet"):
        BrokerAccess.from_config(files.conf, "f1")
    with pytest.raises(ConfigError, match="cannot be read"):
        BrokerAccess.from_config(tmp_path / "missing.conf", "f1")
    code = cli_main(["cloud", "serve", "--fleet", "f1", "--broker-config", str(tmp_path / "missing.conf"),
                     "--token", "x", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--broker", "mqtt://127.0.0.1:1"])
    assert code == 2


# -- artifacts --------------------------------------------------------------------------------------------------------
def test_artifact_list_with_size_sha256_lineage_and_deployments(tmp_path: Path, broker: Any, archives: dict[str, Path],
                                                                keys: dict[str, Any], cli: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", trusted_keys=[keys["pub"]], groups={"d1": "g", "d2": "h"})
    with serve_api(coord, TOKEN) as base:
        deps = []
        for v, group in (("1", "g"), ("2", "g"), ("2", "h")):
            r = httpx.post(f"{base}/v1/deployments", headers={**H, "Content-Type": "application/octet-stream"},
                           content=archives[v].read_bytes(), params={"group": group}, timeout=30)
            assert r.status_code == 201, r.text
            deps.append(r.json()["id"])
        listed = httpx.get(f"{base}/v1/artifacts", headers=H).json()
        assert [(a["name"], a["version"]) for a in listed] == [("dense", "1"), ("dense", "2")]
        for a, v in zip(listed, ("1", "2")):
            data = archives[v].read_bytes()
            assert a["sha256"] == hashlib.sha256(data).hexdigest() and a["size"] == len(data)
            assert a["lineage"]["packed_by"].startswith("edgefleet") and "source_model_sha256" in a["lineage"]
            assert "data" not in a
        assert [d["id"] for d in listed[0]["deployments"]] == deps[:1]
        assert [(d["id"], d["group"]) for d in listed[1]["deployments"]] == [(deps[1], "g"), (deps[2], "h")]
        assert all(d["state"] == "running" for d in listed[1]["deployments"])
        code, out, err = cli("fleet", "artifacts", "--api", base)
        assert code == 0, err
        assert listed[1]["sha256"][:12] in out and "packed_by=edgefleet" in out and f"{deps[2]}:running" in out
        code, out, _ = cli("fleet", "artifacts", "--api", base, "--json")
        assert json.loads(out) == listed


# -- an older registry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_registry_gets_inventory_windows_and_lineage(backend: str, tmp_path: Path,
                                                              archives: dict[str, Path]) -> None:
    """A registry made before this issue (no inventory, recent or lineage columns, no telemetry_windows,
    decommissioned or alert_marks tables) opens, reads its rows with empty defaults, and reads an old artifact's
    lineage from its manifest once."""
    from sqlalchemy import text

    from edgefleet.cloud_sync.coordinator import housekeeping

    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'reg.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    reg.upsert_device("f", "d1", group_name="g")
    data = archives["1"].read_bytes()
    fid = hashlib.sha256(data).hexdigest()
    reg.add_artifact(fid, "dense", "1", data)
    with reg.engine.begin() as c:  # as the registry was before
        for table, column in (("devices", "inventory"), ("devices", "recent"), ("artifacts", "lineage")):
            c.execute(text(f"ALTER TABLE {prefix}{table} DROP COLUMN {column}"))
        for table in ("telemetry_windows", "decommissioned", "alert_marks"):
            c.execute(text(f"DROP TABLE {prefix}{table}"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        d1 = reg.device("f", "d1")
        assert d1 is not None and d1.inventory.reported == 0.0 and d1.recent == {} and d1.group == "g"
        assert reg.artifacts_without_lineage() == [fid]
        coord = Coordinator(reg, mqtt("mqtt://127.0.0.1:1", "unused"), "f")
        listed = housekeeping.artifacts(coord)
        assert listed[0].lineage["packed_by"].startswith("edgefleet") and reg.artifacts_without_lineage() == []
        assert reg.telemetry_window("f", 0) == [] and reg.decommissioned("f") == []
        assert reg.decommission("f", "d1", "test") is not None and reg.device("f", "d1") is None
    finally:
        reg.drop_all()
        reg.close()

