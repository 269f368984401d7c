"""One simulated device of the demo: ``python -m edgefleet.cloud_sync.demo.device ...``.

The device runs what a real one embeds: an :class:`~edgefleet.device_agent.Agent` (from its
``agent.toml``) connected to the fleet through :class:`~edgefleet.cloud_sync.device.DeviceSync`
over MQTT. Its "sensor" is its local partition of the digits: it predicts on it a few times a
second (telemetry and drift statistics flow through the agent), and its labelled samples are
captured with ``agent.feedback`` for federated training. The simulation knows the true labels
of its sensor stream, so it also counts its local accuracy per version.

Its ``agent.toml`` enrols it for federated training (``[federated]``): the agent itself starts
and supervises its ``flower-supernode``, which reads only this agent's ``samples.db``.

The demo steers it through ``control.json`` in its directory (checked every loop):
``{"drift": {"gain": g, "offset": o} | null}``. It writes ``status.json`` twice a second.
SIGTERM/SIGINT stop it cleanly (the agent stops its SuperNode's process group), and it stops
by itself when the demo that started it is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgefleet.atomic import write_atomic

CONTROL = "control.json"
STATUS = "status.json"
BATCH = 10
PERIOD = 0.25  # seconds between prediction batches


def write_json(path: Path, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, default=float))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def agent_toml(state_dir: Path, device_id: str, trusted_key: Path, superlink: str, node_port: int, *,
               probation: float = 2.0, drift_threshold: float = 2.0, drift_window: int = 100) -> str:
    """The device's agent configuration (the same file ``edgefleet agent run --config`` reads)."""
    return "\n".join([
        "[agent]",
        f'state_dir = "{state_dir}"',
        f'device_id = "{device_id}"',
        f'trusted_keys = ["{trusted_key}"]',
        "",
        "[update]",
        f"probation_seconds = {probation}",
        "",
        "[telemetry]",
        "flush_seconds = 1.0",
        f"drift_threshold = {drift_threshold}",
        f"drift_window = {drift_window}",
        "",
        "[samples]",
        "enabled = true",
        "",
        "[federated]",
        "enabled = true",
        f'superlink = "{superlink}"',
        "insecure = true  # loopback only",
        f"port = {node_port}",
        "",
    ])


class SimDevice:
    def __init__(self, args: argparse.Namespace) -> None:
        from edgefleet.cloud_sync.device import DeviceSync
        from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport
        from edgefleet.device_agent.agent import Agent
        from edgefleet.device_agent.config import load_config

        self.dir = Path(args.dir)
        self.cfg = load_config(args.config)
        self.device_id = self.cfg.device_id
        with np.load(args.data, allow_pickle=False) as z:
            self.sample_x, self.sample_y = np.asarray(z["sample_x"]), np.asarray(z["sample_y"])
            self.sensor_x, self.sensor_y = np.asarray(z["sensor_x"], np.float32), np.asarray(z["sensor_y"])
        self.agent = Agent(self.cfg, tick_seconds=0.2)
        conf = MqttConfig(url=args.broker, client_id=self.device_id, reconnect_min=0.5, reconnect_max=5.0)
        self.sync = DeviceSync(self.agent, lambda will: MqttTransport(conf, will), args.fleet, self.device_id,
                               self.dir / "sync", group=args.group, telemetry_interval=1.0, stall_seconds=2.0)
        self.stop = threading.Event()
        self.parent = os.getppid()
        self.drift: dict[str, float] | None = None
        self.control_mtime = 0.0
        self.pos = 0
        self.counts: dict[str, dict[str, int]] = {}  # version -> predictions/correct (clean and drifted)
        self.errors = 0
        self.last_status = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def capture_samples(self) -> None:
        samples = self.agent.samples
        assert samples is not None
        if len(samples) < len(self.sample_x):  # a restarted device keeps what it captured
            for xi, yi in zip(self.sample_x[len(samples):], self.sample_y[len(samples):]):
                self.agent.feedback(xi, int(yi))

    def run(self) -> None:
        self.capture_samples()
        self.sync.start()
        print(f"device {self.device_id}: {len(self.sample_x)} labelled samples, {len(self.sensor_x)} sensor inputs",
              flush=True)
        while not self.stop.wait(PERIOD):
            if os.getppid() != self.parent:  # the demo is gone: do not outlive it
                print(f"device {self.device_id}: parent gone, stopping", flush=True)
                break
            self.follow_control()
            self.predict_batch()
            if time.monotonic() - self.last_status >= 0.5:
                self.write_status()

    def close(self) -> None:
        try:
            self.sync.stop()
            self.write_status()
        finally:
            self.agent.close()  # stops its flower-supernode's process group too

    # -- control -------------------------------------------------------------------------------
    def follow_control(self) -> None:
        path = self.dir / CONTROL
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self.control_mtime:
            return
        doc = read_json(path)
        if not isinstance(doc, dict):
            return
        self.control_mtime = mtime
        drift = doc.get("drift")
        self.drift = {"gain": float(drift["gain"]), "offset": float(drift["offset"])} if isinstance(drift, dict) else None

    # -- the sensor ----------------------------------------------------------------------------------
    def predict_batch(self) -> None:
        version = self.agent.active_version
        if version is None:
            return
        n = len(self.sensor_x)
        idx = np.arange(self.pos, self.pos + BATCH) % n
        self.pos = (self.pos + BATCH) % n
        x = self.sensor_x[idx]
        drift = self.drift
        if drift is not None:  # a sensor losing gain and gaining an offset
            x = np.clip(x * drift["gain"] + drift["offset"], 0.0, 16.0).astype(np.float32)
        try:
            probs = np.asarray(self.agent.predict(x))
        except Exception as exc:  # counted by the agent's telemetry too
            self.errors += 1
            if self.errors <= 3:
                print(f"device {self.device_id}: predict failed: {exc}", flush=True)
            return
        c = self.counts.setdefault(version, {"predictions": 0, "correct": 0, "drifted": 0, "drifted_correct": 0})
        hits = int(np.sum(probs.reshape(len(x), -1).argmax(axis=1) == self.sensor_y[idx]))
        if drift is None:
            c["predictions"] += len(x)
            c["correct"] += hits
        else:
            c["drifted"] += len(x)
            c["drifted_correct"] += hits

    def write_status(self) -> None:
        self.last_status = time.monotonic()
        node = self.agent.flower_node
        doc = {
            "device_id": self.device_id,
            "pid": os.getpid(),
            "ts": time.time(),
            "active_version": self.agent.active_version,
            "head": self.agent.serving_head,
            "connected": self.sync.transport.connected,
            "counts": self.counts,
            "errors": self.errors,
            "drift": self.drift,
            "samples": len(self.agent.samples) if self.agent.samples is not None else 0,
            "sync": dict(self.sync.stats),
            "node": {"superlink": node.config.superlink if node else None, "running": bool(node and node.running),
                     "restarts": node.restarts if node else 0},
        }
        write_json(self.dir / STATUS, doc)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgefleet.cloud_sync.demo.device", allow_abbrev=False,
                                description="A simulated edgefleet device (used by `edgefleet demo`).")
    p.add_argument("--dir", required=True, help="the device's directory (control.json, status.json, sync/)")
    p.add_argument("--config", required=True, help="its agent.toml")
    p.add_argument("--data", required=True, help=".npz with sample_x/sample_y and sensor_x/sensor_y")
    p.add_argument("--broker", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--group", default="demo")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dev = SimDevice(args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: dev.stop.set())
    try:
        dev.run()
    finally:
        dev.close()
    print(f"device {dev.device_id}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
