"""Crash consistency: kill -9 an installing agent at >= 100 random instants and at every failpoint.

After each kill the store must name a complete, verified, loadable active version
that is either the one active before the interrupted operation or its target;
never a mix, and never nothing once something was installed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.canonical import sha256_bytes
from edgefleet.device_agent.store import Store

HERE = Path(__file__).resolve().parent
POINTS = (
    "stage.copied", "stage.synced", "stage.renamed", "pointer.tmp_written", "pointer.replaced",
    "activate.written", "gc.trashed",
)
RANDOM_KILLS = 110


def _expected_outputs(bundles: dict[str, Path], x: np.ndarray) -> dict[str, np.ndarray]:
    from edgefleet.model import load

    out = {}
    for b in bundles.values():
        with load(b) as m:
            out[sha256_bytes((b / "manifest.json").read_bytes())] = m.predict(x)
    return out


class Tracker:
    """Follows the child's log to know which versions may legitimately be active."""

    def __init__(self) -> None:
        self.acceptable: set[str] = set()
        self.inflight: str | None = None
        self.inflight_from: set[str] = set()  # what was active when the interrupted operation began
        self.installed_once = False
        self.offset = 0

    def read(self, log: Path) -> list[str]:
        if not log.exists():
            return []
        data = log.read_bytes()
        new, self.offset = data[self.offset :], len(data)
        lines = new.decode().splitlines()
        for line in lines:
            kind, *rest = line.split()
            assert kind not in ("error", "failed"), line
            if kind == "ready":
                self.acceptable = {rest[0]} if rest[0] != "-" else set()
                self.inflight, self.inflight_from = None, set()
            elif kind == "begin":
                self.inflight, self.inflight_from = rest[0], set(self.acceptable)
            elif kind == "ok":
                self.acceptable = {rest[0]}
                self.inflight, self.inflight_from = None, set()
                self.installed_once = True
        return lines


def _check(state: Path, pub: Path, tracker: Tracker, expected: dict[str, np.ndarray], x: np.ndarray) -> str | None:
    from edgefleet.model import load

    store = Store(state, trusted_keys=[pub])
    st = store.state()
    if tracker.installed_once or tracker.acceptable:
        assert st.active is not None, "the store lost its active version"
    if st.active is None:
        return None
    # old or new: what was active, the target of the interrupted operation, or (after a resumed job
    # rolled back, e.g. on a second restart during probation) what was active before that operation
    allowed = tracker.acceptable | tracker.inflight_from | ({tracker.inflight} if tracker.inflight else set())
    assert st.active.id in allowed, (st.active.version, allowed)
    for entry in (st.active, st.previous):
        if entry is not None:
            store.verify(entry.id)  # complete, hashes and signature good, manifest matches its id
    with load(store.object_path(st.active.id), trusted_keys=[pub]) as m:
        np.testing.assert_allclose(m.predict(x), expected[st.active.id], rtol=1e-6)
    tracker.acceptable = {st.active.id}
    return st.active.id


def test_kill9_at_random_instants_and_failpoints(tmp_path: Path, keys: dict[str, Any], bundles: dict[str, Path]) -> None:
    state, log = tmp_path / "state", tmp_path / "log"
    priv = Path(str(keys["pub"])[:-4] + ".key")
    x = np.ones((1, 4), np.float32)
    expected = _expected_outputs(bundles, x)
    server = subprocess.Popen(
        [sys.executable, str(HERE / "agent_crash_worker.py"), str(state), str(keys["pub"]), str(priv), str(log),
         *[str(b) for b in bundles.values()]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        assert server.stdout.readline().strip() == "hello"
        rng = random.Random(20240601)
        schedule = [(f"{p}:{n}", 0.0) for p in POINTS for n in (1, 2, 3)]
        schedule += [(f"job.saved:{n}", 0.0) for n in range(1, 9)]  # between every two job transitions
        schedule += [("-", rng.uniform(0.0, 0.25)) for _ in range(RANDOM_KILLS)]
        rng.shuffle(schedule)
        tracker = Tracker()
        kills = {"random": 0, "failpoint": 0}
        seen_versions: set[str] = set()
        for i, (point, delay) in enumerate(schedule):
            server.stdin.write(f"run {point} {i}\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            if point == "-":
                time.sleep(delay)
                os.kill(pid, signal.SIGKILL)
            server.stdin.write("wait 5\n")
            server.stdin.flush()
            _, status, how = server.stdout.readline().split()
            status_i = int(status)
            assert os.WIFSIGNALED(status_i) and os.WTERMSIG(status_i) == signal.SIGKILL, (point, status_i, tracker.read(log))
            kills["random" if point == "-" or how == "timeout" else "failpoint"] += 1
            tracker.read(log)
            active = _check(state, keys["pub"], tracker, expected, x)
            if active:
                seen_versions.add(active)
        print("kills", kills, "active versions seen", len(seen_versions))
        assert sum(kills.values()) >= 100
        assert kills["failpoint"] >= len(POINTS) * 2, kills
        assert len(seen_versions) >= 2, "the kills should land on different versions"
    finally:
        if server.poll() is None:
            server.stdin.write("quit\n")
            server.stdin.flush()
            server.wait(timeout=10)

    # A normal start afterwards recovers: leftovers cleared, only active and previous kept.
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, UpdateConfig

    cfg = AgentConfig(state_dir=str(state), hardware_tags=("test-board",), trusted_keys=(str(keys["pub"]),),
                      update=UpdateConfig(probation_seconds=0.0))
    with Agent(cfg, monitor=False) as agent:
        st = agent.store.state()
        assert {p.name for p in agent.store.objects.iterdir()} == st.kept_ids
        assert list(agent.store.staging.iterdir()) == [] and list(agent.store.trash.iterdir()) == []
        assert agent.predict(x).shape == (1, 3)
        job = agent.current_job
        assert job is None or job.status.terminal
        # interrupted installs were resumed to an end, never failed for want of their staged files
        failed = [(j.reason, j.message) for j in agent.jobs.load_all() if j.status.value == "FAILED"]
        assert failed == [], failed
