"""Bare paho clients on the real broker: simulated devices that speak the protocol, and an attacker."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from edgefleet.cloud_sync.wire import protocol as P


class RawClient:
    """A plain paho MQTT 5 client (no edgefleet transport): sees and sends raw bytes."""

    def __init__(self, port: int, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.port = port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.handlers: list[Callable[[str, bytes], None]] = []
        self._up = threading.Event()
        self.client.on_connect = lambda *a: self._up.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._up.wait(10):
            raise RuntimeError("raw client could not connect")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        for h in list(self.handlers):
            h(msg.topic, bytes(msg.payload))

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def received(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def jobs(self, fleet: str, device: str) -> list[P.JobUpdate]:
        """The job updates a device published (what the coordinator was told)."""
        return [P.JobUpdate.parse(p) for p in self.received(P.up_topic(fleet, device, P.Up.JOB))]

    def retained(self, topic: str, timeout: float = 5.0) -> bytes:
        """The retained message of ``topic`` (a fresh subscription gets it)."""
        import paho.mqtt.client as mqtt

        got: list[bytes] = []
        ev = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peek-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv5)

        def on_msg(cl: Any, ud: Any, msg: Any) -> None:
            if msg.retain:
                got.append(bytes(msg.payload))
                ev.set()

        c.on_message = on_msg
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        try:
            if not ev.wait(timeout):
                raise AssertionError(f"nothing retained on {topic}")
            return got[-1]
        finally:
            c.loop_stop()
            c.disconnect()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


Answer = Callable[[str, P.Desired], list[str]]


class FakeDevices(RawClient):
    """Simulated devices of one fleet: a retained birth each, and ``answer(device, desired)`` gives the job
    statuses to report (versions 1, 2, ...) when a desired job arrives. Every desired seen is kept."""

    def __init__(self, port: int, fleet: str, devices: list[str], group: str, answer: Answer | None = None,
                 client_id: str = "fake-devices") -> None:
        from helpers import assign

        assign(devices, group)  # the operator assigns them (a device's own claim is never applied)
        super().__init__(port, client_id)
        self.fleet = fleet
        self.answer = answer
        self.desired: dict[str, list[P.Desired]] = {d: [] for d in devices}
        self.handlers.append(self._desired)
        for d in devices:
            self.subscribe(P.down_topic(fleet, d, P.Down.DESIRED))
        time.sleep(0.1)
        for d in devices:
            self.publish(P.up_topic(fleet, d, P.Up.STATUS),
                         P.Status(d, True, 1, time.time(), "sim", "1", group=group).to_bytes(), retain=True)

    def _desired(self, topic: str, payload: bytes) -> None:
        info = P.parse_topic(topic)
        if info.kind != P.Down.DESIRED.value or not payload:
            return
        d = P.Desired.parse(payload)
        self.desired.setdefault(info.device, []).append(d)
        if self.answer is None or d.action == P.JobAction.NONE.value:
            return
        for v, status in enumerate(self.answer(info.device, d), start=1):
            self.report(info.device, d.job_id, status, v, active_version=d.target_version if status == "SUCCEEDED"
                        else "1")

    def report(self, device: str, job_id: str, status: str, version: int, active_version: str = "",
               reason: str = "") -> None:
        self.client.publish(P.up_topic(self.fleet, device, P.Up.JOB),
                            P.JobUpdate(job_id, status, version, version - 1, reason=reason,
                                        active_version=active_version, ts=time.time()).to_bytes(), qos=1)
