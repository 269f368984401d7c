"""Hot swap under load: threads predict continuously while versions are installed and rolled back."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.canonical import sha256_bytes
from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.orders import make_rollback_order
from edgefleet.device_agent.updates import JobStatus


def test_zero_failed_predictions_during_installs_and_rollbacks(agent_config: Any, bundles: dict[str, Path], keys: dict) -> None:
    from edgefleet.model import load

    x = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
    expected = []
    for b in bundles.values():
        with load(b) as m:
            expected.append(m.predict(x))
    agent = Agent(agent_config(), monitor=True, tick_seconds=0.05)
    assert agent.install(bundles["1"]).status is JobStatus.SUCCEEDED
    stop = threading.Event()
    failures: list[BaseException] = []
    wrong: list[Any] = []
    counts = [0] * 4

    def hammer(i: int) -> None:
        while not stop.is_set():
            try:
                y = agent.predict(x)
            except BaseException as exc:  # any failure is a test failure
                failures.append(exc)
                continue
            if not any(np.allclose(y, e, rtol=1e-6) for e in expected):
                wrong.append(y)
            counts[i] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    swaps = 0
    try:
        for _ in range(3):
            orders = {v: make_rollback_order(keys["priv"], b) for v, b in bundles.items()}  # each is used once
            for v in ("2", "3", "4"):
                job = agent.install(bundles[v], rollback_order=orders[v])
                assert job.status is JobStatus.SUCCEEDED, job.message
                swaps += 1
                agent.rollback()
                swaps += 1
                agent.rollback()
                swaps += 1
            job = agent.install(bundles["1"], rollback_order=orders["1"])
            assert job.status is JobStatus.SUCCEEDED
            swaps += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
        agent.close()
    assert failures == []
    assert wrong == []
    assert swaps >= 30
    assert sum(counts) > 200
    st = agent.store.state()
    assert st.active is not None and sha256_bytes((bundles["1"] / "manifest.json").read_bytes()) == st.active.id


def test_predict_on_a_closed_agent_is_a_named_error_not_a_busy_loop(agent_config: Any, bundles: dict[str, Path]) -> None:
    """A caller still predicting when the agent closes gets a StoreError at once: the closed version stayed the
    one served, and predict retried it for ever (a thread spinning at full CPU after the agent was gone)."""
    import pytest

    from edgefleet.errors import StoreError

    agent = Agent(agent_config(), monitor=False)
    assert agent.install(bundles["1"]).status is JobStatus.SUCCEEDED
    x = np.zeros((1, 4), np.float32)
    agent.predict(x)
    agent.close()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            agent.predict(x)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "predict on a closed agent did not return"
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError) and "closed" in str(outcome[0])
    with pytest.raises(StoreError, match="closed"):
        agent.predict(x)
