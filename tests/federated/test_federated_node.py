"""The agent runs this device's ``flower-supernode`` from its ``[federated]`` config: connects to a real
SuperLink over TLS (a CA made for the test with ``cryptography``: ``--ssl-certfile/--ssl-keyfile/
--ssl-ca-certfile`` on the link, ``--root-certificates`` on the node) that admits only registered node
keys, is restarted when killed, and leaves no process behind when the agent shuts down."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from edgefleet.errors import ConfigError

from .conftest import TlsLink, free_port, load_cloud, make_node_key


def _nodes(tls: TlsLink) -> list[dict[str, Any]]:
    """The SuperNodes the SuperLink knows (``flwr supernode list``)."""
    return list(tls.flwr("supernode", "list")["nodes"])


def _wait(cond: Any, timeout: float = 60.0) -> Any:
    return load_cloud("conftest").wait_for(cond, timeout, interval=0.3)


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

    # Act 1: the agent starts; its SuperNode comes online
    agent = Agent(cfg, tick_seconds=0.05)
    try:
        node = agent.flower_node
        assert node is not None and node.config.samples_db == str(tmp_path / "state" / "samples.db")
        assert 'device-id="dev-7"' in node.config.node_config()
        assert "--insecure" not in node.argv and node.argv[node.argv.index("--root-certificates") + 1] == \
            str(tmp_path / "flower-ca.pem")
        first = _wait(lambda: [n for n in _nodes(tls_link) if n["status"] == "online"])
        pid = node.pid
        assert pid is not None and agent.status()["federated"]["running"]

        # Act 2: the SuperNode dies (SIGKILL to its group); the agent restarts it and it registers again
        node.kill()
        _wait(lambda: node.restarts >= 1 and node.running and node.pid != pid, 30)
        _wait(lambda: len(_nodes(tls_link)) > len(first))
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


@pytest.mark.slow
def test_federated_superlink_with_node_auth_admits_only_registered_supernodes(tmp_path: Path) -> None:
    from edgefleet.device_agent.config import load_config
    from edgefleet.device_agent.flower_node import FlowerNode, FlowerNodeConfig

    # Arrange: a TLS SuperLink with node authentication; the operator registers the device's key, which the
    # device's agent config names; a rogue node's key is unknown to the link
    tls = TlsLink(tmp_path / "link", auth=True)
    nodes: list[FlowerNode] = []
    try:
        (tmp_path / "flower-ca.pem").write_bytes(tls.ca.read_bytes())
        _, pub = make_node_key(tmp_path, "node")
        registered = str(tls.flwr("supernode", "register", str(pub))["node-id"])
        cfg = load_config(_toml(tmp_path, f'enabled = true\nsuperlink = "{tls.address}"\n'
                                          f'root_certificates = "flower-ca.pem"\nauth_private_key = "node.key"\n'
                                          f"port = {free_port()}\n"))
        device = FlowerNodeConfig.for_agent(cfg, cfg.federated.superlink, port=cfg.federated.port,
                                            root_certificates=cfg.federated.root_certificates,
                                            auth_private_key=cfg.federated.auth_private_key)
        rogue_key, _ = make_node_key(tmp_path / "rogue", "rogue")
        rogue = FlowerNodeConfig(superlink=tls.address, samples_db=str(tmp_path / "r.db"), device_id="rogue",
                                 port=free_port(), root_certificates=str(tls.ca), auth_private_key=str(rogue_key))

        # Act
        for c in (device, rogue):
            nodes.append(FlowerNode(c, restart=False))
            nodes[-1].start()
        online = _wait(lambda: [n for n in _nodes(tls) if n["status"] == "online"])
        _wait(lambda: nodes[1].exit_codes, 30)
    finally:
        for n in nodes:
            n.stop()
        tls.link.stop()

    # Assert: the registered device is online under its key; the rogue was refused and exited
    assert device.argv()[device.argv().index("--auth-supernode-private-key") + 1] == str(tmp_path / "node.key")
    assert [n["node-id"] for n in online] == [registered]
    assert nodes[1].exit_codes[0] != 0 and not nodes[0].exit_codes


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
