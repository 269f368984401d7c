"""Fleet OTA over a real mosquitto: many simulated devices per process, the real protocol and coordinator.

    python -m benchmarks.fleet_ota [--devices 1000] [--quick]

Starts its own mosquitto on a free loopback port (queue limits lifted), a
coordinator (SQLite registry) and N simulated devices (each a paho MQTT 5
client running the real chunk receiver). Measures:

* time for all devices to receive and verify a ~1 MB bundle, and wire bytes per
  device (chunk frames + job message) over the bundle size (target <= 1.05x);
* chunks re-sent after a forced reconnect of a tenth of the devices mid-transfer;
* bsdiff4 delta size for a fine-tuned model (2% of weights nudged) vs the full bundle (target <= 30%);
* coordinator telemetry ingest rate vs a plain paho subscriber counting the same stream (target >= 0.8x).

Writes benchmarks/results/fleet_ota.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests" / "agent"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 100\nlog_dest none\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"mqtt://127.0.0.1:{port}"


def _bundles(root: Path) -> tuple[bytes, bytes]:
    import numpy as np
    import onnx
    from agent_helpers import make_onnx
    from onnx import numpy_helper

    from edgefleet.keys import generate_keypair, load_private_key
    from edgefleet.pack import pack

    priv, _ = generate_keypair(root, "bench")
    key = load_private_key(priv)
    src = make_onnx(root / "m1.onnx", 5, n_in=64, n_out=4096)
    m = onnx.load(str(src))
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    rng = np.random.default_rng(1)
    idx = rng.choice(w.size, w.size // 50, replace=False)
    w.flat[idx] += rng.normal(0, 0.01, idx.size).astype(np.float32)
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[0].name))
    onnx.save(m, str(root / "m2.onnx"))
    out = []
    for v, s in (("1", src), ("2", root / "m2.onnx")):
        _, arch = pack(s, root / f"b{v}", name="big", version=v, private_key=key, archive=True, overwrite=True)
        assert arch is not None
        out.append(arch.read_bytes())
    return out[0], out[1]


class SimDevice:
    """A device that speaks the protocol (status, desired, chunk requests, job updates) with no model."""

    def __init__(self, url: str, fleet: str, device_id: str) -> None:
        from edgefleet.cloud_sync import protocol as P
        from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport, Will

        self.P = P
        self.id = device_id
        self.fleet = fleet
        will = Will(P.up_topic(fleet, device_id, P.Up.STATUS), P.Status(device_id, False, 1).to_bytes())
        self.t = MqttTransport(MqttConfig(url=url, client_id=device_id, reconnect_min=0.5, reconnect_max=2), will)
        self.t.on_message(self._msg)
        self.t.on_connect(self._connected)
        self.t.subscribe(P.down_filter(fleet, device_id))
        self.lock = threading.Lock()
        self.receiver: Any = None
        self.buf = bytearray()
        self.desired: Any = None
        self.done = threading.Event()
        self.wire = 0
        self.version = 0
        self.last = time.monotonic()

    def _connected(self) -> None:
        P = self.P
        self.t.publish(P.up_topic(self.fleet, self.id, P.Up.STATUS),
                       P.Status(self.id, True, 1, group="bench").to_bytes(), retain=True)

    def _msg(self, topic: str, payload: bytes) -> None:
        from edgefleet.cloud_sync import transfer as T

        P = self.P
        self.wire += len(payload)
        kind = topic.rsplit("/", 1)[-1]
        with self.lock:
            if kind == "desired" and payload and self.desired is None:
                d = P.Desired.parse(payload)
                self.desired = d
                self.buf = bytearray(d.file.size)
                self.receiver = T.Receiver(d.job_id, d.file, window=16)
                self._drive(self.receiver.handle(T.Begin()))
            elif kind == "chunk" and self.receiver is not None:
                self.last = time.monotonic()
                self._drive(self.receiver.handle(T.ChunkArrived(P.Chunk.parse(payload))))

    def stalled(self) -> None:
        from edgefleet.cloud_sync import transfer as T

        with self.lock:
            if self.receiver is not None and not self.done.is_set() and time.monotonic() - self.last > 5.0:
                self.last = time.monotonic()
                self._drive(self.receiver.handle(T.Stalled()))

    def _drive(self, actions: list[Any]) -> None:
        from edgefleet.cloud_sync import transfer as T

        P = self.P
        r = self.receiver
        for a in actions:
            if isinstance(a, T.Request):
                self.t.publish(P.up_topic(self.fleet, self.id, P.Up.CHUNKS),
                               P.ChunkRequest.make(r.job_id, r.info.file_id, r.info.chunks, list(a.indices)).to_bytes())
            elif isinstance(a, T.Store):
                off = a.index * r.info.chunk_size
                self.buf[off : off + len(a.data)] = a.data
            elif isinstance(a, T.CheckWhole):
                self._drive(r.handle(T.Verified(hashlib.sha256(self.buf).hexdigest() == r.info.file_id)))
            elif isinstance(a, T.Complete):
                self.version += 1
                self.t.publish(P.up_topic(self.fleet, self.id, P.Up.JOB),
                               P.JobUpdate(r.job_id, "SUCCEEDED", self.version).to_bytes())
                self.done.set()


def bench_ota(url: str, n: int, v2: bytes, root: Path) -> dict[str, Any]:
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    reg = Registry(f"sqlite:///{root / 'reg.db'}")
    coord = Coordinator(reg, MqttTransport(MqttConfig(url=url, client_id="bench-coord", max_inflight=1000)), "bench",
                        tick_seconds=0.5, deltas=False)
    coord.start()
    devices = []
    for i in range(n):
        d = SimDevice(url, "bench", f"sim{i:05d}")
        d.t.connect()
        devices.append(d)
    deadline = time.monotonic() + 120
    while sum(x["online"] for x in reg.devices("bench")) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    t0 = time.monotonic()
    dep = coord.create_deployment(v2, "bench", RolloutPlan(0.0, (1.0,), 0.0))
    kicked: list[SimDevice] = []
    chunks = (len(v2) + 65535) // 65536
    while time.monotonic() - t0 < 600:
        done = sum(d.done.is_set() for d in devices)
        if not kicked:  # force a reconnect of a tenth of the devices in the middle of their transfer
            mid = [d for d in devices if d.receiver is not None and 0 < len(d.receiver.have) < chunks - 4]
            if mid:
                kicked = mid[: max(1, n // 10)]
                for d in kicked:
                    d.t.client.reconnect()
        for d in devices:
            d.stalled()
        if done == n:
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    state_deadline = time.monotonic() + 30
    while reg.deployment(dep["id"])["state"] != "completed" and time.monotonic() < state_deadline:
        time.sleep(0.1)
    wire = [d.wire for d in devices]
    resent = sum(coord.served[d.id] - chunks for d in devices)
    resent_kicked = sum(coord.served[d.id] - chunks for d in kicked)
    out = {
        "devices": n, "bundle_bytes": len(v2), "chunks_per_bundle": chunks,
        "completed": sum(d.done.is_set() for d in devices), "deployment_state": reg.deployment(dep["id"])["state"],
        "seconds_to_complete": round(elapsed, 2),
        "wire_bytes_per_device_mean": round(sum(wire) / n), "wire_ratio_mean": round(sum(wire) / n / len(v2), 4),
        "wire_ratio_max": round(max(wire) / len(v2), 4),
        "forced_reconnects": len(kicked), "chunks_resent_total": resent, "chunks_resent_on_reconnected": resent_kicked,
    }
    for d in devices:
        d.t.close()
    coord.stop()
    reg.close()
    return out


def bench_delta(v1: bytes, v2: bytes) -> dict[str, Any]:
    from edgefleet.cloud_sync.transfer import make_delta

    t = time.perf_counter()
    patch = make_delta(v1, v2)
    return {"full_bytes": len(v2), "delta_bytes": len(patch) if patch else None,
            "delta_ratio": round(len(patch) / len(v2), 4) if patch else None,
            "diff_seconds": round(time.perf_counter() - t, 2), "change": "2% of the weights nudged (fine-tune)"}


def bench_telemetry(url: str, root: Path, devices: int, batches: int, per_batch: int) -> dict[str, Any]:
    from edgefleet.cloud_sync import protocol as P
    from edgefleet.cloud_sync.coordinator.registry import Registry
    from edgefleet.cloud_sync.coordinator.service import Coordinator
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    total = devices * batches * per_batch
    reg = Registry(f"sqlite:///{root / 'tel.db'}")
    coord = Coordinator(reg, MqttTransport(MqttConfig(url=url, client_id="tel-coord")), "tel", tick_seconds=5)
    got = {"coord": 0, "plain": 0}
    times: dict[str, list[float]] = {"coord": [], "plain": []}

    def counted(who: str, n: int) -> None:
        got[who] += n
        times[who].append(time.monotonic())

    coord.on_ingest = lambda n: counted("coord", n)
    coord.start()
    plain = MqttTransport(MqttConfig(url=url, client_id="tel-plain"))
    plain.on_message(lambda t, p: counted("plain", len(P.TelemetryBatch.parse(p).records)))
    plain.subscribe("edgefleet/v1/tel/devices/+/up/telemetry")
    plain.connect(timeout=10)
    coord.transport.wait_connected(10)  # type: ignore[attr-defined]
    pub = MqttTransport(MqttConfig(url=url, client_id="tel-pub", max_inflight=1000))
    pub.connect(timeout=10)
    payloads = []
    for d in range(devices):
        for b in range(batches):
            recs = tuple(P.TelemetryRecord(b * per_batch + i + 1, time.time(), "metrics",
                                           {"versions": {"2": {"predictions": 10, "errors": 0}}})
                         for i in range(per_batch))
            payloads.append((P.up_topic("tel", f"t{d}", P.Up.TELEMETRY),
                             P.TelemetryBatch(f"t{d}", f"b{b}", recs).to_bytes()))
    t0 = time.monotonic()
    for topic, payload in payloads:
        pub.publish(topic, payload)
    deadline = time.monotonic() + 300
    while (got["coord"] < total or got["plain"] < total) and time.monotonic() < deadline:
        time.sleep(0.05)
    res = {}
    for who in ("coord", "plain"):
        span = (times[who][-1] - t0) if times[who] else float("nan")
        res[who] = {"records": got[who], "seconds": round(span, 3), "records_per_s": round(got[who] / span)}
    pub.close()
    plain.close()
    coord.stop()
    reg.close()
    return {"devices": devices, "records": total, "records_per_batch": per_batch, **res,
            "ratio": round(res["coord"]["records_per_s"] / res["plain"]["records_per_s"], 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="100 devices, a smaller telemetry stream")
    ap.add_argument("--out", default=str(RESULTS / "fleet_ota.json"))
    args = ap.parse_args(argv)
    n = 100 if args.quick else args.devices
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url = _broker(root)
        try:
            v1, v2 = _bundles(root)
            result = {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
                "quick": args.quick,
                "ota": bench_ota(url, n, v2, root),
                "delta": bench_delta(v1, v2),
                "telemetry": bench_telemetry(url, root, 20, 20 if args.quick else 50, 100),
            }
        finally:
            proc.terminate()
            proc.wait(10)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
