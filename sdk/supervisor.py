"""One supervisor for every child process edgefleet starts (``edgefleet.supervisor``).

:class:`ChildProcess` starts a command in its own process group (so stopping it also stops whatever it
started: a SuperNode's ``flower-superexec`` and ClientApps, a coordinator's federated runs), writes its
output to a log file, and watches it on a thread:

- with ``restart=True`` (a device's ``flower-supernode``, the coordinator's ``flower-superlink``) it is
  started again when it dies, backing off exponentially (``backoff`` doubling up to ``max_backoff``); a
  child that ran at least ``healthy_seconds`` starts the count afresh, so only ``max_restarts``
  *consecutive* quick failures end supervision (``max_restarts=0``: never give up);
- with ``restart=False`` (the demo's broker, coordinator and device agents) it is left dead;
- either way ``on_exit(child, returncode)`` is called on every exit that ``stop()`` did not ask for.

``stop()`` sends ``stop_signal`` (SIGTERM unless given) to the group, waits, then SIGKILLs the group.
:func:`stop_all` stops several at once (signals first, then one shared wait).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence, TypeVar

from .errors import ConfigError

ExitHook = Callable[["ChildProcess", int], None]
_Child = TypeVar("_Child", bound="ChildProcess")  # start() returns the subclass it is called on


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (a child started with ``start_new_session``); gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (Linux /proc; a zombie holds nothing: its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class ChildProcess:
    """A supervised child in its own process group (see the module's documentation)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "child",
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        restart: bool = True,
        backoff: float = 0.5,
        max_backoff: float | None = None,
        max_restarts: int = 20,
        healthy_seconds: float = 60.0,
        poll_seconds: float = 0.2,
        stop_signal: int = signal.SIGTERM,
        on_exit: ExitHook | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.env = dict(env) if env is not None else dict(os.environ)
        self.log_path = Path(log_path) if log_path else None
        self.cwd = str(cwd) if cwd is not None else None
        self.restart_enabled = restart
        self.backoff = backoff
        self.max_backoff = max_backoff if max_backoff is not None else backoff * 16
        self.max_restarts = max_restarts
        self.healthy_seconds = healthy_seconds
        self.poll_seconds = poll_seconds
        self.stop_signal = stop_signal
        self.on_exit = on_exit
        self.restarts = 0  # all restarts so far
        self.failures = 0  # consecutive quick exits
        self._started_at = 0.0
        self.exit_codes: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_pid: int | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------
    def start(self: _Child) -> _Child:
        """Start the command (``ConfigError`` naming it when it cannot be started) and its watcher."""
        with self._lock:
            if self._thread is not None:
                return self
            self._stopping.clear()
            self._spawn()
            self._thread = threading.Thread(target=self._watch, name=f"edgefleet-{self.name}", daemon=True)
            self._thread.start()
        return self

    def _spawn(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if self._log is None:
                self._log = open(self.log_path, "ab")
            out: int | IO[bytes] = self._log
        else:
            out = subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.cwd)
        except OSError as exc:
            self._close_log()
            raise ConfigError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror or exc}") from None
        self._last_pid = self._proc.pid
        self._started_at = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            with self._lock:
                proc = self._proc
                if proc is None or proc.poll() is None:
                    continue
                code = int(proc.returncode)
                self.exit_codes.append(code)
                signal_group(proc.pid, signal.SIGKILL)  # whatever it started in its group
                if time.monotonic() - self._started_at >= self.healthy_seconds:
                    self.failures = 0
                give_up = not self.restart_enabled or 0 < self.max_restarts <= self.failures
                if give_up:
                    self._proc = None
                delay = min(self.backoff * 2 ** min(self.failures, 20), self.max_backoff)
                self.failures += 1
            self._exited(code)
            if give_up or self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                try:
                    self._spawn()
                except ConfigError:  # the binary went away: nothing left to supervise
                    self._proc = None
                    return

    def _exited(self, code: int) -> None:
        hook = self.on_exit
        if hook is not None and not self._stopping.is_set():
            try:
                hook(self, code)
            except Exception:  # a hook must never end the supervision
                pass

    def signal(self, sig: int | None = None) -> None:
        """Send ``sig`` (default: the stop signal) to the child's whole group, without waiting."""
        proc = self._proc
        if proc is not None:
            signal_group(proc.pid, self.stop_signal if sig is None else sig)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and end the child's whole process group (the stop signal, then SIGKILL)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            proc = self._proc
            self._proc = None
            self._thread = None
        if proc is not None:
            signal_group(proc.pid, self.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Crash the child now (SIGKILL to its group), as a power cut would; supervision goes on."""
        self.signal(signal.SIGKILL)

    # -- state ---------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The child's pid while it is supervised (None once stopped or given up: see :attr:`last_pid`)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def last_pid(self) -> int | None:
        """The pid of the last process started (for messages about a child that is gone)."""
        return self._last_pid

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def alive(self) -> bool:
        return self.running

    @property
    def returncode(self) -> int | None:
        """The last exit's code (None while the first run goes on)."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            return int(proc.returncode)
        return self.exit_codes[-1] if self.exit_codes else None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(children: Sequence[ChildProcess], timeout: float = 10.0) -> None:
    """Stop several children at once: each group gets its stop signal (in the order given), then one shared
    wait of ``timeout`` seconds, then SIGKILL for what is left."""
    for c in children:
        c._stopping.set()
        c.signal()
    deadline = time.monotonic() + timeout
    for c in children:
        proc = c._proc
        if proc is not None:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for c in children:
        c.stop(timeout=0.1)


__all__ = ["ChildProcess", "ExitHook", "pid_alive", "signal_group", "stop_all"]
