"""Fork server for the crash-consistency test.

Imports everything once, then for each ``run FAILPOINT SEED`` line on stdin forks a
child that opens an agent on the state dir (resuming whatever was interrupted) and
installs/rolls back versions in a loop, logging to LOG. The test SIGKILLs the child
at a random instant (or the failpoint kills it) and sends ``wait`` to reap it.

usage: agent_crash_worker.py STATE_DIR PUBKEY PRIVKEY LOG BUNDLE...
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any, Callable

FRESH: Callable[[str], Any]


def child(state: str, pub: str, orders: list[tuple[str, dict]], log: str, seed: int) -> None:
    from edgefleet.device_agent.agent import Agent
    from edgefleet.device_agent.config import AgentConfig, UpdateConfig

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def say(*words: str) -> None:
        os.write(fd, (" ".join(words) + "\n").encode())

    rng = random.Random(seed)
    cfg = AgentConfig(state_dir=state, hardware_tags=("test-board",), trusted_keys=(pub,),
                      update=UpdateConfig(probation_seconds=0.0), )
    agent = Agent(cfg, monitor=False)
    st = agent.store.state()
    say("ready", st.active.id if st.active else "-", st.previous.id if st.previous else "-")
    while True:
        st = agent.store.state()
        if st.previous is not None and rng.random() < 0.25:
            say("begin", st.previous.id)
            agent.rollback()
        else:
            path, order = orders[rng.randrange(len(orders))]
            order = FRESH(path)  # an order is used once (issue 12): each install gets its own
            say("begin", order["order"]["manifest_sha256"])
            job = agent.install(path, rollback_order=order)
            if job.status.value != "SUCCEEDED":
                say("failed", job.reason, job.message.replace("\n", " "))
                os._exit(3)
        st = agent.store.state()
        assert st.active is not None
        say("ok", st.active.id, st.previous.id if st.previous else "-")


def main() -> None:
    state, pub, priv, log, *bundles = sys.argv[1:]
    import edgefleet.device_agent.agent  # noqa: F401  (import everything before forking)
    import edgefleet.model  # noqa: F401
    from edgefleet.device_agent.orders import make_rollback_order
    from edgefleet.keys import load_private_key

    global FRESH
    key = load_private_key(priv)
    FRESH = lambda b: make_rollback_order(key, b)  # noqa: E731
    orders = [(b, make_rollback_order(key, b)) for b in bundles]
    print("hello", flush=True)
    pid = 0
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            point, seed = cmd[1], int(cmd[2])
            pid = os.fork()
            if pid == 0:
                try:
                    if point != "-":
                        os.environ["EDGEFLEET_AGENT_FAILPOINT"] = point
                    sys.stdin.close()
                    child(state, pub, orders, log, seed)
                except BaseException as exc:  # report, then die without running parent cleanup
                    with open(log, "a") as fh:
                        fh.write("error " + json.dumps(repr(exc)) + "\n")
                    os._exit(4)
                os._exit(0)
            print("pid", pid, flush=True)
        elif cmd[0] == "wait":  # wait TIMEOUT: reap the child, killing it if it outlives TIMEOUT
            deadline = time.monotonic() + float(cmd[1])
            how = "self"
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    how = "timeout"
                    break
                time.sleep(0.005)
            print("reaped", status, how, flush=True)
        elif cmd[0] == "quit":
            return


if __name__ == "__main__":
    main()
