"""The coordinator's HTTP API against a hostile client (issue 13, finding 3): integers bounded (422, not
500), auth checked and the body size limited before a body is read, the registry file private."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from helpers import serve_api

from edgefleet.cloud_sync.coordinator import api as api_module
from edgefleet.cloud_sync.coordinator.api import create_app
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport

TOKEN = "t0ken"
H = {"Authorization": f"Bearer {TOKEN}"}
MAX_JSON_BODY = getattr(api_module, "MAX_JSON_BODY", 1 << 20)


@pytest.fixture()
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(Registry(f"sqlite:///{tmp_path / 'reg.db'}"), MemoryTransport(MemoryBroker(), "coord"), "f")
    yield c
    c.registry.close()


@pytest.fixture()
def client(coord: Coordinator) -> Iterator[TestClient]:
    with TestClient(create_app(coord, TOKEN), raise_server_exceptions=False) as c:
        yield c


def test_huge_integers_are_422_not_500(client: TestClient) -> None:
    r = client.post("/v1/federated/runs", headers=H, json={"group": "g", "strategy": "fedavg", "rounds": 10**30})
    assert r.status_code == 422, r.text
    assert "rounds" in r.text
    run = client.post("/v1/federated/runs", headers=H, json={"group": "g", "strategy": "fedavg", "rounds": 3}).json()
    r = client.put(f"/v1/federated/runs/{run['id']}/rounds/{2**70}", headers=H, json={})
    assert r.status_code == 422, r.text
    r = client.put(f"/v1/federated/runs/{run['id']}/rounds/1", headers=H, json={"examples": 2**63})
    assert r.status_code == 422 and "examples" in r.text, r.text
    r = client.put(f"/v1/federated/runs/{run['id']}/rounds/1", headers=H, json={"participants": 10**30})
    assert r.status_code == 422, r.text
    r = client.put("/v1/retrain/g", headers=H, json={"on_drift": True, "rounds": 10**30})
    assert r.status_code == 422, r.text
    r = client.put("/v1/retrain/g", headers=H, json={"on_drift": True, "min_devices": 10**30})
    assert r.status_code == 422, r.text
    r = client.patch("/v1/devices/d1", headers=H, json={"group": "g" * 10_000})
    assert r.status_code == 422, r.text
    assert client.put(f"/v1/federated/runs/{run['id']}/rounds/1", headers=H, json={"examples": 5}).status_code == 200


def test_auth_is_checked_before_the_body_is_parsed(client: TestClient) -> None:
    r = client.post("/v1/federated/runs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/federated/runs", content=b"{not json",
                    headers={"Content-Type": "application/json", "Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert client.get("/healthz").status_code == 200  # public


def test_bodies_beyond_the_limit_are_413_before_they_are_read(client: TestClient) -> None:
    big = b"[" + b"0," * (MAX_JSON_BODY // 2) + b"0]"
    r = client.put("/v1/retrain/g", headers={**H, "Content-Type": "application/json"}, content=big)
    assert r.status_code == 413, r.text[:300]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        for _ in range(MAX_JSON_BODY // 65536 + 2):
            yield b" " * 65536

    r = client.put("/v1/retrain/g", headers={**H, "Content-Type": "application/json"}, content=chunks())
    assert r.status_code == 413, r.text[:300]
    r = client.post("/v1/deployments?group=g", headers=H, content=b"x" * (MAX_JSON_BODY + 1))
    assert r.status_code != 413  # bundles have their own, larger limit


def test_a_huge_unauthenticated_body_is_refused_without_waiting_for_it(coord: Coordinator) -> None:
    """Headers announcing 300 MiB and no token: the live server answers 401 at once, not after reading it."""
    with serve_api(coord, TOKEN) as url:
        port = int(url.rsplit(":", 1)[1])
        for auth, want in ((b"", b" 401 "), (f"Authorization: Bearer {TOKEN}\r\n".encode(), b" 413 ")):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"POST /v1/deployments?group=g HTTP/1.1\r\nHost: x\r\n" + auth +
                          b"Content-Length: " + str(300 << 20).encode() + b"\r\n\r\n" + b"x" * 1024)
                head = s.recv(4096)
            assert want in head.split(b"\r\n")[0], head


def test_registry_sqlite_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        reg = Registry(f"sqlite:///{tmp_path / 'fresh.db'}")
        reg.upsert_device("f", "d1")
        reg.close()
        (tmp_path / "old.db").write_bytes(b"")
        os.chmod(tmp_path / "old.db", 0o644)
        Registry(f"sqlite:///{tmp_path / 'old.db'}").close()
    finally:
        os.umask(old)
    for name in ("fresh.db", "old.db"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
