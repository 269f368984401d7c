"""What ``edgefleet federated run`` says while it waits: pure, no I/O.

The run's driver (:func:`~.runner.wait_for_run` with :class:`~.runner.RunWatch`) polls the SuperLink (its online
SuperNodes, the Flower run's status) and the run's ``rounds.json``, and feeds each :class:`Observation` to
:meth:`Progress.observe`, which answers the lines to print:

- fewer nodes online than the run needs: ``waiting: 0 of 2 nodes connected`` at once, whenever the number
  changes, and again every ``every`` seconds - a run with no device in sight says so instead of staying silent;
- the SuperLink not answering: ``waiting: SuperLink ADDRESS not answering``, on the same schedule;
- enough nodes: a line when the round, the nodes online or the Flower run's status changes, and one every
  ``heartbeat`` seconds while a round goes on (``round 2 of 3 in progress: 2 nodes connected, 40s``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """One poll: ``now`` (monotonic seconds), ``nodes`` online on the SuperLink (None: it did not answer),
    ``rounds_done`` (rounds the ServerApp finished), ``flower_status`` (the Flower run's ``status[:sub_status]``,
    None when unknown)."""

    now: float
    nodes: int | None
    rounds_done: int
    flower_status: str | None = None


def _nodes(n: int) -> str:
    return f"{n} node{'' if n == 1 else 's'}"


class Progress:
    """The lines a waiting run prints (see the module's documentation)."""

    def __init__(self, *, rounds: int, min_nodes: int, superlink: str, every: float = 5.0,
                 heartbeat: float = 30.0) -> None:
        self.rounds = rounds
        self.min_nodes = min_nodes
        self.superlink = superlink
        self.every = every
        self.heartbeat = heartbeat
        self.started: float | None = None
        self._last: tuple[int | None, int, str | None, bool] | None = None  # nodes, rounds done, status, waiting
        self._said = float("-inf")  # when the latest line was printed
        self._round_started: float | None = None

    def observe(self, o: Observation) -> list[str]:
        if self.started is None:
            self.started = o.now
        if self._last is None or o.rounds_done != self._last[1]:
            self._round_started = o.now
        waiting = o.nodes is None or o.nodes < self.min_nodes
        state = (o.nodes, o.rounds_done, o.flower_status, waiting)
        changed = state != self._last
        self._last = state
        due = o.now - self._said >= (self.every if waiting else self.heartbeat)
        if not (changed or due):
            return []
        self._said = o.now
        return [self.line(o, waiting)]

    def line(self, o: Observation, waiting: bool) -> str:
        elapsed = o.now - (self.started if self.started is not None else o.now)
        if o.nodes is None:
            return f"waiting: SuperLink {self.superlink} not answering ({elapsed:.0f}s)"
        current = min(o.rounds_done + 1, self.rounds)
        if o.rounds_done >= self.rounds:
            where = f"{self.rounds} of {self.rounds} rounds done"
        else:
            where = f"round {current} of {self.rounds}"
        run = f", Flower run {o.flower_status}" if o.flower_status else ""
        if waiting:
            return (f"waiting: {o.nodes} of {self.min_nodes} nodes connected "
                    f"({where}{run}; {elapsed:.0f}s)")
        in_round = o.now - (self._round_started if self._round_started is not None else o.now)
        verb = "" if o.rounds_done >= self.rounds else " in progress"
        return f"{where}{verb}: {_nodes(o.nodes)} connected{run}, {in_round:.0f}s"


__all__ = ["Observation", "Progress"]
