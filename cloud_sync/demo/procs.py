"""Processes of the demo: prerequisites, Mosquitto on a free loopback port, children, cleanup.

Every child starts in its own session (its own process group), so Ctrl-C in the terminal
reaches only the demo, which then stops the children in order: SIGTERM to the whole group,
SIGKILL after a grace period. Every child (and everything it starts: SuperNodes,
``flower-superexec``, ClientApps) inherits ``EDGEFLEET_DEMO_RUN=<workdir>`` in its
environment; :func:`sweep` finds whatever is still alive with that mark and ends it by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence, TypeAlias

from edgefleet.errors import ConfigError, SyncError
from edgefleet.supervisor import ChildProcess, pid_alive, stop_all

from ..broker import free_port, local_config, port_open

MARK = "EDGEFLEET_DEMO_RUN"
FLOWER_TOOLS = ("flower-superlink", "flower-supernode", "flwr")

def check_flower_tools() -> dict[str, str]:
    """Paths of the Flower executables the federated round needs, or a ConfigError saying how to get them."""
    from edgefleet.device_agent.flower_node import find_tool

    found: dict[str, str] = {}
    missing = []
    for name in FLOWER_TOOLS:
        try:
            found[name] = find_tool(name)
        except ConfigError:
            missing.append(name)
    if missing:
        raise ConfigError(f"{', '.join(missing)} not found: the federated round needs Flower; install the federated "
                          "extra: pip install 'edgefleet[federated]' (flwr 1.41)")
    return found


def check_modules(modules: Sequence[tuple[str, str]]) -> None:
    """Each (module, extra) must be importable; otherwise name the extra to install."""
    import importlib.util

    missing = [(m, extra) for m, extra in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({e for _, e in missing})
        raise ConfigError(f"the demo needs {', '.join(m for m, _ in missing)}: pip install "
                          f"'edgefleet[{','.join(extras)}]'")


#: one of the demo's children (a broker, the coordinator, a device agent): never restarted
Child: TypeAlias = ChildProcess


class Children:
    """The demo's child processes, each in its own process group, stopped newest first."""

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir = workdir
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.env = dict(os.environ)
        self.env[MARK] = str(workdir)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"})
        bindir = str(Path(sys.executable).parent)  # Flower starts flower-superexec by name
        self.env["PATH"] = bindir + os.pathsep + self.env.get("PATH", "")

    def spawn(self, name: str, argv: Sequence[str], extra_env: Mapping[str, str] | None = None,
              stop_signal: int = signal.SIGTERM) -> Child:
        """Start ``argv`` in its own process group, its output in ``LOG_DIR/NAME.log``; never restarted."""
        env = dict(self.env)
        if extra_env:
            env.update(extra_env)
        child = ChildProcess(argv, name=name, env=env, log_path=self.log_dir / f"{name}.log", cwd=self.workdir,
                             restart=False, stop_signal=stop_signal).start()
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        child.stop(timeout)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Signal every group at once (newest first; SIGTERM or the child's own stop signal), then wait,
        then SIGKILL what is left."""
        stop_all(list(reversed(self.children)), timeout)
        self.children = []


def marked_pids(mark_value: str, exclude: Sequence[int] = ()) -> list[int]:
    """Pids of live processes whose environment carries ``EDGEFLEET_DEMO_RUN=<mark_value>`` (Linux /proc)."""
    needle = f"{MARK}={mark_value}".encode()
    out: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_alive(pid):
            out.append(pid)
    return out


def describe(pid: int) -> str:
    """``pid (command line)`` for messages."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid} ({cmd[:120]})"


def sweep(mark_value: str, timeout: float = 5.0) -> list[str]:
    """End every live process carrying the demo's mark (ours by construction); returns what it ended."""
    pids = marked_pids(mark_value, exclude=(os.getpid(),))
    ended = [describe(p) for p in pids]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and marked_pids(mark_value, exclude=(os.getpid(),)):
            time.sleep(0.1)
        if not marked_pids(mark_value, exclude=(os.getpid(),)):
            break
    return ended


WATCH_ENV = "EDGEFLEET_DEMO_WATCH"


def start_watchdog(mark_value: str) -> subprocess.Popen[bytes]:
    """A detached process that sweeps the demo's processes if the demo dies without cleaning up (``kill -9``).

    The demo's children live in their own process groups, so nothing else would end them. The watchdog carries
    the mark under another name (so it never sweeps itself) and polls the demo's pid.
    """
    env = {k: v for k, v in os.environ.items() if k != MARK}
    env[WATCH_ENV] = mark_value
    return subprocess.Popen([sys.executable, "-m", "edgefleet.cloud_sync.demo.procs", "watch", str(os.getpid())],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(parent: int, mark_value: str, poll: float = 0.5) -> None:
    while pid_alive(parent):
        time.sleep(poll)
    sweep(mark_value)


# -- Mosquitto ----------------------------------------------------------------------------------------------
def start_mosquitto(children: Children, binary: str, root: Path, attempts: int = 3) -> tuple[Child, str]:
    """Mosquitto on a free loopback port (another port if the one picked was taken meanwhile)."""
    last = ""
    for attempt in range(attempts):
        port = free_port()
        conf = local_config(root, port).conf
        child = children.spawn(f"mosquitto{'-' + str(attempt) if attempt else ''}", [binary, "-c", str(conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and child.alive():
            if port_open("127.0.0.1", port):
                return child, f"mqtt://127.0.0.1:{port}"
            time.sleep(0.05)
        log = (root / "mosquitto.log")
        last = (log.read_text(errors="replace") if log.exists() else "") + child.log_tail()
        children.stop(child)
        if "in use" not in last.lower():
            break
    raise SyncError(f"mosquitto ({binary}) did not start on a loopback port: {last.strip()[-600:] or 'no output'}")


def check_broker(url: str, timeout: float = 5.0) -> None:
    """A broker given with --broker must answer MQTT there; otherwise say what to do."""
    from edgefleet.cloud_sync.transport import MqttConfig, MqttTransport

    host, port, _ = MqttConfig(url=url).host_port
    if not port_open(host, port, timeout=1.0):
        raise SyncError(f"nothing listens at {url} (--broker): start a broker there (e.g. mosquitto -p {port}), "
                        "or leave out --broker and the demo starts its own on a free loopback port")
    probe = MqttTransport(MqttConfig(url=url, client_id=f"edgefleet-demo-probe-{os.getpid()}", clean_start=True,
                                     session_expiry=0))
    try:
        probe.connect(timeout=timeout)
    except SyncError:
        raise SyncError(f"{host}:{port} accepts connections but did not answer as an MQTT 5 broker within {timeout:.0f}s "
                        "(--broker): is the port used by something else?") from None
    finally:
        probe.close()


__all__ = ["Children", "Child", "check_flower_tools", "check_modules", "start_mosquitto", "check_broker", "sweep",
           "marked_pids", "MARK", "start_watchdog"]


if __name__ == "__main__":  # python -m edgefleet.cloud_sync.demo.procs watch PID (the mark in EDGEFLEET_DEMO_WATCH)
    if len(sys.argv) == 3 and sys.argv[1] == "watch" and os.environ.get(WATCH_ENV):
        watch(int(sys.argv[2]), os.environ[WATCH_ENV])
