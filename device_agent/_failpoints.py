"""Crash-test hooks: ``EDGEFLEET_AGENT_FAILPOINT=name:N`` SIGKILLs the process at the N-th hit of ``name``.

The crash-consistency tests use them to kill an installing agent exactly between
two durable steps; unset (always, in production) a failpoint is one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "EDGEFLEET_AGENT_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
