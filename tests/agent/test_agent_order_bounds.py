"""Issue 12, finding 4: rollback orders are single-use and valid only within signed time bounds.

Local orders (``agent install --rollback-order``) are recorded, durably, before they take effect: the same
order given again (even to a new process) is refused ``order_replayed`` and the active version stays.
Both order paths (local and the coordinator's) check ``issued_at`` as well as ``expires_at`` under the
clock policy of :mod:`edgefleet.device_agent.orders` (``[update] clock`` and ``clock_skew_seconds``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.cloud_sync.wire.orders import OrderRefused, RollbackOrder, check_order
from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, UpdateConfig
from edgefleet.device_agent.orders import ClockPolicy, OrderLedger, check_rollback_order, make_rollback_order
from edgefleet.device_agent.updates import JobStatus
from edgefleet.errors import UpdateRejectedError

DAY = 86400.0


def ef(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})


def cfg_for(state: Path, keys: dict, **update: Any) -> AgentConfig:
    return AgentConfig(state_dir=str(state), device_id="dev-1", hardware_tags=("test-board",),
                       trusted_keys=(str(keys["pub"]),), update=UpdateConfig(probation_seconds=0.0, **update))


# -- single use ------------------------------------------------------------------------------------------------------
def test_a_local_rollback_order_works_once(tmp_path: Path, keys: dict, bundles: dict) -> None:
    """The review's case: a device on v4 went back to v1 again with the order it had already used."""
    state = tmp_path / "st"
    cfg = cfg_for(state, keys)
    order = make_rollback_order(keys["priv"], bundles["1"])  # addressed to no device in particular
    (tmp_path / "order.json").write_text(json.dumps(order))
    with Agent(cfg, monitor=False) as a:
        for v in ("1", "2"):
            assert a.install(bundles[v]).status is JobStatus.SUCCEEDED
        job = a.install(bundles["1"], rollback_order=order)
        assert job.status is JobStatus.SUCCEEDED, job.message
        assert a.install(bundles["4"]).status is JobStatus.SUCCEEDED
        again = a.install(bundles["1"], rollback_order=order)
        assert again.status is JobStatus.REJECTED and again.reason == "order_replayed", again
        assert a.active_version == "4"
    # another process, the CLI: the order is remembered on disk
    p = ef("agent", "install", str(bundles["1"]), "--state-dir", str(state), "--hardware-tag", "test-board",
           "--trust", str(keys["pub"]),
           "--rollback-order", str(tmp_path / "order.json"))
    assert p.returncode == 12 and "order_replayed" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    with Agent(cfg, monitor=False) as a:
        assert a.active_version == "4"
    # a fresh order for the same bundle is a new decision of the operator: accepted once
    fresh = make_rollback_order(keys["priv"], bundles["1"], device_id="dev-1")
    with Agent(cfg, monitor=False) as a:
        assert a.install(bundles["1"], rollback_order=fresh).status is JobStatus.SUCCEEDED


def test_the_ledger_is_durable_and_a_damaged_one_refuses_older_orders(tmp_path: Path) -> None:
    led = OrderLedger(tmp_path / "orders.json")
    led.record("a" * 64, issued_at=1000.0, signed=True)
    again = OrderLedger(tmp_path / "orders.json")
    assert again.used("a" * 64) and again.floor == 1000.0
    (tmp_path / "orders.json").write_bytes(b"\x00\x01 not json")
    damaged = OrderLedger(tmp_path / "orders.json", now=lambda: 5000.0)
    assert list(tmp_path.glob("orders.json.corrupt-*"))
    assert damaged.not_before == 5000.0  # orders issued before the damage was found may have been used


def test_a_local_order_without_an_issue_time_is_refused(tmp_path: Path, keys: dict, bundles: dict) -> None:
    order = make_rollback_order(keys["priv"], bundles["1"])
    from edgefleet.canonical import canonical_json, sha256_bytes
    from edgefleet.keys import sign_payload

    body = {k: v for k, v in order["order"].items() if k not in ("issued_at", "order_id")}
    body["expires_at"] = 0
    legacy = {"order": body, "signature": sign_payload(keys["priv"], canonical_json(body))}
    mid = sha256_bytes((bundles["1"] / "manifest.json").read_bytes())
    with pytest.raises(UpdateRejectedError) as e:
        check_rollback_order(legacy, mid, [keys["priv"].public])
    assert e.value.reason == "bad_rollback_order" and "issue time" in str(e.value)


