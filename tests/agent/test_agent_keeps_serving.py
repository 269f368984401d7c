"""Issue 12, finding 3: state that is not the model never stops inference.

A corrupted telemetry queue is moved aside (the loss counted and shown by status) and a new one started;
a corrupted ``current`` pointer is rebuilt from the newest verified stored version (logged); on a full
disk (a real, small tmpfs) predictions and status go on and an install fails with a named error.
Every command runs as a real process: a failure is an exit code with one error line, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, UpdateConfig

TAG = ("--hardware-tag", "test-board")


def ef(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=90,
                          env=env)


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def installed(state: Path, keys: dict, bundles: dict, versions: tuple[str, ...] = ("1", "2")) -> AgentConfig:
    cfg = AgentConfig(state_dir=str(state), device_id="dev-1", hardware_tags=("test-board",),
                      trusted_keys=(str(keys["pub"]),), update=UpdateConfig(probation_seconds=0.0))
    with Agent(cfg, monitor=False) as a:
        for v in versions:
            job = a.install(bundles[v])
            assert job.status.value == "SUCCEEDED", job.message
        a.store.add_trusted_key(keys["pub"])
    return cfg


def predict_ok(state: Path, x: Path) -> list:
    p = ef("agent", "predict", "--state-dir", str(state), "--input", str(x), "--json")
    no_traceback(p)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)["output"]


@pytest.fixture()
def xfile(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    return tmp_path / "x.npy"


# -- a corrupted telemetry queue --------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "torn_pages"])
def test_corrupted_telemetry_queue_is_moved_aside(tmp_path: Path, keys: dict, bundles: dict, xfile: Path,
                                                  damage: str) -> None:
    state = tmp_path / "st"
    cfg = installed(state, keys, bundles)
    db = state / "telemetry.db"
    if damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:  # a valid header, then every page after the first overwritten (a torn write)
        raw = bytearray(db.read_bytes())
        assert len(raw) > 4096
        raw[4096:] = os.urandom(len(raw) - 4096)
        db.write_bytes(bytes(raw))
    for extra in ("telemetry.db-wal", "telemetry.db-shm"):
        (state / extra).unlink(missing_ok=True)

    st = ef("agent", "status", "--state-dir", str(state), "--json")
    no_traceback(st)
    assert st.returncode == 0, st.stderr
    assert predict_ok(state, xfile)
    st = ef("agent", "status", "--state-dir", str(state), "--json")
    assert st.returncode == 0, st.stderr
    tel = json.loads(st.stdout)["telemetry"]
    assert tel["lost_queues"] == 1, tel  # the loss is counted, and visible
    aside = list(state.glob("telemetry.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in tel["quarantined"][0]
    # the daemon's code path (the library): starts, serves, queues into the new queue
    with Agent(cfg, monitor=False) as a:
        a.predict(np.ones((1, 4), np.float32))
        a.telemetry.event("probe", {"ok": True})
        assert any(r.kind == "probe" for r in a.telemetry.queue.peek(10_000))
        assert a.status()["telemetry"]["lost_queues"] == 1


def test_telemetry_corrupted_while_running_does_not_stop_predict(tmp_path: Path, keys: dict, bundles: dict) -> None:
    cfg = installed(tmp_path / "st", keys, bundles)
    with Agent(cfg, monitor=False) as a:
        a.predict(np.ones((1, 4), np.float32))
        q = a.telemetry.queue
        q._db.close()  # the file goes bad under the open queue
        (tmp_path / "st" / "telemetry.db").write_bytes(os.urandom(8192))
        for extra in ("telemetry.db-wal", "telemetry.db-shm"):
            (tmp_path / "st" / extra).unlink(missing_ok=True)
        import sqlite3

        q._db = sqlite3.connect(str(q.path), check_same_thread=False, isolation_level=None)
        a.predict(np.ones((1, 4), np.float32))
        a.flush_telemetry()  # writes: finds the damage, moves it aside, goes on
        a.telemetry.event("probe", {})
        assert q.stats()["lost_queues"] == 1
        assert any(r.kind == "probe" for r in q.peek(10_000))


# -- a corrupted pointer ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bad_checksum"])
def test_corrupted_pointer_recovers_newest_verified_version(tmp_path: Path, keys: dict, bundles: dict,
                                                            xfile: Path, damage: str, caplog: Any) -> None:
    state = tmp_path / "st"
    cfg = installed(state, keys, bundles)
    pointer = state / "current"
    good = pointer.read_bytes()
    pointer.write_bytes({"garbage": os.urandom(64), "truncated": good[: len(good) // 2], "empty": b"",
                         "bad_checksum": good.replace(b'"generation":2', b'"generation":7')}[damage])
    st = ef("agent", "status", "--state-dir", str(state), "--json")
    no_traceback(st)
    assert st.returncode == 0, st.stderr
    assert "pointer_error" in json.loads(st.stdout)
    out = predict_ok(state, xfile)  # served: the newest verified version, v2
    with Agent(cfg, monitor=False) as a:
        want = a.predict(np.ones((2, 4), np.float32))
        assert a.active_version == "2"
        assert a.store.state().previous.version == "1"
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6)
    st = json.loads(ef("agent", "status", "--state-dir", str(state), "--json").stdout)
    assert st["active"]["version"] == "2" and "pointer_error" not in st


def test_corrupted_pointer_skips_a_damaged_newest_version(tmp_path: Path, keys: dict, bundles: dict,
                                                          caplog: Any) -> None:
    state = tmp_path / "st"
    cfg = installed(state, keys, bundles)
    from edgefleet.device_agent.store import Store

    st = Store(state).state()
    model = state / "objects" / st.active.id / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")  # v2 no longer verifies
    (state / "current").write_bytes(b"\x00garbage")
    caplog.set_level("WARNING", logger="edgefleet.device_agent")
    with Agent(cfg, monitor=False) as a:
        assert a.active_version == "1"
        a.predict(np.ones((1, 4), np.float32))
        kinds = [r.kind for r in a.telemetry.queue.peek(10_000)]
    assert "store_repaired" in kinds
    assert any("pointer" in r.getMessage() for r in caplog.records), caplog.text


# -- a full disk (a real tmpfs) -------------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path: Path) -> Any:
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)

        except OSError:
            pass
    with open(mnt / "filler2", "wb", buffering=0) as fh:  # the last partial block
        try:
            while True:
                fh.write(b"\0" * 512)

        except OSError:
            pass


def test_full_disk_predict_and_status_go_on_install_fails_named(small_disk: Path, keys: dict, bundles: dict,
                                                                 xfile: Path) -> None:
    state = small_disk / "st"
    cfg = installed(state, keys, bundles, ("1",))
    before = predict_ok(state, xfile)
    fill(small_disk)
    with pytest.raises(OSError):
        (small_disk / "probe").write_bytes(b"x" * 8192)  # the disk really is full
    assert predict_ok(state, xfile) == before
    st = ef("agent", "status", "--state-dir", str(state), "--json")
    no_traceback(st)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["active"]["version"] == "1"
    ins = ef("agent", "install", str(bundles["2"]), "--state-dir", str(state), *TAG)
    no_traceback(ins)
    assert ins.returncode == 13, ins.stderr
    assert "disk_full" in ins.stderr or "no space" in ins.stderr.lower(), ins.stderr
    # the daemon's code path: up on a full disk, serving, installing refused with a named reason
    with Agent(cfg, monitor=False) as a:
        assert a.active_version == "1"
        a.predict(np.ones((1, 4), np.float32))
        a.flush_telemetry()
        job = a.install(bundles["2"])
        assert job.status.value in ("FAILED", "REJECTED") and job.reason == "disk_full", (job.reason, job.message)
        assert a.active_version == "1"
        a.predict(np.ones((1, 4), np.float32))
    (small_disk / "filler").unlink()
    assert predict_ok(state, xfile) == before
