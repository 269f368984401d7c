"""The coordinator's API auth (issue 13, finding 3): scoped tokens (read, deploy, admin) stored hashed in the
registry, given by environment or file (never needed on the command line); lockout after repeated 401s per
client; an audit log of every mutating call. SQLite and PostgreSQL wherever the registry is involved."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from helpers import pg_url, serve_api, stop_process

from edgefleet.cloud_sync.coordinator.api import create_app
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rows import Principal
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.errors import ConfigError

BOOT = "bootstrap-admin-secret"
BOOT_H = {"Authorization": f"Bearer {BOOT}"}


def _url(backend: str, tmp_path: Path) -> str:
    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'reg.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def coord(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    reg = Registry(_url(request.param, tmp_path), prefix=f"t{uuid.uuid4().hex[:8]}_")
    c = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f")
    yield c
    reg.drop_all()
    reg.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_stored_hashed_and_revocable(coord: Coordinator) -> None:
    reg = coord.registry
    secret = reg.create_token("f", "ci", "deploy")
    assert len(secret) >= 32
    with reg.engine.connect() as c:  # the secret itself is nowhere in the registry, its sha256 is
        dump = json.dumps([[str(v) for v in row] for row in c.execute(reg.t["tokens"].select())])
    assert secret not in dump and hashlib.sha256(secret.encode()).hexdigest() in dump
    assert reg.check_token("f", secret) == Principal("ci", "deploy")
    assert reg.check_token("f", secret + "x") is None and reg.check_token("other-fleet", secret) is None
    listed = reg.tokens("f")
    assert [(t.name, t.scope) for t in listed] == [("ci", "deploy")]
    assert all(secret not in json.dumps(t.to_dict(), default=str) and "hash" not in t.to_dict() for t in listed)
    with pytest.raises(ConfigError, match="already"):
        reg.create_token("f", "ci", "read")
    with pytest.raises(ConfigError, match="scope"):
        reg.create_token("f", "x", "root")
    assert reg.revoke_token("f", "ci") and not reg.revoke_token("f", "ci")
    assert reg.check_token("f", secret) is None


def test_each_route_requires_its_scope(coord: Coordinator) -> None:
    api = TestClient(create_app(coord, BOOT), raise_server_exceptions=False)
    made = {}
    for scope in ("read", "deploy", "admin"):
        r = api.post("/v1/tokens", headers=BOOT_H, json={"name": f"t-{scope}", "scope": scope})
        assert r.status_code == 201, r.text
        assert r.json()["scope"] == scope
        made[scope] = _bearer(r.json()["token"])
    read, deploy, admin = made["read"], made["deploy"], made["admin"]
    retrain = {"on_drift": False}

    # read: every GET but the admin views
    assert api.get("/v1/devices", headers=read).status_code == 200
    assert api.get("/v1/deployments", headers=read).status_code == 200
    assert api.get("/v1/telemetry", headers=read).status_code == 200
    for method, path, body in (("PUT", "/v1/retrain/g", retrain), ("POST", "/v1/deployments/x/pause", None),
                               ("POST", "/v1/deployments?group=g", None), ("GET", "/v1/tokens", None),
                               ("GET", "/v1/audit", None), ("PATCH", "/v1/devices/d1", {"group": "g"})):
        r = api.request(method, path, headers=read, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert "scope" in r.json()["detail"]
    # deploy: deployments, rollouts, retraining, federated runs; not tokens or devices
    assert api.put("/v1/retrain/g", headers=deploy, json=retrain).status_code == 200
    assert api.post("/v1/deployments/nope/pause", headers=deploy).status_code == 404  # allowed, then not found
    assert api.post("/v1/federated/runs", headers=deploy,
                    json={"group": "g", "strategy": "fedavg", "rounds": 1}).status_code == 201
    assert api.patch("/v1/devices/d1", headers=deploy, json={"group": "g"}).status_code == 403
    assert api.post("/v1/tokens", headers=deploy, json={"name": "x", "scope": "read"}).status_code == 403
    assert api.get("/v1/tokens", headers=deploy).status_code == 403
    # admin: everything
    r = api.patch("/v1/devices/d1", headers=admin, json={"group": "g"})  # a device not seen yet is provisioned
    assert r.status_code == 200 and r.json()["group"] == "g", r.text
    assert api.patch("/v1/devices/d1", headers=admin, json={}).status_code == 422  # nothing to change
    listed = api.get("/v1/tokens", headers=admin).json()
    assert {t["name"]: t["scope"] for t in listed} == {"t-read": "read", "t-deploy": "deploy", "t-admin": "admin"}
    assert "token" not in json.dumps(listed).replace('"t-', "")  # names only, never a secret or its hash
    # bad requests are named errors, never 500
    assert api.post("/v1/tokens", headers=admin, json={"name": "t-read", "scope": "read"}).status_code == 409
    assert api.post("/v1/tokens", headers=admin, json={"name": "y", "scope": "root"}).status_code == 422
    assert api.post("/v1/tokens", headers=admin, json={"name": "bad name!", "scope": "read"}).status_code == 422
    # revoked: 401 from then on
    assert api.delete("/v1/tokens/t-read", headers=admin).status_code == 200
    assert api.delete("/v1/tokens/t-read", headers=admin).status_code == 404
    r = api.get("/v1/devices", headers=read)
    assert r.status_code == 401 and r.json()["detail"]


def test_lockout_after_repeated_401s_per_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cloud_sync.coordinator import api as api_module

    coord = Coordinator(Registry(f"sqlite:///{tmp_path / 'r.db'}"), MemoryTransport(MemoryBroker(), "c"), "f")
    app = create_app(coord, BOOT, max_failures=10, failure_window=60.0, lockout_seconds=300.0)
    attacker = TestClient(app, client=("203.0.113.7", 40000), raise_server_exceptions=False)
    other = TestClient(app, client=("198.51.100.2", 40001), raise_server_exceptions=False)
    codes = [attacker.get("/v1/devices", headers=_bearer(f"guess-{i}")).status_code for i in range(300)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes[:20]
    r = attacker.get("/v1/devices", headers=BOOT_H)  # locked out, even with the right token
    assert r.status_code == 429 and "retry-after" in r.headers and r.json()["detail"]
    assert other.get("/v1/devices", headers=BOOT_H).status_code == 200  # other clients are unaffected
    assert other.get("/v1/devices", headers=_bearer("wrong")).status_code == 401
    later = time.time() + 301
    monkeypatch.setattr(api_module, "_clock", lambda: later)  # the lockout ends
    assert attacker.get("/v1/devices", headers=BOOT_H).status_code == 200
    coord.registry.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_lockout_is_shared_by_the_coordinators_of_a_registry_and_survives_a_restart(
        backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cloud_sync.coordinator import api as api_module

    url, prefix = _url(backend, tmp_path), f"t{uuid.uuid4().hex[:8]}_"
    made: list[Registry] = []

    def coordinator_api() -> tuple[TestClient, TestClient]:
        """A coordinator of its own (its own Registry object and app) on the shared registry; an attacker's and
        another client's connection to it."""
        reg = Registry(url, prefix=prefix)
        made.append(reg)
        app = create_app(Coordinator(reg, MemoryTransport(MemoryBroker(), f"c{len(made)}"), "f"), BOOT,
                         max_failures=10, failure_window=60.0, lockout_seconds=300.0)
        return (TestClient(app, client=("203.0.113.7", 40000), raise_server_exceptions=False),
                TestClient(app, client=("198.51.100.2", 40001), raise_server_exceptions=False))

    try:
        (a1, o1), (a2, o2) = coordinator_api(), coordinator_api()
        # Act: the attacker spreads its guesses over both coordinators, 5 each (neither saw 10 itself)
        codes = []
        for i in range(5):
            codes.append(a1.get("/v1/devices", headers=_bearer(f"guess-a{i}")).status_code)
            codes.append(a2.get("/v1/devices", headers=_bearer(f"guess-b{i}")).status_code)
        # Assert: the 10th locked it out of both, even with the right token; other clients are unaffected
        assert codes == [401] * 10
        for api in (a1, a2):
            r = api.get("/v1/devices", headers=BOOT_H)
            assert r.status_code == 429 and 290 <= int(r.headers["retry-after"]) <= 300
        assert o1.get("/v1/devices", headers=BOOT_H).status_code == 200
        assert o2.get("/v1/devices", headers=BOOT_H).status_code == 200
        # a third coordinator started now (a restart) knows the lockout before the attacker fails once there
        a3, o3 = coordinator_api()
        assert a3.get("/v1/devices", headers=BOOT_H).status_code == 429
        assert o3.get("/v1/devices", headers=BOOT_H).status_code == 200
        # the lockout ends for every coordinator at the same time
        later = time.time() + 301
        monkeypatch.setattr(api_module, "_clock", lambda: later)
        assert [api.get("/v1/devices", headers=BOOT_H).status_code for api in (a1, a2, a3)] == [200] * 3
    finally:
        made[0].drop_all()
        for reg in made:
            reg.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_shared_failure_counts_are_bounded_and_pruned(backend: str, tmp_path: Path) -> None:
    from sqlalchemy import func, select

    reg = Registry(_url(backend, tmp_path), prefix=f"t{uuid.uuid4().hex[:8]}_")
    t = reg.t["auth_failures"]

    def rows() -> dict[str, dict[str, Any]]:
        with reg.engine.connect() as c:
            return {r["client"]: dict(r) for r in c.execute(select(t).where(t.c.fleet == "f")).mappings()}

    kw: dict[str, Any] = {"max_failures": 3, "window": 60.0, "lockout": 300.0, "max_clients": 5}
    try:
        now = 1_000_000.0
        assert reg.auth_failed("f", "10.0.0.1", now, **kw) == 0.0
        assert reg.auth_failed("f", "10.0.0.1", now + 1, **kw) == 0.0
        assert reg.auth_failed("f", "10.0.0.1", now + 2, **kw) == now + 302  # the third within 60 s
        assert reg.auth_locked_until("f", "10.0.0.1") == now + 302 and reg.auth_locked_until("g", "10.0.0.1") == 0
        assert reg.auth_failed("f", "10.0.0.2", now, **kw) == 0.0
        assert reg.auth_failed("f", "10.0.0.2", now + 61, **kw) == 0.0  # the first fell out of the window
        assert reg.auth_failed("f", "10.0.0.2", now + 62, **kw) == 0.0
        # many addresses (an attacker's choice): at most max_clients rows; the oldest go first
        for i in range(20):
            reg.auth_failed("f", f"192.0.2.{i}", now + 100 + i, **kw)
        assert len(rows()) == 5 and "192.0.2.19" in rows() and "192.0.2.0" not in rows()
        # rows that hold nothing (no failure within the window, no lockout running) are pruned by the next new row
        reg.auth_failed("f", "10.0.0.9", now + 100_000, **kw)
        assert set(rows()) == {"10.0.0.9"}
        with reg.engine.connect() as c:
            assert c.execute(select(func.count()).select_from(t)).scalar() == 1
        assert len(json.loads(rows()["10.0.0.9"]["times"])) == 1
    finally:
        reg.drop_all()
        reg.close()