# -- time bounds: local orders ---------------------------------------------------------------------------------------
def test_local_order_time_bounds(keys: dict, bundles: dict) -> None:
    from edgefleet.canonical import sha256_bytes

    mid = sha256_bytes((bundles["1"] / "manifest.json").read_bytes())
    trusted = [keys["priv"].public]
    order = make_rollback_order(keys["priv"], bundles["1"], expires_in=7 * DAY)
    issued = order["order"]["issued_at"]
    system = ClockPolicy("system", 300.0)

    def reason(now: float, policy: ClockPolicy = system, floor: float = 0.0, synchronized: bool | None = None) -> str:
        with pytest.raises(UpdateRejectedError) as e:
            check_rollback_order(order, mid, trusted, now=now, clock=policy, floor=floor, synchronized=synchronized)
        return e.value.reason

    check_rollback_order(order, mid, trusted, now=issued + 60, clock=system)
    check_rollback_order(order, mid, trusted, now=issued - 200, clock=system)  # within the skew
    assert reason(issued - 40 * DAY) == "order_not_yet_valid"  # the device clock is 40 days slow
    assert reason(issued + 8 * DAY) == "order_expired"


# -- time bounds: the coordinator's orders -------------------------------------------------------------------------
def _cloud(key: Any, issued: float, ttl: float = 7 * DAY, seq: int = 10) -> dict[str, Any]:
    return RollbackOrder("f1", "d0", "dep1", "j1", "2", "1", seq, issued, issued + ttl).sign(key)


OK = {"require_signature": True, "fleet": "f1", "device_id": "d0", "job_id": "j1", "deployment_id": "dep1",
      "to_version": "1", "last_seq": 5}


def _refused(doc: Any, **kw: Any) -> str:
    with pytest.raises(OrderRefused) as e:
        check_order(doc, **{**OK, **kw})
    return e.value.reason


def test_cloud_order_issued_at_is_checked_slow_clock(keys: dict) -> None:
    """A device clock 40 days slow accepted an order that had expired 30 days ago."""
    real = time.time()
    old = _cloud(keys["priv"], real - 37 * DAY)  # expired 30 days ago
    device_now = real - 40 * DAY
    trusted = [keys["priv"].public]
    # a clock the kernel calls synchronized (an NTP source set it 40 days back): issued_at is in its future
    assert _refused(old, trusted=trusted, now=device_now, synchronized=True) == "order_not_yet_valid"
    assert _refused(old, trusted=trusted, now=device_now, clock="system") == "order_not_yet_valid"
    # a device without a reliable clock that has seen a newer signed time (a later order) knows it expired
    assert _refused(old, trusted=trusted, now=device_now, synchronized=False, floor=real - 1 * DAY) == "order_expired"
    assert _refused(old, trusted=trusted, now=device_now, clock="none", floor=real - 1 * DAY) == "order_expired"


def test_cloud_order_fast_clock_without_sync(keys: dict) -> None:
    """A device clock 8 days fast refused a fresh, valid order."""
    real = time.time()
    fresh = _cloud(keys["priv"], real - 60)
    trusted = [keys["priv"].public]
    # the clock is not synchronized (no NTP): the device does not trust it and uses signed time instead
    assert check_order(fresh, **{**OK, "trusted": trusted, "now": real + 8 * DAY, "synchronized": False}) is not None
    assert check_order(fresh, **{**OK, "trusted": trusted, "now": real + 8 * DAY, "clock": "none"}) is not None
    # a synchronized clock is believed: 8 days past the issue time the order has expired (named, not executed)
    assert _refused(fresh, trusted=trusted, now=real + 8 * DAY, synchronized=True) == "order_expired"
    # within the skew either way
    assert check_order(fresh, **{**OK, "trusted": trusted, "now": real - 200, "clock": "system"}) is not None


def test_device_sync_records_cloud_orders_durably(tmp_path: Path, keys: dict) -> None:
    """The cloud path keeps the last executed sequence and the signed time floor in the agent's ledger."""
    led = OrderLedger(tmp_path / "orders.json")
    real = time.time()
    order = check_order(_cloud(keys["priv"], real), **{**OK, "trusted": [keys["priv"].public], "clock": "system"})
    assert order is not None
    led.record(f"fleet:{order.job_id}:{order.seq}", order.issued_at, signed=True, seq=order.seq, job=order.job_id)
    again = OrderLedger(tmp_path / "orders.json")
    assert again.seq == 10 and again.job == "j1" and again.floor == pytest.approx(real)
