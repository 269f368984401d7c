"""Issue 15: alerts. A webhook (HTTP POST of JSON, retried with backoff, from a bounded queue that never blocks the
coordinator) fires on a rollout halt, a drift alert, a device offline longer than a threshold and a federated run
failure (``cloud serve --alert-webhook URL --offline-after 10m``; cloud_sync/coordinator/alerts.py).

The receiver is a real HTTP server on a free loopback port that refuses the first attempts (503), so every alert
here is delivered through the retry path.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, cast

import httpx
import pytest
from conftest import free_port, wait_for
from helpers import coordinator, device, stop_process
from test_cloud_api_tls import BOOT, Pki, _make_pki, _serve_cmd

from edgefleet.cli import main as cli_main
from edgefleet.cloud_sync.coordinator.alerts import (
    AlertEvent,
    AlertMonitor,
    Snapshot,
    WatchState,
    WebhookSender,
    backoff,
    check_webhooks,
    decide,
    retryable,
)
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.rows import Alert, Deployment, Device, FailedRun, RolloutEvent
from edgefleet.cloud_sync.wire.protocol import TelemetryBatch, TelemetryRecord
from edgefleet.errors import ConfigError


class Receiver:
    """A webhook receiver: answers ``fail`` (503) to the first ``fail_first`` POSTs, then ``status``; keeps the
    JSON of every POST it answered 2xx (``got``) and counts every attempt (``attempts``); ``delay`` seconds per
    request (a slow or hung receiver)."""

    def __init__(self, fail_first: int = 0, status: int = 200, delay: float = 0.0,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.fail_first, self.status, self.delay = fail_first, status, delay
        self.got: list[dict[str, Any]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.attempts += 1
                    code = 503 if receiver.attempts <= receiver.fail_first else receiver.status
                    if 200 <= code < 300:
                        assert self.headers["Content-Type"] == "application/json"
                        receiver.got.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler) if tls is None else _TlsServer(tls, Handler)
        scheme = "http" if tls is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/edgefleet"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> Counter[str]:
        with self.lock:
            return Counter(a["kind"] for a in self.got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _TlsServer(ThreadingHTTPServer):
    """An https receiver (certificate and key: PEM); each handshake runs on its request's thread, and one a client
    refuses is not an error of the server."""

    def __init__(self, tls: tuple[Path, Path], handler: Any) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        self.handshakes_refused = 0
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.handshakes_refused += 1


@pytest.fixture()
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


# -- end to end: the four kinds, through the retry path -----------------------------------------------------------
def test_the_four_alerts_reach_a_webhook_that_fails_at_first(broker: Any, tmp_path: Path, make_agent: Any,
                                                             archives: dict[str, Path], receivers: Any) -> None:
    hook = receivers(fail_first=3)
    coord = coordinator(broker.url, tmp_path / "reg.db")
    syncs = [device(broker.url, make_agent(f"d{i}", install=archives["1"]), tmp_path) for i in range(3)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 3)
    sender = WebhookSender([hook.url], backoff_base=0.05, counters=coord.counters).start()
    monitor = AlertMonitor(coord.registry, "f1", sender, offline_after=1.0, interval=0.1).start()
    try:
        # a rollout halt: a canary whose smoke test fails
        dep = coord.create_deployment(archives["3bad"].read_bytes(), "g", RolloutPlan(0.3, (1.0,), 0.0))
        wait_for(lambda: coord.registry.deployment(dep.id).state == "halted", 30)  # type: ignore[union-attr]
        # a drift alert, as a device's agent sends it
        coord.handle("d1", TelemetryBatch("d1", "drift-1", (TelemetryRecord(
            10**6, time.time(), "drift", {"version": "1", "psi_max": 0.42, "psi_mean": 0.2, "threshold": 0.25}),)))
        # a device that goes away: offline for more than a second
        syncs[2].stop()
        # a federated run that fails
        run = coord.registry.create_fed_run("f1", "g", "fedavg", 3)
        coord.registry.set_fed_run(run, status="failed: the SuperLink exited with code 1")

        wait_for(lambda: set(hook.kinds()) == {"rollout_halted", "drift", "device_offline", "federated_run_failed"},
                 30)
        time.sleep(1.0)  # nothing more comes (each alert once)
        assert hook.kinds() == Counter({"rollout_halted": 1, "drift": 1, "device_offline": 1,
                                        "federated_run_failed": 1}), hook.got
        by = {a["kind"]: a for a in hook.got}
        halt = by["rollout_halted"]
        assert halt["details"]["deployment"] == dep.id and "failed" in halt["details"]["reason"]
        assert halt["fleet"] == "f1" and halt["source"] == "edgefleet" and dep.id in halt["summary"]
        assert by["drift"]["details"]["device"] == "d1" and by["drift"]["details"]["data"]["psi_max"] == 0.42
        assert by["device_offline"]["details"]["device"] == "d2" and by["device_offline"]["details"]["group"] == "g"
        assert by["device_offline"]["details"]["offline_seconds"] > 1.0
        assert by["federated_run_failed"]["details"] == {"run": run, "group": "g",
                                                         "status": by["federated_run_failed"]["details"]["status"],
                                                         "error": "the SuperLink exited with code 1"}
        assert hook.attempts == 4 + 3 and coord.counters["alerts_retried"] == 3
        assert coord.counters["alerts_sent"] == 4 and not coord.counters["alerts_failed"]
        # the device comes back and goes again: alerted again (once per disconnection)
        syncs[2] = device(broker.url, syncs[2].agent, tmp_path)
        wait_for(lambda: coord.registry.device("f1", "d2").online)  # type: ignore[union-attr]
        syncs[2].stop()
        wait_for(lambda: hook.kinds()["device_offline"] == 2, 20)
    finally:
        monitor.stop()
        sender.stop()
        for s in syncs[:2]:
            s.stop()


def test_a_slow_webhook_never_blocks_and_the_queue_is_bounded(broker: Any, tmp_path: Path, receivers: Any) -> None:
    """A receiver that takes 2 s per request: submitting 50 alerts returns at once (those beyond the queue are
    dropped and counted), and telemetry ingest goes on meanwhile."""
    hook = receivers(delay=2.0)
    coord = coordinator(broker.url, tmp_path / "reg.db", groups={"d1": "g"})
    sender = WebhookSender([hook.url], queue_size=3, counters=coord.counters).start()
    try:
        started = time.monotonic()
        accepted = [sender.submit(AlertEvent(f"k{i}", "drift", "f1", 0.0, "s")) for i in range(50)]
        assert time.monotonic() - started < 0.5
        assert 3 <= sum(accepted) <= 4 and coord.counters["alerts_dropped"] == 50 - sum(accepted)
        started = time.monotonic()
        coord.handle("d1", TelemetryBatch("d1", "b", tuple(TelemetryRecord(i, time.time(), "event", {})
                                                            for i in range(1, 501))))
        assert time.monotonic() - started < 1.0 and coord.counters["telemetry_records"] == 500
    finally:
        sender.stop(timeout=0.1)


def test_a_4xx_answer_is_final_and_an_unreachable_webhook_gives_up(receivers: Any) -> None:
    refusing = receivers(status=400)
    sender = WebhookSender([refusing.url, "http://127.0.0.1:9/nobody"], attempts=3, backoff_base=0.01).start()
    sender.submit(AlertEvent("k", "drift", "f", 0.0, "s"))
    wait_for(lambda: sender.counters["alerts_failed"] == 2, 20)
    assert refusing.attempts == 1  # 400: not tried again
    assert sender.counters["alerts_retried"] == 2 and not sender.counters["alerts_sent"]  # the unreachable: 3 tries
    sender.stop()


def test_coordinators_sharing_a_registry_send_each_alert_once(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    got: list[AlertEvent] = []
    monitors = [AlertMonitor(reg, "f", got.append, offline_after=60.0) for _ in range(2)]
    run = reg.create_fed_run("f", "g", "fedavg", 1)
    reg.set_fed_run(run, status="failed: boom")
    reg.upsert_device("f", "d1", group_name="g", session=3, online=False, last_seen=time.time() - 3600)
    for m in monitors * 2:
        m.sweep()
    assert sorted(a.kind for a in got) == ["device_offline", "federated_run_failed"]
    reg.close()


def test_bad_webhook_urls_are_refused_before_anything_starts(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("ftp://example.com/x", "example.com/hook", "http://"):
        with pytest.raises(ConfigError, match="--alert-webhook"):
            check_webhooks([bad])
    assert check_webhooks(["https://hooks.example.com/a?b=1"]) == ["https://hooks.example.com/a?b=1"]
    code = cli_main(["cloud", "serve", "--fleet", "f1", "--token", "t", "--db", f"sqlite:///{tmp_path / 'r.db'}",
                     "--alert-webhook", "ftp://example.com/x"])
    assert code == 2 and "--alert-webhook" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()
    assert cli_main(["cloud", "serve", "--fleet", "f1", "--offline-after", "soon"]) == 2


# -- an https webhook with a private CA (issue 16) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


def _serve(tmp_path: Path, broker: Any, *extra: str) -> tuple[subprocess.Popen[str], list[str], str]:
    """The real ``cloud serve`` (a process of its own), its stderr lines as they come, and its database URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFLEET_CA_CERT", "EDGEFLEET_ALERT_CA_CERT",
                                                             "SSL_CERT_FILE", "SSL_CERT_DIR")}
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet.cli", *_serve_cmd(tmp_path, *extra, broker=broker.url,
                                                                                port=port)],
                            env=dict(env, EDGEFLEET_TOKEN=BOOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    wait_for(lambda: proc.poll() is not None or any("edgefleet coordinator: fleet" in ln for ln in lines), 60)
    assert proc.poll() is None, "".join(lines)
    return proc, lines, f"sqlite:///{tmp_path / 'serve.db'}"


def _fail_a_run(db: str) -> str:
    """A federated run that fails (what the coordinator alerts on), written to the serving coordinator's registry."""
    reg = Registry(db)
    try:
        run = reg.create_fed_run("f", "g", "fedavg", 1)
        reg.set_fed_run(run, status="failed: boom")
        return run
    finally:
        reg.close()


def test_an_https_webhook_is_verified_against_the_alert_ca_cert(broker: Any, tmp_path: Path, pki: Pki,
                                                                receivers: Any) -> None:
    """``cloud serve --alert-webhook https://... --alert-ca-cert CA.pem``: the receiver's certificate, signed by a
    private CA, verifies and the alert is delivered. The same receiver without the CA: the certificate is refused,
    logged and retried with backoff (the existing policy), and the coordinator goes on serving."""
    hook = receivers(tls=(pki.cert, pki.key))
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    good, good_lines, good_db = _serve(tmp_path / "with", broker, "--alert-webhook", hook.url,
                                       "--alert-ca-cert", str(pki.ca))
    bad, bad_lines, bad_db = _serve(tmp_path / "without", broker, "--alert-webhook", hook.url)
    try:
        run = _fail_a_run(good_db)
        wait_for(lambda: hook.got, 30)
        assert [(a["kind"], a["details"]["run"]) for a in hook.got] == [("federated_run_failed", run)]
        assert hook.attempts == 1

        _fail_a_run(bad_db)
        wait_for(lambda: sum("retrying in" in ln for ln in bad_lines) >= 2, 30)
        out = "".join(bad_lines)
        assert "CERTIFICATE_VERIFY_FAILED" in out, out
        assert bad.poll() is None and "Traceback" not in out, out
        assert hook.attempts == 1 and len(hook.got) == 1  # nothing reached the receiver without the CA
        assert hook.server.handshakes_refused >= 2  # type: ignore[attr-defined]
        # still serving: its API answers, and counts the retries
        api = re.search(r"API (http://\S+)", out).group(1)  # type: ignore[union-attr]
        counters = httpx.get(api + "/v1/telemetry", headers={"Authorization": f"Bearer {BOOT}"}).json()["counters"]
        assert counters.get("alerts_retried", 0) >= 2 and not counters.get("alerts_sent"), counters
    finally:
        stop_process(good)
        stop_process(bad)
    assert "Traceback" not in "".join(good_lines) + "".join(bad_lines)


@pytest.mark.parametrize("case", ["missing", "directory", "not-pem", "a-key", "env"])
def test_a_bad_alert_ca_cert_is_refused_before_anything_starts(case: str, tmp_path: Path, pki: Pki,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    bad = {"missing": tmp_path / "nope.pem", "directory": tmp_path, "not-pem": tmp_path / "junk.pem",
           "a-key": pki.key, "env": tmp_path / "nope.pem"}[case]
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    extra = ["--alert-webhook", "https://127.0.0.1:9/hook"]
    if case == "env":
        monkeypatch.setenv("EDGEFLEET_ALERT_CA_CERT", str(bad))
    else:
        extra += ["--alert-ca-cert", str(bad)]
    capsys.readouterr()
    code = cli_main(_serve_cmd(tmp_path, *extra))
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code, err
    assert f"--alert-ca-cert {bad}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "serve.db").exists() and not (tmp_path / "fed").exists()  # nothing started
    with pytest.raises(ConfigError, match="--alert-ca-cert"):
        WebhookSender(["https://127.0.0.1:9/hook"], ca_cert=str(bad))


def test_a_bad_alert_ca_cert_exit_code_of_the_process(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli",
                           *_serve_cmd(tmp_path, "--alert-webhook", "https://127.0.0.1:9/hook", "--alert-ca-cert",
                                       str(tmp_path / "junk.pem"))],
                          env=dict(os.environ, EDGEFLEET_TOKEN=BOOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert "--alert-ca-cert" in proc.stderr and "Traceback" not in proc.stderr


# -- the pure part ----------------------------------------------------------------------------------------------------
def _device(name: str, online: bool, last_seen: float, session: int = 1) -> Device:
    return Device.from_row({"fleet": "f", "device_id": name, "tags": "[]", "online": online, "session": session,
                            "first_seen": 0.0, "last_seen": last_seen, "active_version": "1", "archive_sha256": "",
                            "agent_version": "", "telemetry_seq": 0, "claimed_tags": "[]", "group_name": "g"})


def test_decide_which_events_become_alerts() -> None:
    dep = cast(Deployment, SimpleNamespace(name="m", version="2", group="g"))  # what an alert reads of it
    snap = Snapshot(
        now=1000.0,
        halts=[RolloutEvent(5, "dep1", "stage", 0, "", "", 1.0), RolloutEvent(6, "dep1", "halted", 0, "1 of 1", "",
                                                                                2.0)],
        drift=[Alert(9, "f", "d1", "drift", "2", {"psi_max": 0.3}, 3.0)],
        devices=[_device("up", True, 0.0), _device("gone", False, 100.0), _device("brief", False, 950.0),
                 _device("never", False, 0.0, session=0)],
        failed_runs=[FailedRun("r1", "g", "failed", "exit 1", 900.0)],
        deployments={"dep1": dep})
    state, alerts = decide(WatchState(4, 8, 0.0), snap, "f", offline_after=300.0)
    assert [(a.kind, a.key) for a in alerts] == [("rollout_halted", "halt:6"), ("drift", "drift:9"),
                                                 ("device_offline", "offline:gone:100.000"),
                                                 ("federated_run_failed", "fedrun:r1")]
    assert alerts[0].details["group"] == "g" and "m 2" in alerts[0].summary
    assert (state.last_event, state.last_alert, state.runs_since) == (6, 9, 900.0)
    assert state.offline == {"gone": 100.0}
    # the same snapshot again (after the cursors): only what is new - nothing
    again = Snapshot(now=2000.0, devices=snap.devices)
    state2, alerts2 = decide(state, again, "f", offline_after=300.0)
    assert [a.key for a in alerts2] == ["offline:brief:950.000"]  # now away long enough
    # back online: forgotten; away again: a new alert
    state3, _ = decide(state2, Snapshot(now=2001.0, devices=[_device("gone", True, 2001.0)]), "f", 300.0)
    assert "gone" not in state3.offline
    _, alerts4 = decide(state3, Snapshot(now=3000.0, devices=[_device("gone", False, 2500.0)]), "f", 300.0)
    assert [a.key for a in alerts4] == ["offline:gone:2500.000"]
    # no threshold: no offline alerts at all
    assert decide(WatchState(), Snapshot(now=1e9, devices=snap.devices), "f", None)[1] == []


def test_backoff_and_what_is_retried() -> None:
    assert [backoff(n, 0.5, 4.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert retryable(None) and retryable(503) and retryable(429) and retryable(408)
    assert not retryable(400) and not retryable(404) and not retryable(200)
