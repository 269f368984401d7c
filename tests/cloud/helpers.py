"""Shared helpers for the real-broker cloud tests."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgefleet.cloud_sync.broker import free_port  # noqa: F401  (conftest and the tests import it from here)
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.device import DeviceSync
from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

_ids = itertools.count()
#: coordinators started by ``coordinator()`` in the running test (cleared after each test by
#: conftest): they play the operator for the devices the helpers add, since a device's group
#: is assigned by the operator, never taken from its own status message
OPERATED: list[Coordinator] = []


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM a process the test started and wait for it; SIGKILL it if it does not end within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assign(devices: list[str] | tuple[str, ...], group: str) -> None:
    """The operator assigns ``devices`` to ``group`` on the test's coordinators (before they connect)."""
    for c in OPERATED:
        c.provision({d: group for d in devices})


def pg_url() -> str | None:
    """The test PostgreSQL (127.0.0.1, port ``EDGEFLEET_PG_PORT`` or 5432, database ``test``: what
    scripts/postgres.sh starts), or None when it is not running."""
    port = int(os.environ.get("EDGEFLEET_PG_PORT", "5432"))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return None
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"


def mqtt(url: str, client_id: str, will: Any = None, **kw: Any) -> MqttTransport:
    return MqttTransport(MqttConfig(url=url, client_id=client_id, reconnect_min=0.2, reconnect_max=1.0, **kw), will)


def coordinator(url: str, db: Path | str, fleet: str = "f1", **kw: Any) -> Coordinator:
    reg = Registry(db if isinstance(db, str) else f"sqlite:///{db}")
    kw.setdefault("tick_seconds", 0.1)
    c = Coordinator(reg, mqtt(url, f"coord-{next(_ids)}-{id(reg)}"), fleet, **kw)
    c.start()
    assert c.transport.wait_connected(10)  # type: ignore[attr-defined]
    OPERATED.append(c)
    return c


def device(url: str, agent: Any, root: Path, fleet: str = "f1", group: str = "g", **kw: Any) -> DeviceSync:
    dev = agent.config.device_id
    assign([dev], group)  # the operator's assignment; the device's own claim (group=) is not applied
    kw.setdefault("telemetry_interval", 0.2)
    kw.setdefault("stall_seconds", 1.0)
    conn = {k: kw.pop(k) for k in ("username", "password") if k in kw}
    s = DeviceSync(agent, lambda will: mqtt(url, dev, will, **conn), fleet, dev, root / "sync" / dev, group=group,
                   **kw)
    s.start()
    return s


@contextmanager
def serve_api(coord: Coordinator, token: str, *, ssl_certfile: str | None = None,
              ssl_keyfile: str | None = None) -> Iterator[str]:
    """The coordinator's HTTP API on a free loopback port, served by uvicorn in a thread as ``cloud serve`` does
    (no logging dictConfig: it would close handlers other libraries hold); yields its base URL, stops on exit.
    With ``ssl_certfile``/``ssl_keyfile`` (as ``cloud serve --tls-cert/--tls-key``) it serves https."""
    import uvicorn

    from edgefleet.cloud_sync.coordinator.api import create_app, server_config

    port = free_port()
    server = uvicorn.Server(server_config(create_app(coord, token), "127.0.0.1", port, log_level="error",
                                          ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start within 10 s"
        time.sleep(0.05)
    try:
        yield f"{'https' if ssl_certfile else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
