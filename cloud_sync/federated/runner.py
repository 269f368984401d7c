"""The coordinator side of the federation: the SuperLink, the Flower app, ``flwr run``.

- :class:`SuperLink` supervises ``flower-superlink`` (restarted if it dies,
  stopped with its process group), insecure on loopback only, TLS otherwise;
- :func:`write_app` generates the Flower app directory (``pyproject.toml`` with
  the run config, and a tiny package whose modules re-export edgefleet's
  ServerApp and ClientApp) - generated at run time because the installed
  package carries no data files;
- :func:`submit_run` submits it with Flower's own ``flwr run`` (connection from a
  generated ``$FLWR_HOME/config.toml``) and :func:`wait_for_run` follows the
  ServerApp's ``rounds.json`` until the run finishes;
- while it waits, :class:`RunWatch` polls the SuperLink's Control API (:class:`ControlClient`: the SuperNodes
  online, the Flower run's status) and says what the run waits for (:mod:`.progress`), and asks ``should_stop``
  (the run's record: a stop asked for through the coordinator's API); a stop, SIGTERM, Ctrl-C or any failure
  while waiting also stops the Flower run on the SuperLink (``flwr stop``'s call), so no ServerApp is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from edgefleet.childenv import child_env
from edgefleet.device_agent.flower_node import find_tool, flower_env, is_loopback
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.supervisor import ChildProcess

from .config import FederatedConfig
from .progress import Observation, Progress
from .server_app import ROUNDS_FILE

APP_PACKAGE = "edgefleet_fedapp"


class FederatedError(EdgefleetError):
    """A federated run failed (submission refused, ServerApp failed, or timed out)."""


class RunStopped(FederatedError):
    """A federated run was stopped before it finished: asked to through the coordinator's API, by SIGTERM (the
    coordinator supervising it) or Ctrl-C, or on the SuperLink (``flwr stop``)."""


class RunEndedError(FederatedError):
    """``federated stop`` of a run that has already ended (or that ended otherwise before the stop took effect):
    nothing was stopped."""


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


class ControlClient:
    """Flower's Control API of a SuperLink, as ``flwr supernode list``, ``flwr list`` and ``flwr stop`` call it
    (flwr 1.41: protobuf over HTTP on the SuperLink's address; TLS verified with ``root_certificates``).
    Polling calls answer None when the SuperLink does not answer."""

    def __init__(self, address: str, *, insecure: bool = True, root_certificates: str | None = None,
                 timeout: float = 5.0) -> None:
        self.address = address
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.timeout = timeout
        self._client: Any = None

    def _control(self) -> Any:
        if self._client is None:
            from flwr.supercore.control import ControlHttpClient

            # as ControlHttpClient.from_server_address, with a timeout: a poll must not hold the run for Flower's 30 s
            verify: bool | str = False if self.insecure else (self.root_certificates or True)
            self._client = ControlHttpClient(f"{'http' if self.insecure else 'https'}://{self.address}",
                                             verify=verify, timeout=self.timeout)
        return self._client

    def online_nodes(self) -> int | None:
        """How many SuperNodes are online on the SuperLink (None: no answer)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        try:
            res = self._control().ListNodes(ListNodesRequest())
        except Exception:  # connection refused, TLS, HTTP error: the SuperLink does not answer now
            return None
        return sum(1 for n in res.nodes_info if n.status == "online")

    def run_status(self, run_id: int | None) -> str | None:
        """The Flower run's ``status`` or ``status:sub_status`` (``pending``, ``running``, ``finished:stopped``...)."""
        if run_id is None:
            return None
        from flwr.proto.control_pb2 import ListRunsRequest

        try:
            res = self._control().ListRuns(ListRunsRequest(run_id=run_id))
        except Exception:
            return None
        run = res.run_dict.get(run_id)
        if run is None:
            return None
        st = run.status
        return f"{st.status}:{st.sub_status}" if st.sub_status else str(st.status)

    def stop_run(self, run_id: int) -> bool:
        """Stop a Flower run on the SuperLink (``flwr stop``): False when it could not (ended, unknown, no answer)."""
        from flwr.proto.control_pb2 import StopRunRequest

        try:
            return bool(self._control().StopRun(StopRunRequest(run_id=run_id)).success)
        except Exception:
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RunWatch:
    """Called on each poll of :func:`wait_for_run` (with the rounds done): every ``poll`` seconds it asks
    ``should_stop`` (a reason: :class:`RunStopped`), polls the SuperLink and prints the :class:`~.progress.Progress`
    lines with ``echo``. A Flower run that ended on the SuperLink without the ServerApp saying so within ``grace``
    seconds (stopped with ``flwr stop``, or its ServerApp died) ends the wait."""

    def __init__(self, control: ControlClient, flower_run_id: int | None, progress: Progress | None,
                 echo: Callable[[str], None], should_stop: Callable[[], str | None] | None = None, *,
                 poll: float = 2.0, grace: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.control = control
        self.flower_run_id = flower_run_id
        self.progress = progress
        self.echo = echo
        self.should_stop = should_stop
        self.poll = poll
        self.grace = grace
        self.clock = clock
        self._next = float("-inf")
        self._ended_at: float | None = None

    def __call__(self, rounds_done: int) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.poll
        if self.should_stop is not None:
            reason = self.should_stop()
            if reason:
                raise RunStopped(reason)
        nodes = self.control.online_nodes() if self.progress is not None else None
        status = self.control.run_status(self.flower_run_id)
        if self.progress is not None:
            for line in self.progress.observe(Observation(now, nodes, rounds_done, status)):
                self.echo(line)
        if status and status.startswith("finished:") and status != "finished:completed":
            self._ended_at = self._ended_at if self._ended_at is not None else now
            if now - self._ended_at >= self.grace:
                what = f"Flower run {self.flower_run_id} on {self.control.address} ended {status}"
                raise RunStopped(what) if status == "finished:stopped" else FederatedError(what)


def read_rounds(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out_dir) / ROUNDS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_for_run(out_dir: str | os.PathLike, timeout: float, on_round: Callable[[Mapping[str, Any]], None] | None = None,
                 poll: float = 0.5, on_poll: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Follow ``rounds.json`` until the ServerApp marks the run finished or failed; ``on_poll(rounds_done)`` is
    called on every poll (a :class:`RunWatch`: what it raises ends the wait)."""
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
        if on_poll is not None:
            on_poll(seen)
        if time.monotonic() > deadline:
            raise FederatedError(f"the federated run did not finish within {timeout:.0f}s "
                                 f"({seen} round(s) done; see {out_dir})")
        time.sleep(poll)


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While the run waits, SIGTERM (the coordinator stopping a run it supervises) raises :class:`RunStopped`
    in the main thread, so the Flower run is stopped and the run recorded ``stopped`` before the process ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise RunStopped(f"terminated by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_federated(config: FederatedConfig, superlink: str, *, work_dir: str | os.PathLike | None = None,
                  timeout: float | None = None, insecure: bool = True, root_certificates: str | None = None,
                  on_round: Callable[[Mapping[str, Any]], None] | None = None,
                  progress: Callable[[str], None] | None = None, should_stop: Callable[[], str | None] | None = None,
                  progress_every: float = 5.0, poll: float = 2.0,
                  on_submitted: Callable[[int | None], None] | None = None) -> dict[str, Any]:
    """Generate the app, submit it to ``superlink`` with ``flwr run`` and wait for the result.

    While it waits, ``progress`` gets the lines saying what the run waits for (nodes connected, round; see
    :mod:`.progress`; ``waiting: ...`` every ``progress_every`` seconds while too few nodes are connected) and
    ``should_stop`` is asked every ``poll`` seconds; a stop (its reason), SIGTERM, Ctrl-C, a timeout or a failure
    stop the Flower run on the SuperLink and raise (:class:`RunStopped` for a stop). ``on_submitted`` gets the
    Flower run id as soon as ``flwr run`` answers.

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
    budget = timeout if timeout is not None else cfg.rounds * (cfg.round_timeout * 2 + 30) + 60
    control = ControlClient(superlink, insecure=insecure, root_certificates=root_certificates)
    with _sigterm_stops():
        submitted = submit_run(app, home)
        shown = Progress(rounds=cfg.rounds, min_nodes=cfg.min_nodes, superlink=superlink,
                         every=progress_every) if progress is not None else None
        watch = RunWatch(control, submitted.run_id, shown, progress or (lambda _: None), should_stop, poll=poll)
        try:
            if on_submitted is not None:
                on_submitted(submitted.run_id)
            doc = wait_for_run(out, budget, on_round, on_poll=watch)
        except BaseException:
            if submitted.run_id is not None and control.stop_run(submitted.run_id) and progress is not None:
                progress(f"stopped Flower run {submitted.run_id} on the SuperLink {superlink}")
            raise
        finally:
            control.close()
    from .server_app import AGGREGATE_FILE

    agg = out / AGGREGATE_FILE
    doc["aggregate"] = str(agg) if agg.exists() else None
    doc["run_id"] = submitted.run_id
    return doc


__all__ = ["SuperLink", "SuperLinkConfig", "FederatedError", "RunStopped", "RunEndedError", "ControlClient",
           "RunWatch", "write_app", "write_flwr_home", "submit_run", "wait_for_run", "read_rounds", "run_federated",
           "Submitted"]
