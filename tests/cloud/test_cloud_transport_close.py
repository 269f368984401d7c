"""MqttTransport.close() against a real mosquitto: a clean close flushes and never fires the last will."""

from __future__ import annotations

import time
from typing import Any

from conftest import wait_for
from helpers import mqtt

from edgefleet.cloud_sync.transport import Will


def _listener(url: str, client_id: str, topic_filter: str) -> tuple[Any, list[tuple[str, bytes]]]:
    got: list[tuple[str, bytes]] = []
    t = mqtt(url, client_id, clean_start=True, session_expiry=0)
    t.on_message(lambda topic, payload: got.append((topic, payload)))
    t.subscribe(topic_filter, qos=1)
    t.connect(timeout=10)
    time.sleep(0.2)  # SUBACK
    return t, got


def test_close_flushes_queued_publishes_and_sends_no_will(broker: Any) -> None:
    listener, got = _listener(broker.url, "close-listener", "close/#")
    # max_inflight=10: most of the 300 publishes are still waiting in paho for a slot when close() is called
    sender = mqtt(broker.url, "close-sender", will=Will("close/will", b"gone", qos=1, retain=False), max_inflight=10)
    sender.connect(timeout=10)
    for i in range(300):
        sender.publish("close/data", str(i).encode(), qos=1)
    t0 = time.monotonic()
    sender.close()
    assert time.monotonic() - t0 < 5
    assert not sender.connected
    wait_for(lambda: sum(t == "close/data" for t, _ in got) >= 300, timeout=10)
    time.sleep(0.5)  # a will, if any, would arrive right after the connection dropped
    data = [int(p) for t, p in got if t == "close/data"]
    assert sorted(set(data)) == list(range(300))
    assert not [p for t, p in got if t == "close/will"], "a clean close published the last will"
    listener.close()


def test_close_is_bounded_when_the_broker_is_gone(broker: Any) -> None:
    sender = mqtt(broker.url, "close-gone", max_inflight=10)
    sender.connect(timeout=10)
    broker.kill()
    wait_for(lambda: not sender.connected, timeout=10)
    for i in range(20):
        sender.publish("close/data", str(i).encode(), qos=1)
    t0 = time.monotonic()
    sender.close(timeout=1.0)
    assert time.monotonic() - t0 < 3  # nothing can be flushed: close gives up after its timeout, not hangs
    assert not sender.connected
