"""The coordinator side of the federation: the SuperLink, the Flower app, ``flwr run``.

- :class:`SuperLink` supervises ``flower-superlink`` (restarted if it dies,
  stopped with its process group), insecure on loopback only, TLS otherwise;
- :func:`write_app` generates the Flower app directory (``pyproject.toml`` with
  the run config, and a tiny package whose modules re-export edgefleet's
  ServerApp and ClientApp) - generated at run time because the installed
  package carries no data files;
- :func:`submit_run` submits it with Flower's own ``flwr run`` (connection from a
  generated ``$FLWR_HOME/config.toml``) and :func:`wait_for_run` follows the
  ServerApp's ``rounds.json`` until the run finishes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from edgefleet.childenv import child_env
from edgefleet.device_agent.flower_node import find_tool, flower_env, is_loopback
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.supervisor import ChildProcess

from .config import FederatedConfig
from .server_app import ROUNDS_FILE

APP_PACKAGE = "edgefleet_fedapp"


class FederatedError(EdgefleetError):
    """A federated run failed (submission refused, ServerApp failed, or timed out)."""


@dataclass(frozen=True)
class SuperLinkConfig:
    host: str = "127.0.0.1"
    port: int = 9092  # Fleet + Control + runtime HTTP API
    insecure: bool = True
    state_dir: str | None = None  # database file lives here; None = in memory
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certfile: str | None = None
    enable_supernode_auth: bool = False
    log_path: str | None = None

    def __post_init__(self) -> None:
        if self.insecure and not is_loopback(f"{self.host}:{self.port}"):
            raise ConfigError("an insecure SuperLink may only listen on loopback; configure TLS certificates")
        if not self.insecure and not (self.ssl_certfile and self.ssl_keyfile and self.ssl_ca_certfile):
            raise ConfigError("TLS needs ssl_certfile, ssl_keyfile and ssl_ca_certfile")
        if self.enable_supernode_auth and self.insecure:
            raise ConfigError("SuperNode authentication requires TLS")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        cmd = [find_tool("flower-superlink"), "--disable-runtime-dependency-installation", "--host", self.host,
               "--port", str(self.port)]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-certfile", str(self.ssl_certfile), "--ssl-keyfile", str(self.ssl_keyfile),
                    "--ssl-ca-certfile", str(self.ssl_ca_certfile)]
        if self.enable_supernode_auth:
            cmd.append("--enable-supernode-auth")
        if self.state_dir:
            Path(self.state_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["--database", str(Path(self.state_dir) / "superlink.db")]
        return cmd


class SuperLink(ChildProcess):
    """The coordinator's supervised ``flower-superlink``."""

    def __init__(self, config: SuperLinkConfig, **kwargs: Any) -> None:
        self.config = config
        kwargs.setdefault("env", child_env(base=flower_env()))  # none of the coordinator's secrets (child_env)
        super().__init__(config.argv(), name="superlink", log_path=config.log_path, **kwargs)

    @property
    def address(self) -> str:
        return self.config.address

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the SuperLink accepts connections on its port."""
        import socket

        deadline = time.monotonic() + timeout
        restarts = self.restarts
        while time.monotonic() < deadline:
            if self.exit_codes or self.restarts != restarts:
                raise FederatedError(f"flower-superlink exited while starting on {self.address} (port in use?); "
                                     f"see {self.log_path or 'its log'}")
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise FederatedError(f"flower-superlink did not start on {self.address} within {timeout:.0f}s")


def start_ready_superlink(config_for: Callable[[int], SuperLinkConfig], attempts: int = 1) -> SuperLink:
    """Start a SuperLink and wait until it accepts connections; stop it if that fails.

    ``config_for(attempt)`` gives each attempt's configuration: with ``attempts > 1`` it should pick a new free
    port, because a port picked free can be taken by another process before the SuperLink binds it.
    """
    for attempt in range(attempts):
        link = SuperLink(config_for(attempt))
        link.start()
        try:
            link.wait_ready()
            return link
        except BaseException as exc:
            link.stop()
            if not isinstance(exc, FederatedError) or attempt == attempts - 1:
                raise
    raise ConfigError(f"attempts must be >= 1, got {attempts}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_app(directory: str | os.PathLike, config: FederatedConfig, name: str = "edgefleet-federated") -> Path:
    """Write the Flower app (pyproject.toml + a re-exporting package) into ``directory``."""
    root = Path(directory)
    pkg = root / APP_PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Generated by edgefleet: the federated retraining Flower app."""\n')
    (pkg / "server_app.py").write_text("from edgefleet.cloud_sync.federated.server_app import app\n\n__all__ = ['app']\n")
    (pkg / "client_app.py").write_text("from edgefleet.cloud_sync.federated.client_app import app\n\n__all__ = ['app']\n")
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{name}"', 'version = "1.0.0"', 'description = "edgefleet federated retraining"',
        'license = "Apache-2.0"', "dependencies = []", "",
        "[tool.hatch.build.targets.wheel]", f'packages = ["{APP_PACKAGE}"]', "",
        "[tool.flwr.app]", 'publisher = "edgefleet"', "",
        "[tool.flwr.app.components]", f'serverapp = "{APP_PACKAGE}.server_app:app"',
        f'clientapp = "{APP_PACKAGE}.client_app:app"', "",
        "[tool.flwr.app.config]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in config.to_run_config().items()]
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return root


