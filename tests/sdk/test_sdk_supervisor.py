"""edgefleet.supervisor: the one supervisor of every child process (the demo's, a device's SuperNode, the
coordinator's SuperLink). Real processes, real process groups."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.supervisor import ChildProcess, pid_alive, stop_all


def _wait(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.02)


def test_exit_hook_is_called_once_for_a_child_that_dies_and_it_is_left_dead(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    done = threading.Event()
    child = ChildProcess(["/bin/sh", "-c", "echo starting; echo failing >&2; exit 7"], name="quick", restart=False,
                         log_path=tmp_path / "quick.log", poll_seconds=0.02,
                         on_exit=lambda c, code: (seen.append((c.name, code)), done.set()))
    child.start()
    assert done.wait(10)
    time.sleep(0.2)
    assert seen == [("quick", 7)] and not child.alive() and child.returncode == 7 and child.restarts == 0
    assert child.log_tail() == "starting\nfailing" and child.pid is None and child.last_pid is not None
    child.stop()


def test_a_stopped_child_does_not_call_its_exit_hook_and_its_group_is_gone(tmp_path: Path) -> None:
    seen: list[int] = []
    pidfile = tmp_path / "grandchild"
    # the child starts a grandchild in its group and waits: stop() must end both
    child = ChildProcess(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], name="parent",
                         restart=False, poll_seconds=0.02, on_exit=lambda c, code: seen.append(code))
    child.start()
    _wait(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    grandchild = int(pidfile.read_text())
    child.stop(timeout=5)
    _wait(lambda: not pid_alive(grandchild))
    assert seen == [] and not child.alive()


def test_stop_all_signals_every_group_first_then_waits_once(tmp_path: Path) -> None:
    """Three children that each take 1 s to exit on SIGTERM stop in about 1 s together, not 3 s."""
    script = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))\n" \
             "print('up', flush=True)\ntime.sleep(60)\n"
    kids = [ChildProcess([sys.executable, "-c", script], name=f"k{i}", restart=False,
                         log_path=tmp_path / f"k{i}.log").start() for i in range(3)]
    for k in kids:
        _wait(lambda k=k: "up" in k.log_tail())
    t0 = time.monotonic()
    stop_all(kids, timeout=10)
    elapsed = time.monotonic() - t0
    assert all(not k.alive() for k in kids)
    assert elapsed < 2.5, elapsed


def test_a_child_that_ignores_its_stop_signal_is_killed(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGINT, "
                          "signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)"], restart=False,
                         stop_signal=signal.SIGINT, log_path=tmp_path / "stubborn.log").start()
    _wait(lambda: "up" in child.log_tail())
    pid = child.pid
    assert pid is not None
    child.stop(timeout=0.5)
    assert child.pid is None and child.last_pid == pid
    _wait(lambda: not pid_alive(pid))


def test_a_command_that_cannot_start_is_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot start ghost"):
        ChildProcess([str(tmp_path / "no-such-binary")], name="ghost", log_path=tmp_path / "g.log").start()


def test_environment_and_working_directory_are_the_given_ones(tmp_path: Path) -> None:
    child = ChildProcess(["/bin/sh", "-c", "echo $ONLY_THIS; pwd; echo ${HOME:-nohome}"], restart=False,
                         env={"ONLY_THIS": "yes", "PATH": os.defpath}, cwd=tmp_path,
                         log_path=tmp_path / "env.log", poll_seconds=0.02).start()
    _wait(lambda: child.returncode is not None)
    assert child.log_tail().splitlines() == ["yes", str(tmp_path), "nohome"]
    child.stop()
