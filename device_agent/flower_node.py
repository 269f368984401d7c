"""Supervise this device's ``flower-supernode`` for federated retraining.

Flower cannot run a SuperNode in a thread of another process (it installs
signal handlers), so the agent starts it as a child process and watches it:

- :class:`edgefleet.supervisor.ChildProcess` - start a command in its own process
  group, restart it when it dies (with backoff, up to a limit per window), stop the
  whole group (SuperNode, its ``flower-superexec`` and ClientApp processes) on shutdown;
- :class:`FlowerNode` - the ``flower-supernode`` command for this device: the
  SuperLink address, TLS (``root_certificates``) or ``insecure`` (loopback only),
  node authentication keys, and the node config that tells the ClientApp where
  the agent's samples are (``samples-db``, ``samples-key``, ``device-id``).

``python -m edgefleet.device_agent.flower_node --superlink HOST:PORT --state DIR``
runs it in the foreground until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgefleet.childenv import child_env
from edgefleet.errors import ConfigError
from edgefleet.supervisor import ChildProcess

_QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flower_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: only the harmless variables of ``base`` (default ``os.environ``;
    :func:`edgefleet.childenv.child_env`'s allow-list, so an agent's MQTT password or an operator's token
    never reaches a SuperNode or its ClientApps), phone-home off, this interpreter's ``bin/`` first on PATH
    (SuperLink/SuperNode start ``flower-superexec`` by name), then ``extra``."""
    env = child_env(base=base)
    env.update(_QUIET_ENV)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if extra:
        env.update(extra)
    return env


def find_tool(name: str) -> str:
    """A Flower executable next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"{name} not found: install flwr (pip install 'flwr==1.41.*') in this environment")
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class FlowerNodeConfig:
    superlink: str  # host:port of the SuperLink's Fleet API
    samples_db: str  # the agent's samples.db
    device_id: str = "device"
    samples_key: str | None = None  # device key file when samples are encrypted
    port: int = 9094  # this node's local ClientApp I/O API port
    insecure: bool = False
    allow_insecure_remote: bool = False
    root_certificates: str | None = None
    auth_private_key: str | None = None  # OpenSSH EC key registered with `flwr supernode register`
    auth_public_key: str | None = None  # deprecated by Flower 1.41 (derived from the private key); passed if given
    extra_node_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    log_path: str | None = None
    model_store: str | None = None  # the agent's state dir: a head run trains its active bundle's head
    trusted_keys: tuple[str, ...] = ()  # key files that bundle is verified with (besides the store's trust/)

    def __post_init__(self) -> None:
        if ":" not in self.superlink:
            raise ConfigError(f"superlink must be HOST:PORT, got {self.superlink!r}")
        if self.insecure and not self.allow_insecure_remote and not is_loopback(self.superlink):
            raise ConfigError("insecure (plain HTTP) Flower connections are for loopback only; "
                              "give root_certificates for TLS")
        if not self.insecure and not self.root_certificates:
            raise ConfigError("a TLS connection needs root_certificates (or insecure=True on loopback)")
        if self.auth_public_key and not self.auth_private_key:
            raise ConfigError("node authentication needs auth_private_key (the public key alone is not enough)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")

    @classmethod
    def for_agent(cls, agent_config: Any, superlink: str, **kwargs: Any) -> FlowerNodeConfig:
        """The node of an agent (``AgentConfig``): its ``samples.db``, device key and device id."""
        if not agent_config.samples.enabled:
            raise ConfigError("federated training needs local samples: set enabled = true in the [samples] section")
        return cls(superlink=superlink, samples_db=str(agent_config.state_path / "samples.db"),
                   samples_key=agent_config.samples.key_file, device_id=agent_config.device_id or "device",
                   model_store=str(agent_config.state_path), trusted_keys=tuple(agent_config.trusted_keys), **kwargs)

    def node_config(self) -> str:
        items: dict[str, object] = {"samples-db": self.samples_db, "device-id": self.device_id}
        if self.samples_key:
            items["samples-key"] = self.samples_key
        if self.model_store:
            items["model-store"] = self.model_store
        if self.trusted_keys:
            items["trusted-keys"] = ",".join(self.trusted_keys)
        items.update(self.extra_node_config)
        parts = []
        for k, v in items.items():
            if isinstance(v, bool):
                parts.append(f"{k}={str(v).lower()}")
            elif isinstance(v, (int, float)):
                parts.append(f"{k}={v}")
            else:
                s = str(v)
                if '"' in s or "\\" in s:
                    raise ConfigError(f"node config value for {k} must not hold quotes or backslashes")
                parts.append(f'{k}="{s}"')
        return " ".join(parts)

    def argv(self) -> list[str]:
        cmd = [find_tool("flower-supernode"), "--superlink", self.superlink, "--port", str(self.port),
               "--node-config", self.node_config()]
        if self.insecure:
            cmd.append("--insecure")
        else:
            assert self.root_certificates
            cmd += ["--root-certificates", self.root_certificates]
        if self.auth_private_key:
            cmd += ["--auth-supernode-private-key", self.auth_private_key]
        if self.auth_public_key:
            cmd += ["--auth-supernode-public-key", self.auth_public_key]
        return cmd


class FlowerNode(ChildProcess):
    """This device's supervised ``flower-supernode``.

    A device keeps trying for as long as it runs (the SuperLink may be away for hours), at most
    once a minute. With node authentication a SuperNode that crashed is refused until the
    SuperLink's heartbeat timeout marks its old session offline (about a minute in Flower 1.41).
    """

    def __init__(self, config: FlowerNodeConfig, **kwargs: object) -> None:
        self.config = config
        kwargs.setdefault("max_restarts", 0)
        kwargs.setdefault("max_backoff", 60.0)
        kwargs.setdefault("env", flower_env())
        super().__init__(config.argv(), name=f"supernode-{config.device_id}", log_path=config.log_path,
                         **kwargs)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgefleet.device_agent.flower_node", allow_abbrev=False,
                                description="Run and supervise this device's flower-supernode.")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--state", help="agent state directory (its samples.db is used)")
    p.add_argument("--samples", help="path of samples.db (default: STATE/samples.db)")
    p.add_argument("--key-file", help="device key when samples are encrypted")
    p.add_argument("--device-id", default=os.uname().nodename)
    p.add_argument("--port", type=int, default=9094)
    p.add_argument("--insecure", action="store_true", help="plain HTTP (loopback only)")
    p.add_argument("--root-certificates")
    p.add_argument("--auth-private-key")
    p.add_argument("--auth-public-key")
    p.add_argument("--log")
    a = p.parse_args(argv)
    samples = a.samples or (str(Path(a.state) / "samples.db") if a.state else None)
    if not samples:
        p.error("give --state or --samples")
    cfg = FlowerNodeConfig(superlink=a.superlink, samples_db=samples, device_id=a.device_id, samples_key=a.key_file,
                           port=a.port, insecure=a.insecure, root_certificates=a.root_certificates,
                           auth_private_key=a.auth_private_key, auth_public_key=a.auth_public_key, log_path=a.log)
    node = FlowerNode(cfg)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    node.start()
    try:
        done.wait()
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