def test_audit_log_of_mutating_calls(coord: Coordinator) -> None:
    api = TestClient(create_app(coord, BOOT), raise_server_exceptions=False)
    ci = api.post("/v1/tokens", headers=BOOT_H, json={"name": "ci", "scope": "deploy"}).json()["token"]
    before = time.time()
    assert api.put("/v1/retrain/g", headers=_bearer(ci), json={"on_drift": False}).status_code == 200
    assert api.patch("/v1/devices/d1", headers=_bearer(ci), json={"group": "g"}).status_code == 403
    assert api.get("/v1/devices", headers=_bearer(ci)).status_code == 200  # reads are not audited
    assert api.delete("/v1/tokens/ci", headers=BOOT_H).status_code == 200
    r = api.get("/v1/audit", headers=BOOT_H)
    assert r.status_code == 200, r.text
    log = r.json()
    got = [(e["who"], e["method"], e["path"], e["status"]) for e in reversed(log)]  # newest first
    assert got == [("bootstrap", "POST", "/v1/tokens", 201), ("ci", "PUT", "/v1/retrain/g", 200),
                   ("ci", "PATCH", "/v1/devices/d1", 403), ("bootstrap", "DELETE", "/v1/tokens/ci", 200)]
    assert "ci" in log[-1]["summary"] and "deploy" in log[-1]["summary"]  # what was created
    assert all(e["ts"] >= before - 5 for e in log)
    assert ci not in json.dumps(log)  # the secret never reaches the log
    assert len(api.get("/v1/audit?limit=2", headers=BOOT_H).json()) == 2


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_older_registry_gets_the_token_and_audit_tables(backend: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    url, prefix = _url(backend, tmp_path), f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    reg.upsert_device("f", "d1")
    with reg.engine.begin() as c:  # as a registry written before tokens and the audit log existed
        c.execute(text(f"DROP TABLE {prefix}tokens"))
        c.execute(text(f"DROP TABLE {prefix}audit"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        assert reg.device("f", "d1") is not None
        secret = reg.create_token("f", "ops", "admin")
        assert reg.check_token("f", secret) == Principal("ops", "admin")
        reg.add_audit("f", "ops", "POST", "/v1/x", "s", 200, "127.0.0.1")
        assert reg.audit("f")[0].who == "ops"
    finally:
        reg.drop_all()
        reg.close()


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[tuple[str, Coordinator]]:
    coord = Coordinator(Registry(f"sqlite:///{tmp_path / 'reg.db'}"), MemoryTransport(MemoryBroker(), "coord"), "f")
    with serve_api(coord, BOOT) as url:
        yield url, coord
    coord.registry.close()


def test_fleet_tokens_and_audit_cli(live: tuple[str, Coordinator], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli import main as cli_main

    base, _ = live
    monkeypatch.setenv("EDGEFLEET_API", base)
    monkeypatch.setenv("COLUMNS", "240")  # rich: no wrapped cells
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)  # the admin token from the environment
    capsys.readouterr()
    assert cli_main(["fleet", "tokens", "create", "--scope", "deploy", "--name", "ci"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(secret) >= 32
    token_file = tmp_path / "ci.token"
    token_file.write_text(secret + "\n")
    monkeypatch.delenv("EDGEFLEET_TOKEN")
    assert cli_main(["fleet", "retrain", "--group", "g", "--on-drift", "off", "--token-file", str(token_file)]) == 0
    assert cli_main(["fleet", "tokens", "list", "--token-file", str(token_file)]) != 0  # deploy is not admin
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    capsys.readouterr()
    assert cli_main(["fleet", "tokens", "list", "--json"]) == 0
    assert [(t["name"], t["scope"]) for t in json.loads(capsys.readouterr().out)] == [("ci", "deploy")]
    assert cli_main(["fleet", "audit", "--json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert ("ci", "PUT", "/v1/retrain/g", 200) in [(e["who"], e["method"], e["path"], e["status"]) for e in log]
    assert cli_main(["fleet", "audit"]) == 0 and "/v1/retrain/g" in capsys.readouterr().out
    assert cli_main(["fleet", "tokens", "revoke", "ci"]) == 0
    assert cli_main(["fleet", "retrain", "--group", "g", "--token-file", str(token_file)]) != 0  # revoked


@pytest.mark.parametrize("how", ["env", "file"])
def test_cloud_serve_token_is_not_on_its_command_line(how: str, broker: Any, tmp_path: Path) -> None:
    secret = "serve-" + uuid.uuid4().hex
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_TOKEN"}
    cmd = [sys.executable, "-m", "edgefleet.cli", "cloud", "serve", "--broker", broker.url, "--fleet", "f",
           "--db", f"sqlite:///{tmp_path / 'reg.db'}", "--api-port", str(port)]
    if how == "env":
        env["EDGEFLEET_TOKEN"] = secret
    else:
        (tmp_path / "admin.token").write_text(secret + "\n")
        os.chmod(tmp_path / "admin.token", 0o600)
        cmd += ["--token-file", str(tmp_path / "admin.token")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        assert httpx.get(f"http://127.0.0.1:{port}/v1/devices", headers=_bearer(secret)).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/devices", headers=_bearer("nope")).status_code == 401
    finally:
        stop_process(proc)


def test_fleet_assign_provisions_and_moves_devices(live: tuple[str, Coordinator], capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``fleet assign``: the operator's group assignment, also for devices that have not connected yet."""
    from edgefleet.cli import main as cli_main

    base, coord = live
    monkeypatch.setenv("EDGEFLEET_API", base)
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    capsys.readouterr()
    assert cli_main(["fleet", "assign", "press-7", "press-8", "--group", "line-1", "--json"]) == 0
    assert [(r["device_id"], r["group"]) for r in json.loads(capsys.readouterr().out)] == [
        ("press-7", "line-1"), ("press-8", "line-1")]
    assert coord.registry.device("f", "press-7").group == "line-1"
    assert cli_main(["fleet", "assign", "press-7", "--group", "line-2"]) == 0
    assert coord.registry.device("f", "press-7").group == "line-2"
    assert cli_main(["fleet", "assign", "press-7", "--group", "bad/group"]) != 0  # a named 422, no traceback


def test_tokens_can_expire(coord: Coordinator) -> None:
    api = TestClient(create_app(coord, BOOT), raise_server_exceptions=False)
    # Arrange: a token valid for one second, one for 30 days, one without expiry
    short = api.post("/v1/tokens", headers=BOOT_H, json={"name": "short", "scope": "read", "expires_in": 1})
    month = api.post("/v1/tokens", headers=BOOT_H, json={"name": "month", "scope": "read", "expires_in": 30 * 86400})
    forever = api.post("/v1/tokens", headers=BOOT_H, json={"name": "forever", "scope": "read"})
    assert short.status_code == month.status_code == forever.status_code == 201, short.text
    assert abs(month.json()["expires"] - (time.time() + 30 * 86400)) < 60 and forever.json()["expires"] == 0
    assert api.get("/v1/devices", headers=_bearer(short.json()["token"])).status_code == 200

    # Act: the short one's second passes
    time.sleep(1.2)

    # Assert: it is refused like a revoked token (401) and listed as expired; the others go on
    r = api.get("/v1/devices", headers=_bearer(short.json()["token"]))
    assert r.status_code == 401
    assert coord.registry.check_token("f", short.json()["token"]) is None
    for other in (month, forever):
        assert api.get("/v1/devices", headers=_bearer(other.json()["token"])).status_code == 200
    listed = {t["name"]: t for t in api.get("/v1/tokens", headers=BOOT_H).json()}
    assert listed["short"]["expired"] is True and listed["month"]["expired"] is False
    assert listed["forever"]["expires"] == 0 and listed["forever"]["expired"] is False
    # lifetimes are bounded: at least a second, at most 366 days, an integer
    for bad in (0, -5, 366 * 86400 + 1, 10**30, 1.5, "30d"):
        r = api.post("/v1/tokens", headers=BOOT_H, json={"name": "bad", "scope": "read", "expires_in": bad})
        assert r.status_code == 422, (bad, r.text)
    with pytest.raises(ConfigError):
        coord.registry.create_token("f", "nan", "read", float("nan"))
    # an expired token's name stays taken until it is revoked
    assert api.post("/v1/tokens", headers=BOOT_H, json={"name": "short", "scope": "read"}).status_code == 409
    assert api.delete("/v1/tokens/short", headers=BOOT_H).status_code == 200


def test_fleet_tokens_create_expires_cli(live: tuple[str, Coordinator], capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli import main as cli_main

    base, coord = live
    monkeypatch.setenv("EDGEFLEET_API", base)
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    monkeypatch.setenv("COLUMNS", "240")
    capsys.readouterr()
    assert cli_main(["fleet", "tokens", "create", "--scope", "read", "--name", "ci", "--expires", "30d"]) == 0
    out = capsys.readouterr()
    assert "expires 20" in out.err and out.out.strip().startswith("eft_")
    (row,) = coord.registry.tokens("f")
    assert abs(row.expires - (time.time() + 30 * 86400)) < 60
    assert cli_main(["fleet", "tokens", "list"]) == 0
    assert "never" not in capsys.readouterr().out
    for bad in ("367d", "soon", "0s"):
        # refused by the parser, before any call: one line, exit code 2
        assert cli_main(["fleet", "tokens", "create", "--scope", "read", "--name", "x", "--expires", bad]) == 2
        assert "--expires" in capsys.readouterr().err
    assert [t.name for t in coord.registry.tokens("f")] == ["ci"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_older_registry_tokens_never_expire(backend: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    url, prefix = _url(backend, tmp_path), f"t{uuid.uuid4().hex[:8]}_"
    reg = Registry(url, prefix=prefix)
    secret = reg.create_token("f", "old", "read")
    with reg.engine.begin() as c:  # as a registry written before tokens could expire
        c.execute(text(f"ALTER TABLE {prefix}tokens DROP COLUMN expires"))
    reg.close()
    reg = Registry(url, prefix=prefix)
    try:
        assert reg.check_token("f", secret) == Principal("old", "read")
        assert reg.tokens("f")[0].expires == 0 and reg.tokens("f")[0].expired is False
    finally:
        reg.drop_all()
        reg.close()
