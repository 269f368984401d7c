"""The agent runs this device's ``flower-supernode`` from its ``[federated]`` config: connects to a real
SuperLink over TLS (a CA made for the test with ``cryptography``: ``--ssl-certfile/--ssl-keyfile/
--ssl-ca-certfile`` on the link, ``--root-certificates`` on the node), is restarted when killed, and
leaves no process behind when the agent shuts down."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgefleet.errors import ConfigError

from .conftest import TlsLink, free_port


def _nodes(tls: TlsLink, home: Path) -> list[dict[str, Any]]:
    """The SuperNodes the SuperLink knows, from Flower's own CLI (``flwr supernode list``, over TLS)."""
    from edgefleet.cloud_sync.federated.runner import write_flwr_home
    from edgefleet.device_agent.flower_node import find_tool, flower_env

    write_flwr_home(home, tls.address, insecure=False, root_certificates=str(tls.ca))
    proc = subprocess.run([find_tool("flwr"), "supernode", "list", "edgefleet", "--format", "json"],
                          env=flower_env({"FLWR_HOME": str(home)}), capture_output=True, text=True, timeout=60)
    doc = json.loads(proc.stdout)
    assert doc.get("success"), proc.stdout + proc.stderr
    return list(doc["nodes"])


def _wait(cond: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"condition not met within {timeout}s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _toml(tmp: Path, federated: str, samples: bool = True) -> Path:
    p = tmp / "agent.toml"
    p.write_text(f'[agent]\nstate_dir = "state"\ndevice_id = "dev-7"\n\n[samples]\nenabled = {str(samples).lower()}\n\n'
                 f"[federated]\n{federated}\n")
    return p


@pytest.mark.slow
def test_federated_agent_supervises_its_supernode_from_config(tls_link: TlsLink, tmp_path: Path) -> None:
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import load_config

    # Arrange: a TLS SuperLink; the agent's config names it and the CA (relative to the config file)
    (tmp_path / "flower-ca.pem").write_bytes(tls_link.ca.read_bytes())
    cfg = load_config(_toml(tmp_path, f'enabled = true\nsuperlink = "{tls_link.address}"\n'
                                      f'root_certificates = "flower-ca.pem"\nport = {free_port()}\n'))
    home = tmp_path / "flwr-home"

    # Act 1: the agent starts; its SuperNode registers with the SuperLink
    agent = Agent(cfg, tick_seconds=0.05)
    try:
        node = agent.flower_node
        assert node is not None and node.config.samples_db == str(tmp_path / "state" / "samples.db")
        assert 'device-id="dev-7"' in node.config.node_config()
        assert "--insecure" not in node.argv and node.argv[node.argv.index("--root-certificates") + 1] == \
            str(tmp_path / "flower-ca.pem")
        first = _wait(lambda: [n for n in _nodes(tls_link, home) if n["status"] == "online"])
        pid = node.pid
        assert pid is not None and agent.status()["federated"]["running"]

        # Act 2: the SuperNode dies (SIGKILL to its group); the agent restarts it and it registers again
        node.kill()
        _wait(lambda: node.restarts >= 1 and node.running and node.pid != pid, 30)
        _wait(lambda: len(_nodes(tls_link, home)) > len(first))
        new_pid = node.pid
        assert new_pid is not None
    finally:
        # Act 3: the agent shuts down
        agent.close()

    # Assert: neither the first nor the restarted SuperNode's process group is left (SIGKILLed members may take
    # a moment to be reaped by init)
    assert not _group_alive(pid)
    _wait(lambda: not _group_alive(new_pid), 10)
    assert agent.flower_node is not None and not agent.flower_node.running
    assert "supernode" in (tmp_path / "state" / "flower-node.log").read_text().lower()


def test_federated_agent_config_refuses_unsafe_or_incomplete_settings(tmp_path: Path) -> None:
    from edgefleet.device_agent.config import load_config

    cases = {
        'enabled = true\nsuperlink = "10.0.0.5:9092"\ninsecure = true': "loopback only",
        'enabled = true\nsuperlink = "10.0.0.5:9092"': "root_certificates is required",
        'enabled = true\nsuperlink = "nohostport"\ninsecure = true': "HOST:PORT",
        'enabled = true\nsuperlink = "127.0.0.1:9092"\ninsecure = true\nbogus = 1': "unknown option",
        'enabled = true\nsuperlink = "127.0.0.1:9092"\ninsecure = "yes"': "must be true or false",
    }
    for body, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(_toml(tmp_path, body))
    with pytest.raises(ConfigError, match=r"needs local samples"):
        load_config(_toml(tmp_path, 'enabled = true\nsuperlink = "127.0.0.1:9092"\ninsecure = true', samples=False))
    tls = load_config(_toml(tmp_path, 'enabled = true\nsuperlink = "fl.example.com:9092"\nroot_certificates = "ca.pem"'))
    assert tls.federated.root_certificates == str(tmp_path / "ca.pem") and not tls.federated.insecure
    assert not load_config(_toml(tmp_path, "enabled = false")).federated.enabled
