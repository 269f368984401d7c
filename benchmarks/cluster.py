"""Real processes for the fleet-scale benchmarks (``soak``, ``multi_coordinator``).

- :class:`CoordinatorProcess`: ``edgefleet cloud serve`` as a child supervised by
  :class:`edgefleet.supervisor.ChildProcess` (kill -9 and the supervisor's restart are the product's own path),
  with its HTTP API on a free loopback port; its resident memory and CPU time read from ``/proc``.
- :class:`SimFleet`: simulated devices in worker processes. Each device is
  :class:`benchmarks.fleet_ota.SimDevice` (its own paho client and persistent MQTT 5 session, the real device
  machine :class:`edgefleet.cloud_sync.device.machine.DeviceMachine`; only the install is simulated) plus a
  telemetry queue that behaves as the agent's durable one drained by ``DeviceSync``
  (:func:`edgefleet.device_agent.telemetry.drain` through ``MqttSink``): records are kept until acknowledged,
  the oldest are sent first (at most 500 a batch), a batch unacknowledged after 5 s is given up until the next
  interval and its records are sent again. Each device counts what was acknowledged, so a run can compare what
  devices saw acknowledged with what the registry holds.
- :func:`fresh_database`: a PostgreSQL database of its own for a run (two ``cloud serve`` processes cannot
  share a table prefix with other users of the server).

Pure bookkeeping (:class:`TelemetryQueue`, :func:`rss_growth`, :func:`stage_events`) is apart from the I/O.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgefleet.supervisor import ChildProcess

HERE = Path(__file__).resolve().parent
FLEET = "bench"  # fleet_ota.SimDevice's fleet and group
GROUP = "bench"
VERSION_TAG = "soak"  # the model version the simulated devices report their metrics under
MAX_BATCH = 500  # records per telemetry batch, as DeviceSync's telemetry_batch
ACK_TIMEOUT = 5.0  # seconds a batch waits for its acknowledgement, as MqttSink's timeout


# -- /proc ------------------------------------------------------------------------------------------------------
def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of ``pid`` (``VmRSS``), None when it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_rss_bytes(pid: int | None) -> int | None:
    """Resident memory of ``pid`` and its children (nginx: the master and its worker)."""
    own = rss_bytes(pid)
    if pid is None or own is None:
        return own
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        kids = []
    return own + sum(rss_bytes(k) or 0 for k in kids)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` so far (its threads included), None when it is gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- pure bookkeeping ---------------------------------------------------------------------------------------------
@dataclass
class TelemetryQueue:
    """A device's telemetry as the agent keeps it: records held until acknowledged, sent oldest first.

    ``add`` appends a record (seq 1, 2, ...); ``batch(now)`` is what to send now (None while a batch waits for
    its acknowledgement, at most ``ACK_TIMEOUT`` seconds, or when nothing is pending); ``acked`` applies an
    acknowledgement and says whether to send the next batch at once (as ``drain`` does after an acknowledged
    batch)."""

    seq: int = 0
    pending: dict[int, float] = field(default_factory=dict)  # seq -> ts, in seq order
    inflight: str = ""
    inflight_until: float = 0.0
    acked_seqs: int = 0
    max_acked: int = 0
    batches: int = 0
    timeouts: int = 0
    unknown_acks: int = 0

    def add(self, ts: float) -> int:
        self.seq += 1
        self.pending[self.seq] = ts
        return self.seq

    def batch(self, now: float, batch_id: str) -> list[tuple[int, float]] | None:
        if self.inflight:
            if now < self.inflight_until:
                return None
            self.inflight = ""  # given up: sent again from the oldest
            self.timeouts += 1
        if not self.pending:
            return None
        out = []
        for seq, ts in self.pending.items():
            out.append((seq, ts))
            if len(out) == MAX_BATCH:
                break
        self.inflight, self.inflight_until = batch_id, now + ACK_TIMEOUT
        self.batches += 1
        return out

    def acked(self, batch_id: str, seqs: Iterable[int]) -> bool:
        n = 0
        for s in seqs:
            if self.pending.pop(s, None) is not None:
                n += 1
                self.max_acked = max(self.max_acked, s)
        self.acked_seqs += n
        if batch_id != self.inflight:
            self.unknown_acks += 1  # late: its batch had been given up (the records count all the same)
            return False
        self.inflight = ""
        return n > 0 and bool(self.pending)


def rss_growth(samples: Sequence[tuple[float, int]], warm_until: float, end: float) -> dict[str, Any]:
    """Resident memory growth after warm-up: the first sample at or after ``warm_until`` against the last one at
    or before ``end`` (seconds on the samples' clock); the peak after warm-up too."""
    after = [(t, r) for t, r in samples if warm_until <= t <= end]
    if len(after) < 2:
        return {"baseline_bytes": None, "final_bytes": None, "peak_bytes": None, "growth": None, "samples": len(after)}
    base, final = after[0][1], after[-1][1]
    return {"baseline_at_s": round(after[0][0], 1), "baseline_bytes": base, "final_at_s": round(after[-1][0], 1),
            "final_bytes": final, "peak_bytes": max(r for _, r in after),
            "growth": round(final / base - 1, 4), "samples": len(after)}


def cpu_used(samples: Sequence[tuple[float, int, float]]) -> float:
    """CPU seconds used over ``(time, pid, cpu seconds of that pid)`` samples, across restarts (a new pid starts
    its own count)."""
    total = 0.0
    for (_, pid0, c0), (_, pid1, c1) in zip(samples, samples[1:]):
        total += c1 - c0 if pid1 == pid0 else c1
    return round(total, 2)


def stage_events(events: Iterable[tuple[str, int]]) -> dict[str, Any]:
    """A deployment's registry events: how often each stage started (each must be once) and how it ended."""
    seen = list(events)
    stages = Counter(stage for kind, stage in seen if kind == "stage")
    ends = [kind for kind, _ in seen if kind in ("completed", "halted", "rolled_back", "canceled")]
    return {"stages": {str(k): v for k, v in sorted(stages.items())},
            "stage_started_more_than_once": sorted(k for k, v in stages.items() if v > 1), "ends": ends}


# -- coordinators ---------------------------------------------------------------------------------------------------
def quiet_port() -> int:
    """A free loopback port below the kernel's ephemeral range: thousands of simulated devices take thousands of
    ephemeral ports for their connections, and a service restarted mid-run (a coordinator's API, the broker) must
    find its port still free (a port from ``free_port`` is an ephemeral one, and was taken in a 10,000-device run)."""
    from edgefleet.cloud_sync.broker import free_port

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _free_port() -> int:
    return quiet_port()


class CoordinatorProcess(ChildProcess):
    """``edgefleet cloud serve`` on a free loopback port, supervised (``restart``: started again after a crash,
    as a service manager would). Its MQTT client id is fixed, so a restart resumes its persistent session."""

    def __init__(self, root: Path, name: str, *, broker_url: str, db_url: str, allow_file: Path, trust: Path,
                 signing_key: Path, token: str, restart: bool = True, log_level: str = "warning",
                 extra: Sequence[str] = ()) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.api_port = _free_port()
        self.token = token
        token_file = root / f"{name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        argv = [sys.executable, "-c", "import sys; from edgefleet.cli import entry; sys.exit(entry())",
                "--log-level", log_level, "cloud", "serve", "--broker", broker_url, "--db", db_url, "--fleet", FLEET,
                "--api-port", str(self.api_port), "--token-file", str(token_file), "--client-id", name,
                "--allow", str(allow_file), "--trust", str(trust), "--signing-key", str(signing_key), *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        super().__init__(argv, name=name, env=env, log_path=root / f"{name}.log", restart=restart, backoff=0.5,
                         max_restarts=5, healthy_seconds=30.0)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def healthy(self) -> bool:
        """Its API answers and it is connected to the broker."""
        import httpx

        try:
            r = httpx.get(f"{self.api}/healthz", timeout=2)
            return r.status_code == 200 and bool(r.json().get("broker_connected"))
        except (httpx.HTTPError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 120.0) -> float:
        """Seconds until :meth:`healthy`; ``SyncError`` with its log's tail when it does not come up."""
        from edgefleet.errors import SyncError

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.healthy():
                return time.monotonic() - t0
            time.sleep(0.2)
        raise SyncError(f"coordinator {self.name} did not come up within {timeout:.0f} s: {self.log_tail()}")

    def counters(self) -> dict[str, float]:
        """Its ``edgefleet_*_total`` counters from ``GET /metrics`` (since its latest start)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        r = httpx.get(f"{self.api}/metrics", headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        r.raise_for_status()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                if s.name.endswith("_total") and not s.labels:
                    out[s.name.removeprefix("edgefleet_").removesuffix("_total")] = s.value
        return out

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)


# -- the simulated devices (worker processes) ----------------------------------------------------------------------
def _device_class() -> Any:
    """fleet_ota's SimDevice with the agent's telemetry queue and a record of the jobs it was sent."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.fleet_ota import SimDevice

    class FleetDevice(SimDevice):  # type: ignore[misc]
        def __init__(self, loop: Any, port: int, device_id: str, interval: float, origin: bool = False) -> None:
            super().__init__(loop, port, device_id, False, origin)  # origin: bundles over HTTP when the job says
            self.queue = TelemetryQueue()
            self.interval = interval
            self.next_drain = time.monotonic() + random.uniform(0, interval) if interval > 0 else float("inf")
            self.desired_ids: Counter[str] = Counter()  # install job id -> desired messages received with it
            self.installed: list[str] = []  # job ids installed (SUCCEEDED)

        def _message(self, client: Any, userdata: Any, msg: Any) -> None:
            from edgefleet.errors import ProtocolError

            kind = msg.topic.rsplit("/", 1)[-1]
            if kind == "ack":
                try:
                    ack = self.P.TelemetryAck.parse(msg.payload)
                except ProtocolError:
                    self.malformed += 1
                    return
                if self.queue.acked(ack.batch_id, ack.seqs):
                    self.send(time.monotonic())
                return
            if kind == "desired" and msg.payload:
                try:
                    d = self.P.Desired.parse(msg.payload)
                    if d.action == "install":
                        self.desired_ids[d.job_id] += 1
                except ProtocolError:
                    pass
            super()._message(client, userdata, msg)

        def _perform(self, act: Any) -> Any:
            if isinstance(act, self.M.Install):
                self.installed.append(act.job_id)
            return super()._perform(act)

        def telemetry(self, now: float, generate: bool) -> None:
            """Every ``interval``: a new record (while generating), then a drain of the queue (oldest first)."""
            if now < self.next_drain:
                return
            self.next_drain += self.interval
            if self.next_drain <= now:  # a loop that fell behind: no burst of records to catch up
                self.next_drain = now + self.interval
            if generate:
                self.queue.add(time.time())
            self.send(now)

        def send(self, now: float) -> None:
            if not self.ready or not self.client.is_connected():
                return
            batch = self.queue.batch(now, uuid.uuid4().hex[:16])
            if batch is None:
                return
            P = self.P
            recs = tuple(P.TelemetryRecord(seq, ts, "metrics", {"versions": {VERSION_TAG: {"predictions": 1,
                                                                                           "errors": 0}}})
                         for seq, ts in batch)
            self.client.publish(P.up_topic(FLEET, self.id, P.Up.TELEMETRY),
                                P.TelemetryBatch(self.id, self.queue.inflight, recs).to_bytes(), qos=1)

        def result(self) -> dict[str, Any]:
            q = self.queue
            return {"id": self.id, "generated": q.seq, "acked": q.acked_seqs, "max_acked": q.max_acked,
                    "pending": len(q.pending), "batches": q.batches, "ack_timeouts": q.timeouts,
                    "late_acks": q.unknown_acks, "connects": self.connects, "malformed": self.malformed,
                    "desired": dict(self.desired_ids), "installed": list(self.installed),
                    "wire_in": self.client.wire_in, "wire_out": self.client.wire_out,
                    "http_in": self.machine.stats["http_bytes"], "http_files": self.machine.stats["http_files"],
                    "origin_fallbacks": self.machine.stats["origin_fallbacks"], "done_at": self.done_at}

    return FleetDevice


def _worker(conn: Any, port: int, ids: list[str], interval: float, origin: bool = False) -> None:
    """One worker: its devices on one selector loop (fleet_ota's ``DeviceLoop.run``: paho's external-loop API), with
    the orchestrator's commands on a pipe: ``("generate", bool)``, ``"pending"``, ``"stop"``. With ``origin`` the
    devices download a job's bundle over HTTP when it names a URL (fleet_ota's fetch pool: the device's own
    fetcher, 8 downloads at a time per worker)."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.fleet_ota import DeviceLoop

    loop = DeviceLoop()
    cls = _device_class()
    devices = [cls(loop, port, i, interval, origin) for i in ids]
    generate = interval > 0

    def command(msg: Any) -> None:
        nonlocal generate
        if msg == "pending":
            conn.send(("pending", sum(len(d.queue.pending) for d in devices),
                       sum(d.client.is_connected() for d in devices)))
        elif isinstance(msg, tuple) and msg[0] == "generate":
            generate = bool(msg[1])

    def tick(d: Any, now: float) -> None:
        d.stalled(now)
        d.telemetry(now, generate)

    loop.run(conn, devices, command, tick)


class SimFleet:
    """Simulated devices ``ids`` in ``workers`` processes, telemetry every ``interval`` seconds (0: none), bundles
    over HTTP when a job names a URL and ``origin`` is set."""

    def __init__(self, port: int, ids: Sequence[str], workers: int, interval: float, origin: bool = False) -> None:
        ctx = mp.get_context("spawn")
        self.ids = list(ids)
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, port, self.ids[w::workers], interval, origin), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(parent)

    def wait_ready(self, timeout: float = 600.0) -> float:
        from edgefleet.errors import SyncError

        t0 = time.monotonic()
        for c in self.conns:
            if not c.poll(max(0.0, timeout - (time.monotonic() - t0))):
                raise SyncError(f"the simulated devices did not connect within {timeout:.0f} s")
            try:
                c.recv()
            except EOFError:
                raise SyncError("a device worker process ended before its devices connected") from None
        return time.monotonic() - t0

    def generate(self, on: bool) -> None:
        for c in self.conns:
            c.send(("generate", on))

    def pending(self) -> tuple[int, int]:
        """(telemetry records not yet acknowledged, devices connected) over the fleet."""
        for c in self.conns:
            c.send("pending")
        total, connected = 0, 0
        for c in self.conns:
            while True:
                msg = c.recv() if c.poll(60) else ("pending", -1, 0)
                if msg[0] == "pending":
                    total += msg[1] if msg[1] >= 0 else 10**9
                    connected += msg[2]
                    break
        return total, connected

    def stop(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for c in self.conns:
            c.send("stop")
        for c in self.conns:
            while c.poll(120):
                msg = c.recv()
                if msg[0] == "result":
                    out.extend(msg[1])
                    break
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        return out


def wait_online(reg: Any, devices: int, timeout: float, poll: float) -> int:
    """Wait until the registry ``reg`` has ``devices`` devices of the fleet online, polling every ``poll`` seconds,
    for ``timeout`` seconds at the most; how many are online then."""
    deadline = time.monotonic() + timeout
    while True:
        online = sum(d.online for d in reg.devices(FLEET))
        if online >= devices or time.monotonic() >= deadline:
            return online
        time.sleep(poll)


def shut_down(fleet: SimFleet | None, reg: Any, coords: Sequence[CoordinatorProcess], broker: Any,
              drop_db: Callable[[], None] | None) -> None:
    """The end of a run, whatever happened in it: the simulated devices stopped, the registry closed, the
    coordinators stopped, then the broker, and the run's fresh database dropped (each one that was started)."""
    from edgefleet.supervisor import stop_all

    if fleet is not None:
        fleet.stop()
    if reg is not None:
        reg.close()
    stop_all(coords)
    if broker is not None:
        broker.stop()
    if drop_db is not None:
        drop_db()


# -- setup --------------------------------------------------------------------------------------------------------
def provision(root: Path, ids: Sequence[str]) -> Path:
    """The provisioning file ``cloud serve --allow`` reads: each device in the benchmark's group."""
    path = root / "allow.txt"
    path.write_text("".join(f"{d} {GROUP}\n" for d in ids))
    return path


def keys(root: Path) -> tuple[Path, Path, Any]:
    """An Ed25519 key pair: (private PEM, public PEM, the loaded private key) signing bundles and rollback orders."""
    from edgefleet.keys import generate_keypair, load_private_key

    priv, pub = generate_keypair(root, "bench")
    return Path(priv), Path(pub), load_private_key(priv)


def bundles(root: Path, key: Any, count: int, kib: int = 128) -> list[Path]:
    """``count`` signed archives of one model, versions 1..count, each about ``kib`` KiB (a dense layer of random
    weights; no hardware tags, as the simulated devices announce none)."""
    sys.path.insert(0, str(HERE.parent / "tests" / "agent"))
    from agent_helpers import make_onnx

    from edgefleet.pack import pack

    n_out = max(1, kib * 1024 // (64 * 4))
    out = []
    for v in range(1, count + 1):
        src = make_onnx(root / f"m{v}.onnx", v, n_in=64, n_out=n_out)
        _, arch = pack(src, root / f"b{v}", name="soak", version=str(v), private_key=key, archive=True,
                       overwrite=True)
        assert arch is not None
        out.append(arch)
    return out


def pg_reachable(host: str = "127.0.0.1", port: int | None = None) -> bool:
    port = port or int(os.environ.get("EDGEFLEET_PG_PORT", "5432"))
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def default_pg_server() -> str:
    """The test PostgreSQL server (``EDGEFLEET_PG_PORT``, default 5432; trust auth, user postgres)."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{os.environ.get('EDGEFLEET_PG_PORT', '5432')}/test"


def fresh_database(server_url: str) -> tuple[str, Any]:
    """A new, empty database on the server of ``server_url`` (a SQLAlchemy URL naming any database there);
    returns its URL and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(server_url)
    name = f"edgefleet_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()

    def drop() -> None:
        eng = create_engine(base, isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            eng.dispose()

    return base.set(database=name).render_as_string(hide_password=False), drop


__all__ = ["CoordinatorProcess", "SimFleet", "TelemetryQueue", "bundles", "cpu_seconds", "cpu_used", "default_pg_server",
           "fresh_database", "keys", "pg_reachable", "provision", "quiet_port", "rss_bytes", "rss_growth", "stage_events",
           "tree_rss_bytes"]
