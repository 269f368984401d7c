"""Two ``edgefleet cloud serve`` processes on one PostgreSQL registry and one MQTT 5 shared subscription
(benchmarks/multi_coordinator.py at test size): a staged rollout to 200 simulated devices, the coordinator that
dispatched the canary killed with SIGKILL and restarted by its supervisor; each stage starts once, each device
gets one install job (in the registry and on the wire) and installs it once, every job SUCCEEDED.

PostgreSQL: the server scripts/postgres.sh starts (127.0.0.1, port ``EDGEFLEET_PG_PORT`` or 5432, trust auth);
the test gets a database of its own there and drops it. It skips, saying so, only when no server answers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# at import time: while the suite runs, "conftest" is the module of the folder collected last (tests/sdk)
from conftest import wait_for  # noqa: E402
from helpers import mqtt, pg_url  # noqa: E402

from benchmarks import cluster, multi_coordinator  # noqa: E402


def test_two_coordinator_processes_dispatch_each_stage_and_each_job_once(tmp_path: Path) -> None:
    if not cluster.pg_reachable():
        pytest.skip(f"no PostgreSQL answers at {cluster.default_pg_server()}: run scripts/postgres.sh (scripts/setup.sh "
                    "does) to start one")
    r = multi_coordinator.run(devices=200, workers=2, coordinators=2, kill=True, timeout=300, root=tmp_path,
                              say=print)
    assert r["devices_online_before_deploy"] == 200
    assert r["deployment_state"] == "completed", r
    assert r["stages"] == {"0": 1, "1": 1, "2": 1, "3": 1} and r["each_stage_once"], r
    assert r["ends"] == ["completed"]
    killed = r["killed"]
    assert killed is not None and killed["new_pid"] != killed["pid"]  # the canary's dispatcher died mid-rollout
    e = r["each_job"]
    assert e["registry_jobs"] == e["targets"] == e["succeeded"] == 200, e
    assert e["devices_with_more_than_one_registry_job"] == 0 and e["devices_without_a_registry_job"] == 0, e
    assert e["devices_sent_more_than_one_install_job"] == 0 and e["devices_sent_no_install_job"] == 0, e
    assert e["devices_installed_more_than_once"] == 0 and e["devices_installed_once"] == 200, e
    assert r["each_job_once"]
    later = {d["by"] for d in r["stage_dispatchers"] if d["stage"] > 0}
    assert later and all("(killed)" not in who for who in later)  # the later stages: a live coordinator


def test_a_message_handled_only_after_a_crash_is_delivered_again(broker: object) -> None:
    """MqttTransport.on_message_ack (what the coordinator uses): the broker gets a message's PUBACK only once the
    handler acks it, so a message received but not handled when the connection died comes again with the
    persistent session; once acknowledged it does not (before: paho acknowledged on receipt, and a coordinator
    killed with messages in its queue lost them: job reports stayed IN_PROGRESS for good)."""
    import socket
    import threading


    url = broker.url  # type: ignore[attr-defined]
    got: list[tuple[bytes, object]] = []
    lock = threading.Lock()
    sub = mqtt(url, "ack-sub")

    def on(topic: str, payload: bytes, ack: object) -> None:
        with lock:
            got.append((payload, ack))

    sub.on_message_ack(on)
    sub.subscribe("t/#", qos=1)
    sub.connect(timeout=10)
    pub = mqtt(url, "ack-pub")
    pub.connect(timeout=10)
    try:
        def cut() -> None:  # the connection dies without DISCONNECT (as a killed process's does)
            wait_for(lambda: not sub.client._out_packet, 10)  # what was acked has been written to the socket
            before = sub.connects
            s = sub.client.socket()
            assert s is not None
            s.shutdown(socket.SHUT_RDWR)
            wait_for(lambda: sub.connects > before and sub.connected, 20)

        pub.publish("t/a", b"one", qos=1)
        wait_for(lambda: len(got) == 1, 10)
        cut()  # not acknowledged: delivered again on the resumed session
        wait_for(lambda: len(got) == 2, 10)
        assert got[1][0] == b"one"
        got[0][1]()  # type: ignore[operator]  # the first copy's ack, from the old connection: sends nothing
        got[1][1]()  # type: ignore[operator]
        pub.publish("t/a", b"two", qos=1)
        wait_for(lambda: len(got) == 3, 10)
        got[2][1]()  # type: ignore[operator]
        cut()  # both acknowledged: nothing comes again
        pub.publish("t/a", b"three", qos=1)
        wait_for(lambda: len(got) == 4, 10)
        assert [p for p, _ in got] == [b"one", b"one", b"two", b"three"]
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_registries_provision_the_same_devices_at_once(backend: str, tmp_path: Path) -> None:
    """Two coordinators started together with the same ``--allow`` file create the same device rows at once: the
    insert that loses becomes an update (before: an IntegrityError, and a ``cloud serve`` process of the
    10,000-device multi-coordinator run died at startup)."""
    import threading
    import uuid

    from edgefleet.cloud_sync.coordinator.registry import Registry

    url = pg_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'reg.db'}"
    if url is None:
        pytest.skip("PostgreSQL is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    regs = [Registry(url, prefix=prefix) for _ in range(2)]  # two processes' worth: own engines and pools
    ids = [f"p{i:03d}" for i in range(300)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def provision(reg: Registry, group: str) -> None:
        start.wait()
        try:
            for d in ids:
                reg.upsert_device("f", d, group_name=group)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=provision, args=(r, g)) for r, g in zip(regs, ("a", "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:1]
        rows = regs[0].devices("f")
        assert sorted(r.device_id for r in rows) == ids and {r.group for r in rows} <= {"a", "b"}
    finally:
        regs[0].drop_all()
        for r in regs:
            r.close()
