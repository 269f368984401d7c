"""``edgefleet demo``: the whole loop in a small configuration and the facts of its summary, its cleanup
(also on Ctrl-C in the middle of the federated run), and clear errors when a piece is missing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.cloud_sync.broker import find_mosquitto
from edgefleet.cloud_sync.demo.procs import MARK, check_broker
from edgefleet.cloud_sync.demo.status import status_line, summary_rows
from edgefleet.errors import ConfigError, SyncError

STAGES = ("data", "train", "compile", "broker", "fleet", "rollout_v1", "serve", "federation", "drift", "federated",
          "compile_v2", "rollout_v2", "bad_candidate")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(MARK, None)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _demo_argv(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet.cli", "demo", "--workdir", str(workdir), *args]


def leftovers(workdir: Path) -> list[str]:
    """Live processes (other than this one) marked with the demo's workdir or naming it on their command line."""
    mark = f"{MARK}={workdir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and (mark in env or str(workdir).encode() in cmd):
            found.append(f"{entry.name}: {cmd.decode(errors='replace')[:200]}")
    return found


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_leaves_nothing_running(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    t0 = time.monotonic()
    proc = subprocess.run(_demo_argv(wd, "--devices", "2", "--rounds", "1"), capture_output=True, text=True,
                          timeout=420, env=_env())
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    s = json.loads((wd / "summary.json").read_text())

    assert s["final_version"] == "2" and s["all_on_final"], s["device_results"]
    assert [d["version"] for d in s["device_results"]] == ["2", "2"]
    assert s["accuracy_after"] >= s["accuracy_before"], (s["accuracy_before"], s["accuracy_after"])
    fed = s["federated"]
    assert fed["trigger"] == "drift" and fed["status"] == "deployed" and len(fed["rounds"]) == 1, fed
    assert fed["gate"]["promoted"] and fed["deployment"]["id"] == s["rollouts"][1]["deployment"]
    assert s["bytes_shipped"] > 0 and [r["version"] for r in s["rollouts"]] == ["1", "2"]
    for r in s["rollouts"]:
        assert r["bytes"] > 0 and r["state"] == "completed"
        assert [st["name"] for st in r["stages"]] == ["canary", "wave 1"], r["stages"]
    # v2 is v1's pruned int8 backbone with the aggregated head: it ships as a head-only update (< 5% of the bundle)
    assert s["rollouts"][1]["head_updates"] == 2 and s["rollouts"][1]["deltas"] == 2
    assert s["rollouts"][1]["bytes"] < 0.05 * 2 * s["rollouts"][1]["archive_bytes"], s["rollouts"][1]
    from edgefleet.bundle import verify_bundle_dir

    v1, v2 = (verify_bundle_dir(wd / "bundles" / "digits-v1"), verify_bundle_dir(fed["gate"]["bundle"]))
    assert v2.manifest.head is not None and v1.manifest.metrics["sparsity"] == v2.manifest.metrics["sparsity"] == 0.5
    assert (v1.path / v1.manifest.model_file).read_bytes() == (v2.path / v2.manifest.model_file).read_bytes()
    # --personalize: each device scored the global head and its own fine-tuned copy on its held-back samples; a
    # device that kept its own head serves it on v2 (and says so), the other serves v2's signed global head
    pers = fed["personalization"]
    assert sorted(d["device_id"] for d in pers["devices"]) == ["dev-01", "dev-02"], pers
    own = {d["device_id"]: d["stored"] for d in pers["devices"]}
    assert {d["device_id"]: d["head"] == "personal" for d in s["device_results"]} == own, s["device_results"]
    assert proc.stdout.count(f"personalisation: {pers['kept']} of 2 device(s) keep a local head") == 1
    for d in s["device_results"]:  # a device on its own head: both heads scored on its sensor inputs
        assert (d["own_head"] is not None) == (d["head"] == "personal"), d
        if d["own_head"]:
            assert f"{d['device_id']} serves its own head of v2 (personalisation)" in proc.stdout
    # the bad v3 (a head trained on shuffled labels, no gate) was rolled back by quality probation on the canary,
    # which halted its rollout: the other device never got it
    bad = s["bad_candidate"]
    assert bad["version"] == "3" and bad["state"] == "halted" and bad["sent_to"] == [r["device_id"] for r in
                                                                                     bad["rolled_back"]]
    assert len(bad["rolled_back"]) == 1 and bad["rolled_back"][0]["reason"] == "quality", bad
    assert bad["test_accuracy"] < s["accuracy_after"] - 0.2 and bad["head_updates"] == 1
    assert set(STAGES) <= set(s["stages"]) and all(v >= 0 for v in s["stages"].values())
    assert {a["device_id"] for a in s["drift_alerts"]} == {"dev-02"}
    for text in ("DRIFT ALERT from dev-02", "the coordinator started federated run", "round 1: 2 device(s) trained",
                 "signed as v2", "devices 2/2 online", "head-only update", "(canary) rolled v3 back on probation: quality"):
        assert text in proc.stdout, text
    assert not leftovers(wd)
    print(f"demo (2 devices, 1 round) took {took:.0f}s; stages {s['stages']}")


def _start_demo_until(wd: Path, out: Path, line: str, timeout: float = 300) -> subprocess.Popen[bytes]:
    """Start a 2-device demo with its output in ``out``; return once ``line`` appears in it."""
    with open(out, "w") as fh:
        # a runner started in the background by a non-interactive shell ignores SIGINT, and so would the demo:
        # give it the default disposition, as a terminal would, so Ctrl-C can be tested anywhere
        proc = subprocess.Popen(_demo_argv(wd, "--devices", "2"), stdout=fh, stderr=subprocess.STDOUT, env=_env(),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while line not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            raise AssertionError(f"no {line!r} in the demo's output: {out.read_text()[-3000:]}")
        time.sleep(0.3)
    return proc


@pytest.mark.slow
def test_ctrl_c_during_the_federated_run_stops_every_process(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    out = tmp_path / "out.txt"
    proc = _start_demo_until(wd, out, "the coordinator started federated run")
    try:
        time.sleep(3)
        running = leftovers(wd)
        assert len(running) >= 7, running  # mosquitto, coordinator and its federated run, 2 devices, superlink, supernodes ...
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, out.read_text()[-3000:]
        stopped_in = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in out.read_text()
    assert not leftovers(wd), leftovers(wd)
    assert stopped_in < 40


@pytest.mark.slow
def test_a_device_process_that_dies_is_named_and_everything_else_stopped(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    out = tmp_path / "out.txt"
    proc = _start_demo_until(wd, out, "devices registered and online")
    try:
        deadline = time.monotonic() + 30
        status = wd / "devices" / "dev-02" / "status.json"
        while not status.exists():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        pid = json.loads(status.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)  # a device crashes
        assert proc.wait(timeout=120) == 14, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert f"dev-02 (pid {pid}) exited with -9" in text and "the logs are in" in text
    assert (wd / "logs" / "dev-02.log").exists() and not leftovers(wd)


def test_missing_mosquitto_is_explained_before_anything_starts(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    env = _env(EDGEFLEET_MOSQUITTO=str(tmp_path / "no" / "mosquitto"), PATH=str(Path(sys.executable).parent))
    proc = subprocess.run(_demo_argv(wd, "--devices", "2"), capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "apt-get install mosquitto" in proc.stderr and "EDGEFLEET_MOSQUITTO" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not wd.exists() and not leftovers(wd)


def test_find_mosquitto(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found on PATH: install it .*apt-get install mosquitto"):
        find_mosquitto({"PATH": str(tmp_path)}, fallbacks=())
    fake = tmp_path / "mosquitto"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_mosquitto({"PATH": str(tmp_path)}, fallbacks=()) == str(fake)
    assert find_mosquitto({"PATH": "", "EDGEFLEET_MOSQUITTO": str(fake)}, fallbacks=()) == str(fake)
    with pytest.raises(ConfigError, match="is not an executable mosquitto"):
        find_mosquitto({"PATH": str(tmp_path), "EDGEFLEET_MOSQUITTO": str(tmp_path / "gone")})


def test_missing_flower_tools_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgefleet.device_agent.flower_node as fn
    from edgefleet.cloud_sync.demo.procs import check_flower_tools

    def find_tool(name: str) -> str:
        if name == "flower-superlink":
            raise ConfigError(f"{name} not found")
        return "/bin/true"

    monkeypatch.setattr(fn, "find_tool", find_tool)
    with pytest.raises(ConfigError, match=r"flower-superlink not found: .*pip install 'edgefleet\[federated\]'"):
        check_flower_tools()


def test_a_broker_url_that_is_not_an_mqtt_broker_is_explained() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(SyncError, match="nothing listens at"):
            check_broker(f"mqtt://127.0.0.1:{port}")
        s.listen(4)  # accepts connections but never speaks MQTT
        with pytest.raises(SyncError, match="did not answer as an MQTT 5 broker"):
            check_broker(f"mqtt://127.0.0.1:{port}", timeout=1.0)


def test_status_line_and_summary_rows() -> None:
    devices = [{"device_id": "dev-01", "online": True, "active_version": "2"},
               {"device_id": "dev-02", "online": False, "active_version": "1"}]
    dep = {"version": "2", "state": "running", "stage": 0, "done": 1, "targets": 2, "counts": {"SUCCEEDED": 1,
                                                                                              "QUEUED": 1}}
    tel = {"rows": [{"predictions": 40, "errors": 1}], "alerts": [{"kind": "drift", "device_id": "dev-02"}]}
    statuses = {"dev-01": {"active_version": "2", "counts": {"2": {"predictions": 10, "correct": 9}}},
                "dev-02": {"active_version": "1", "counts": {}, "drift": {"gain": 0.5}}}
    line = status_line(devices, dep, tel, statuses, ["canary", "wave 1"])
    assert line == ("devices 1/2 online | versions v1x1 v2x1 | rollout v2 canary [######------] 1/2 queued=1 | "
                    "telemetry 40 predict calls 1 errors | drift alerts dev-02 | local acc dev-01 0.90 dev-02 -~")
    rows = summary_rows({"test_samples": 450, "accuracy_before": 0.5, "accuracy_after": 0.9, "stages": {"data": 1.0},
                         "rollouts": [{"version": "2", "stages": [{"name": "canary", "devices": 1}], "seconds": 2.0,
                                       "bytes": 10, "deltas": 1, "archive_bytes": 30}],
                         "device_results": [{"device_id": "dev-01", "version": "2", "classes": [0, 1],
                                             "local_accuracy_before": 0.5, "local_accuracy_after": None}]})
    assert rows["head"][0] == ["accuracy on 450 held-out digits", "50.0%", "90.0%"]
    assert rows["rollouts"] == [["v2", "canary (1)", "2.0s", "10", "bsdiff delta (archive 30 B)"]]
    assert rows["devices"][0][:5] == ["dev-01", "v2", "0,1", "50.0%", "-"]
    own = summary_rows({"device_results": [{"device_id": "dev-01", "version": "2", "head": "personal", "classes": [0]}]})
    assert own["devices"][0][:2] == ["dev-01", "v2 (own head)"]


def test_scenario_gives_the_cloud_a_weak_set_and_the_devices_what_it_lacks() -> None:
    import numpy as np

    from edgefleet.cloud_sync.demo.scenario import drifted_devices, make_scenario

    s = make_scenario(3, seed=0)
    again = make_scenario(3, seed=0)
    assert set(np.unique(s.cloud_y)) == set(range(6)) and len(s.cloud_y) == 120
    assert set(np.unique(s.test_y)) == set(range(10)) == set(np.unique(s.gate_y))
    seen = set()
    for d, d2 in zip(s.devices, again.devices):
        assert np.array_equal(d.sample_x, d2.sample_x)  # deterministic for a seed
        assert len(d.sample_y) >= 20 and len(d.sensor_y) >= 20
        top = np.bincount(np.concatenate([d.sample_y, d.sensor_y]), minlength=10).argsort()[::-1][:len(d.classes)]
        assert set(top.tolist()) == set(d.classes)  # non-IID: mostly its own classes
        seen |= set(np.unique(d.sample_y).tolist())
    assert set(range(6, 10)) <= seen  # the devices hold the classes the cloud never saw
    held = len(s.cloud_y) + len(s.gate_y) + len(s.test_y) + sum(len(d.sample_y) + len(d.sensor_y) for d in s.devices)
    assert held <= 1797  # every digit is used at most once
    assert drifted_devices(["a", "b", "c"]) == ["c"] and drifted_devices(["a"]) == ["a"]
    with pytest.raises(ConfigError, match="at least one device"):
        make_scenario(0)


@pytest.mark.slow
def test_demo_killed_with_sigkill_leaves_nothing_running(tmp_path: Path) -> None:
    wd = tmp_path / "demo"
    out = tmp_path / "out.txt"
    proc = _start_demo_until(wd, out, "devices registered and online")
    try:
        time.sleep(2)
        assert len(leftovers(wd)) >= 5, leftovers(wd)  # mosquitto, coordinator, superlink, 2 devices (+ supernodes)
        proc.kill()  # no cleanup can run in the demo itself: its watchdog sweeps
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while leftovers(wd) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers(wd), leftovers(wd)
