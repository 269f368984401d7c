"""Rollback through signed orders: the health gate and the operator order devices back with an order signed by
the operator key; the device refuses unsigned, tampered, misaddressed and replayed orders, with the reason in the
job status (real mosquitto; attacks are published with a raw paho client)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers import coordinator, device
from jobs_fakes import FakeDevices, RawClient

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.orders import OrderRefused, RollbackOrder, check_order
from edgefleet.keys import PrivateKey


def _order(key: PrivateKey, seq: int = 10, device: str = "d0", job: str = "j1", **kw: Any) -> dict[str, Any]:
    return RollbackOrder("f1", device, "dep1", job, "2", "1", seq, time.time(), kw.pop("expires_at", 0.0)).sign(key)


def test_check_order(keys: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    trusted = [keys["priv"].public]
    ok = {"trusted": trusted, "require_signature": True, "fleet": "f1", "device_id": "d0", "job_id": "j1",
          "deployment_id": "dep1", "to_version": "1", "last_seq": 5}

    def refused(doc: Any, **over: Any) -> str:
        with pytest.raises(OrderRefused) as e:
            check_order(doc, **{**ok, **over})
        return e.value.reason

    good = _order(keys["priv"])
    assert check_order(good, **ok).seq == 10  # type: ignore[union-attr]
    assert refused(None) == "order_unsigned"
    assert refused({"order": good["order"]}) == "order_unsigned"
    tampered = json.loads(json.dumps(good))
    tampered["order"]["to_version"] = "0"
    assert refused(tampered, to_version="0") == "order_signature"
    assert refused(_order(PrivateKey(Ed25519PrivateKey.generate()))) == "order_signature"  # an untrusted key
    assert refused(good, trusted=[]) == "order_signature"
    assert refused(good, device_id="d9") == "order_misaddressed" and refused(good, fleet="f2") == "order_misaddressed"
    assert refused(good, job_id="j2") == "order_mismatch" and refused(good, to_version="0") == "order_mismatch"
    assert refused(_order(keys["priv"], expires_at=time.time() - 1)) == "order_expired"
    assert refused(good, last_seq=11) == "order_replayed" and refused(good, last_seq=10) == "order_replayed"
    assert check_order(good, **{**ok, "last_seq": 10, "last_job": "j1"}) is not None  # the same job, resumed
    bad_body = {"order": {**good["order"], "seq": "x"}, "signature": {}}
    assert refused(bad_body, require_signature=False) == "order_malformed"
    assert check_order(None, **{**ok, "require_signature": False}) is None  # a device that verifies nothing
    dev = {**ok, "require_signature": False, "trusted": []}  # ... still checks addressing and freshness
    assert check_order({"order": good["order"]}, **dev) is not None
    assert refused({"order": good["order"]}, **{**dev, "device_id": "d9"}) == "order_misaddressed"
    assert refused(good, **{**dev, "last_seq": 11}) == "order_replayed"


def test_serve_refuses_a_bad_signing_key(tmp_path: Path, capsys: Any) -> None:
    from edgefleet.cli import main as cli_main

    (tmp_path / "pub.pem").write_bytes(b"not a key")
    for path in (tmp_path / "missing.key", tmp_path / "pub.pem"):
        assert cli_main(["cloud", "serve", "--fleet", "f1", "--token", "t", "--db", f"sqlite:///{tmp_path}/r.db",
                         "--signing-key", str(path)]) == 2
        assert str(path) in capsys.readouterr().err


def test_rollback_orders_signed_and_verified(broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path],
                                             keys: dict[str, Any], monkeypatch: Any) -> None:
    coord = coordinator(broker.url, tmp_path / "reg.db", signing_key=keys["priv"])
    spy = RawClient(broker.port, "spy")
    spy.subscribe("edgefleet/v1/f1/devices/+/up/job")
    agents = {d: make_agent(d, install=archives["1"]) for d in ("d0", "d1", "d2")}
    syncs = {"d0": device(broker.url, agents["d0"], tmp_path),
             **{d: device(broker.url, agents[d], tmp_path, group="b") for d in ("d1", "d2")}}
    x1 = FakeDevices(broker.port, "f1", ["x1"], "g", answer=lambda dev, d: ["DOWNLOADING", "FAILED"])
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 4)
    topic = {d: P.down_topic("f1", d, P.Down.DESIRED) for d in ("d0", "d1", "d2")}

    # 1. the health gate: d0 (canary) succeeds, x1 fails in the wave, the rollout halts, d0 is ordered back
    dep = coord.create_deployment(archives["2"].read_bytes(), "g", RolloutPlan(0.5, (1.0,), 0.0))
    wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 30)
    rb = wait_for(lambda: [j for j in coord.registry.jobs(dep.id) if j.action == "rollback"
                           and j.status == "SUCCEEDED"], 30)
    assert [j.device_id for j in rb] == ["d0"] and rb[0].reason == "rolled_back"
    assert agents["d0"].active_version == "1"
    legit = spy.retained(topic["d0"])
    order = P.Desired.parse(legit).rollback_order
    assert order is not None and order["order"]["device_id"] == "d0" and order["signature"]["algorithm"] == "ed25519"

    # 2. the operator: d2 goes back; d1's order is caught on the way (the broker is the attacker's) and altered
    dep_b = coord.create_deployment(archives["2"].read_bytes(), "b", RolloutPlan(0.0, (1.0,), 0.0))
    wait_for(lambda: coord.registry.deployment(dep_b.id).state == "completed", 30)
    caught: list[P.Desired] = []
    publish = coord._publish_desired
    monkeypatch.setattr(coord, "_publish_desired",
                        lambda dev, d: caught.append(d) if dev == "d1" else publish(dev, d))
    coord.set_state(dep_b.id, "rollback")
    status = lambda d: {j.device_id: j for j in coord.registry.jobs(dep_b.id)  # noqa: E731
                        if j.action == "rollback"}.get(d)
    wait_for(lambda: getattr(status("d2"), "status", None) == "SUCCEEDED", 30)
    assert agents["d2"].active_version == "1" and len(caught) == 1
    doc = caught[0].to_dict()
    doc["rollback_order"]["order"]["to_version"] = doc["rollback_to"] = doc["target_version"] = "0"
    spy.publish(topic["d1"], json.dumps(doc).encode(), retain=True)
    wait_for(lambda: getattr(status("d1"), "status", None) == "REJECTED", 30)
    assert status("d1").reason == "order_signature" and agents["d1"].active_version == "2"

    # 3. replays: d0's executed order again (after d0 reinstalled 2), an older signed order, no order at all,
    #    and d0's order sent to d1
    agents["d0"].install(archives["2"], wait=True, timeout=30)
    assert agents["d0"].active_version == "2"
    spy.publish(topic["d0"], legit)  # a duplicate of a finished job: its outcome is repeated, nothing else
    seq = order["order"]["seq"]
    for job, doc_ in (("old1", _order(keys["priv"], seq - 1, job="old1")), ("nosig", None)):
        spy.publish(topic["d0"], P.Desired(job, "rollback", "dep1", "1", rollback_to="1",
                                           rollback_order=doc_).to_bytes())
    spy.publish(topic["d1"], legit)
    reasons = lambda d: {u.job_id: u.reason for u in spy.jobs("f1", d) if u.status == "REJECTED"}  # noqa: E731
    wait_for(lambda: len(reasons("d0")) == 2 and rb[0].job_id in reasons("d1"), 20)
    assert reasons("d0") == {"old1": "order_replayed", "nosig": "order_unsigned"}
    assert reasons("d1")[rb[0].job_id] == "order_misaddressed"
    time.sleep(0.3)
    assert agents["d0"].active_version == "2" and agents["d1"].active_version == "2"
    assert syncs["d0"].stats["orders_refused"] == 2
    assert coord.counters["unsigned_orders"] == 0 and coord.counters["rollbacks_ordered"] == 3
    for c in (spy, x1):
        c.close()
    for s in syncs.values():
        s.stop()
    coord.stop()
