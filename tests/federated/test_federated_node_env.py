"""A SuperNode started by a device agent gets none of the agent's secrets (issue 13): its environment goes through
the same allow-list as the coordinator's children (``edgefleet.childenv``), so the agent's MQTT credentials or an
operator's token or signing key left in the shell it was started from never reach ``flower-supernode``, its
``flower-superexec`` or ClientApps, while what Flower needs (PATH, HOME, locale, ``FLWR_*``) does."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from .conftest import free_port

SECRETS = {"EDGEFLEET_TOKEN": "admin-" + uuid.uuid4().hex, "EDGEFLEET_TOKEN_FILE": "/etc/edgefleet/token",
           "EDGEFLEET_SIGNING_KEY": "/etc/edgefleet/operator.key", "EDGEFLEET_MQTT_USER": "dev-7",
           "EDGEFLEET_MQTT_PASSWORD": "mqtt-" + uuid.uuid4().hex, "AWS_SECRET_ACCESS_KEY": uuid.uuid4().hex,
           "EDGEFLEET_AGENT_FAILPOINT": "never:1"}
NEEDED = {"HOME", "PATH", "LANG", "FLWR_HOME_HINT", "TF_CPP_MIN_LOG_LEVEL"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)


def _group(pgid: int) -> list[int]:
    """Every process of the process group (the SuperNode and what it started)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(d.name))
    return pids


def test_flower_env_keeps_what_flower_needs_and_no_secret() -> None:
    from edgefleet.device_agent.flower_node import flower_env

    base = {**SECRETS, "HOME": "/home/dev", "PATH": "/usr/bin", "LANG": "C.UTF-8", "FLWR_HOME_HINT": "x",
            "TF_CPP_MIN_LOG_LEVEL": "3", "DATABASE_URL": "postgresql://u:p@db/x"}
    env = flower_env({"FLWR_HOME": "/tmp/fh"}, base=base)
    assert not (set(SECRETS) | {"DATABASE_URL"}) & set(env)
    assert NEEDED <= set(env) and env["HOME"] == "/home/dev" and env["FLWR_HOME"] == "/tmp/fh"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["PATH"].endswith("/usr/bin")


def test_the_agents_supernode_gets_none_of_the_agents_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import load_config

    # Arrange: the agent's own environment holds secrets (and what Flower needs); its SuperLink is a loopback port
    # nobody listens on, so the SuperNode starts and keeps trying to connect
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("FLWR_HOME_HINT", "kept")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    cfg_path = tmp_path / "agent.toml"
    cfg_path.write_text(f'[agent]\nstate_dir = "state"\ndevice_id = "dev-7"\n\n[samples]\nenabled = true\n\n'
                        f'[federated]\nenabled = true\ninsecure = true\nsuperlink = "127.0.0.1:{free_port()}"\n'
                        f"port = {free_port()}\n")

    # Act: the agent starts its SuperNode
    agent = Agent(load_config(cfg_path), tick_seconds=0.05)
    try:
        node = agent.flower_node
        assert node is not None
        deadline = time.monotonic() + 30
        envs: dict[int, dict[str, str]] = {}
        while time.monotonic() < deadline and not envs:
            pid = node.pid
            if pid is not None and node.running:
                for p in _group(pid):
                    try:
                        envs[p] = _environ(p)
                    except OSError:  # ended meanwhile
                        pass
            time.sleep(0.1)
        assert envs, "the SuperNode did not start"
    finally:
        agent.close()

    # Assert: no process of the SuperNode's group holds any of the secrets, by name or by value; what Flower needs
    # is there
    for p, env in envs.items():
        assert not set(SECRETS) & set(env), (p, sorted(set(SECRETS) & set(env)))
        assert not set(SECRETS.values()) & set(env.values())
        assert NEEDED <= set(env) and env["HOME"] == os.environ["HOME"] and env["FLWR_HOME_HINT"] == "kept"
        assert env["FLWR_TELEMETRY_ENABLED"] == "0"
