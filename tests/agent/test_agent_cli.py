"""The ``edgefleet agent`` CLI in real processes, the daemon's clean SIGTERM, and no TensorFlow anywhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "flwr", "paho")


def ef(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "edgefleet.cli", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_install_status_predict_rollback(tmp_path: Path, bundles: dict[str, Path], keys: dict[str, Any]) -> None:
    st = str(tmp_path / "st")
    tag = ["--hardware-tag", "test-board"]
    out = ef("agent", "install", str(bundles["1"]), "--state-dir", st, "--trust", str(keys["pub"]), *tag).stdout
    assert "SUCCEEDED" in out
    assert (tmp_path / "st" / "trust").iterdir()  # the key is kept with the device
    ef("agent", "install", str(bundles["2"]), "--state-dir", st, *tag)
    bad = ef("agent", "install", str(bundles["1"]), "--state-dir", st, *tag, check=False)
    assert bad.returncode == 12 and "version_not_newer" in bad.stderr
    other = ef("agent", "install", str(bundles["3"]), "--state-dir", st, check=False)  # no hardware tag given
    assert other.returncode == 12 and "hardware_mismatch" in other.stderr
    status = json.loads(ef("agent", "status", "--state-dir", st, "--json").stdout)
    assert status["active"]["version"] == "2" and status["previous"]["version"] == "1"
    assert status["job"]["reason"] == "hardware_mismatch"
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    pred = json.loads(ef("agent", "predict", "--state-dir", st, "--input", str(tmp_path / "x.npy"), "--json").stdout)
    assert np.asarray(pred["output"]).shape == (2, 3)
    assert "rolled back to dense v1" in ef("agent", "rollback", "--state-dir", st).stdout
    assert "dense v1" in ef("agent", "status", "--state-dir", st).stdout
    missing = ef("agent", "status", check=False)
    assert missing.returncode == 2 and "--state-dir" in missing.stderr


def test_daemon_stops_cleanly_on_sigterm_and_never_imports_tensorflow(tmp_path: Path, bundles: dict, keys: dict) -> None:
    (tmp_path / "agent.toml").write_text(textwrap.dedent(f"""
        [agent]
        state_dir = "state"
        hardware_tags = ["test-board"]
        trusted_keys = [{str(keys['pub'])!r}]
        [telemetry]
        flush_seconds = 0.2
    """))
    ef("agent", "install", str(bundles["1"]), "--config", str(tmp_path / "agent.toml"))
    p = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "edgefleet.cli", "agent", "run", "--config", str(tmp_path / "agent.toml"),
         "--tick", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert p.stdout is not None
        assert "serving 1" in p.stdout.readline()
        # another process installs: the daemon follows the store
        ef("agent", "install", str(bundles["2"]), "--config", str(tmp_path / "agent.toml"))
        from edgefleet.device_agent.telemetry import TelemetryQueue

        q = TelemetryQueue(tmp_path / "state" / "telemetry.db")
        deadline = time.monotonic() + 15
        followed: list[Any] = []
        while not followed and time.monotonic() < deadline:
            followed = [r for r in q.peek(10_000) if r.kind == "activated" and r.data.get("by") == "another process"]
            time.sleep(0.05)
        q.close()
        assert followed and followed[-1].data["version"] == "2"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err[-2000:]
        assert "stopped" in out
    finally:  # a failed assertion must not leave the daemon running
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=10)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in err.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported  # it really served a model
    assert not set(FORBIDDEN) & imported, set(FORBIDDEN) & imported


def test_library_use_never_imports_tensorflow(tmp_path: Path, bundles: dict, keys: dict) -> None:
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from edgefleet.device_agent import Agent, AgentConfig
        cfg = AgentConfig(state_dir={str(tmp_path / 's')!r}, hardware_tags=("test-board",),
                          trusted_keys=({str(keys['pub'])!r},))
        with Agent(cfg) as a:
            a.install({str(bundles['1'])!r})
            a.predict(np.ones((1, 4), np.float32))
            a.status()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        print(",".join(bad))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == ""