def write_flwr_home(directory: str | os.PathLike, address: str, name: str = "edgefleet", *, insecure: bool = True,
                    root_certificates: str | None = None) -> Path:
    """A ``FLWR_HOME`` whose ``config.toml`` names the SuperLink connection ``name``."""
    home = Path(directory)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f'root-certificates = "{root_certificates}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


@dataclass(frozen=True)
class Submitted:
    run_id: int | None
    output: str


def submit_run(app_dir: str | os.PathLike, flwr_home: str | os.PathLike, connection: str = "edgefleet",
               timeout: float = 120.0) -> Submitted:
    """``flwr run APP_DIR CONNECTION`` with ``FLWR_HOME`` set; returns the run id Flower reports."""
    env = child_env({"FLWR_HOME": str(flwr_home)}, base=flower_env())  # no API token or other secret of the run
    cmd = [find_tool("flwr"), "run", str(app_dir), connection, "--format", "json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = (proc.stdout or "") + (proc.stderr or "")
    run_id = None
    try:
        doc = json.loads(proc.stdout)
        if isinstance(doc, dict) and doc.get("run-id") is not None:
            run_id = int(doc["run-id"])
        if isinstance(doc, dict) and doc.get("success") is False:
            raise FederatedError(f"flwr run refused the run: {doc.get('error-message', out.strip())}")
    except (ValueError, TypeError):
        m = re.search(r"run[- ]id\D*(\d+)", out, re.I)
        run_id = int(m.group(1)) if m else None
    if proc.returncode != 0:
        raise FederatedError(f"flwr run failed (exit {proc.returncode}): {out.strip()[-2000:]}")
    return Submitted(run_id, out)


def read_rounds(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out_dir) / ROUNDS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_for_run(out_dir: str | os.PathLike, timeout: float, on_round: Callable[[Mapping[str, Any]], None] | None = None,
                 poll: float = 0.5) -> dict[str, Any]:
    """Follow ``rounds.json`` until the ServerApp marks the run finished or failed."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        doc = read_rounds(out_dir)
        if doc is not None:
            done = [r for r in doc.get("rounds", []) if r.get("round", 0) > 0 and "seconds" in r]
            if on_round is not None:
                for r in done[seen:]:
                    on_round(r)
            seen = max(seen, len(done))
            status = str(doc.get("status", ""))
            if status.startswith("finished"):
                return doc
            if status.startswith("failed"):
                raise FederatedError(f"the federated run {status}")
        if time.monotonic() > deadline:
            raise FederatedError(f"the federated run did not finish within {timeout:.0f}s "
                                 f"({seen} round(s) done; see {out_dir})")
        time.sleep(poll)


def run_federated(config: FederatedConfig, superlink: str, *, work_dir: str | os.PathLike | None = None,
                  timeout: float | None = None, insecure: bool = True, root_certificates: str | None = None,
                  on_round: Callable[[Mapping[str, Any]], None] | None = None) -> dict[str, Any]:
    """Generate the app, submit it to ``superlink`` with ``flwr run`` and wait for the result.

    Returns the ``rounds.json`` document plus ``"aggregate"`` (path of the final
    weights) and ``"run_id"``.
    """
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="edgefleet-federated-"))
    out = Path(config.out_dir) if config.out_dir else work / "out"
    from dataclasses import replace

    cfg = replace(config, out_dir=str(out.resolve()))
    out.mkdir(parents=True, exist_ok=True)
    app = write_app(work / "app", cfg)
    home = write_flwr_home(work / "flwr-home", superlink, insecure=insecure, root_certificates=root_certificates)
    submitted = submit_run(app, home)
    budget = timeout if timeout is not None else cfg.rounds * (cfg.round_timeout * 2 + 30) + 60
    doc = wait_for_run(out, budget, on_round)
    from .server_app import AGGREGATE_FILE

    agg = out / AGGREGATE_FILE
    doc["aggregate"] = str(agg) if agg.exists() else None
    doc["run_id"] = submitted.run_id
    return doc


__all__ = ["SuperLink", "SuperLinkConfig", "FederatedError", "write_app", "write_flwr_home", "submit_run",
           "wait_for_run", "read_rounds", "run_federated", "Submitted"]
