"""Stall re-requests back off with jitter (issue 16): the pure :class:`StallBackoff` and the device machine using it.

The 1,000-device run of ``benchmarks.fleet_ota`` re-requested 17,088 chunk indices: devices waiting their turn at
the coordinator (it serves ``max_transfers`` transfers at once and keeps the latest request of every other one in
line) asked again every 5 s. Here the real :class:`DeviceMachine` of 1,000 devices runs against a simulated
coordinator with that admission rule, on a simulated clock and a seeded random source.
"""

from __future__ import annotations

import random
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.cloud_sync.device import machine as M
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.transfer import StallBackoff, file_info
from edgefleet.errors import SyncError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.fleet_ota import SimChecks  # noqa: E402  (the benchmark's device that runs nothing yet)

DATA = bytes(range(256)) * 4  # 1,024 bytes: 16 chunks of 64
INFO = file_info(DATA, 64)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def machine(clock: Clock, rand: Any = lambda: 0.0, **kw: Any) -> M.DeviceMachine:
    return M.DeviceMachine(SimChecks(), max_bundle_bytes=1 << 20, window=4, stall_seconds=5.0, clock=clock, rand=rand,
                           **kw)


def start(m: M.DeviceMachine, job: str = "j1") -> list[Any]:
    out = m.handle(M.DesiredIn(P.Desired(job, "install", "dep1", "2", INFO)))
    return out + m.handle(M.Opened(frozenset()))


def chunk(i: int) -> M.ChunkIn:
    return M.ChunkIn(P.Chunk(INFO.file_id, i, DATA[i * 64:(i + 1) * 64]))


def asked(actions: list[Any]) -> list[list[int]]:
    return [a.request.wanted for a in actions if isinstance(a, M.RequestChunks)]


def ticks(m: M.DeviceMachine, clock: Clock, seconds: float, step: float = 0.5) -> list[tuple[float, list[int]]]:
    """Tick every ``step`` for ``seconds``; the re-requests, with the seconds since the ticking began."""
    t0, out = clock.t, []
    for _ in range(int(seconds / step)):
        clock.t += step
        out += [(clock.t - t0, w) for w in asked(m.handle(M.Tick()))]
    return out


# -- the policy -------------------------------------------------------------------------------------------------------
@given(st.floats(0.01, 100), st.floats(1, 10), st.floats(1, 4), st.floats(1, 1000), st.floats(0, 1),
       st.integers(0, 200), st.booleans(), st.floats(0, 1, exclude_max=True))
def test_the_wait_grows_is_capped_and_jitter_only_stretches_it(stall: float, first: float, factor: float,
                                                               cap: float, jitter: float, k: int, answered: bool,
                                                               draw: float) -> None:
    b = StallBackoff(stall=stall, unanswered=stall * first, factor=factor, cap=max(cap, stall), jitter=jitter)
    plain = min(b.cap, (b.stall if answered else b.unanswered) * factor ** k)
    d = b.delay(k, answered, draw)
    assert plain <= d <= plain * (1 + jitter) + 1e-9  # never sooner than the wait without jitter
    assert d <= b.cap * (1 + jitter) + 1e-9
    assert b.delay(k + 1, answered, draw) >= d  # another stall in a row never shortens the wait
    assert b.delay(k, False, draw) >= b.delay(k, True, draw)  # a transfer not yet answered is the more patient


def test_the_defaults_follow_stall_seconds_and_bad_settings_are_refused() -> None:
    b = StallBackoff.of(2.0)
    assert (b.stall, b.unanswered, b.cap) == (2.0, 12.0, 120.0)
    assert [b.delay(k, True, 0.0) for k in range(8)] == [2, 4, 8, 16, 32, 64, 120, 120]
    assert b.delay(0, True, 0.999999) == pytest.approx(3.0, abs=1e-5)
    assert b.delay(10**6, True, 0.0) == b.delay(10**6, False, 0.0) == 120  # a device stalled for ever: the cap
    for bad in ({"stall": 0}, {"factor": 0.5}, {"jitter": 2}, {"stall": 10, "cap": 5}):
        with pytest.raises(SyncError, match="bad stall backoff"):
            StallBackoff(**bad)


# -- the machine ------------------------------------------------------------------------------------------------------
def test_stalls_in_a_row_wait_twice_as_long_each_time_and_a_chunk_resets_the_wait() -> None:
    clock = Clock()
    m = machine(clock)
    start(m)
    m.handle(chunk(0))  # chunks flow, then stop
    got = ticks(m, clock, 200)
    assert [t for t, _ in got] == [5, 15, 35, 75, 155]  # 5 s, then 10, 20, 40, 80 s apart
    assert all(w == [1, 2, 3] for _, w in got)  # each time the chunks still missing of the window
    m.handle(chunk(1))  # progress: the next stall waits stall_seconds again
    assert ticks(m, clock, 5)[0][0] == 5


def test_a_transfer_waiting_its_turn_does_not_keep_asking() -> None:
    """Issue 16's 17,088 re-requested chunks: a request the coordinator has not answered was repeated every 5 s
    (twelve times in a minute of waiting); now the first repeat comes after 30 s, the next a minute later."""
    clock = Clock()
    m = machine(clock)
    assert asked(start(m)) == [[0, 1, 2, 3]]
    got = ticks(m, clock, 120)
    assert [t for t, _ in got] == [30, 90]
    m.handle(chunk(0))  # its turn came: from now on a stall is noticed after stall_seconds
    assert ticks(m, clock, 5)[0] == (5, [1, 2, 3])


def test_a_reconnect_gives_in_flight_chunks_the_wait_before_asking_again() -> None:
    clock = Clock()
    m = machine(clock)
    start(m)
    m.handle(chunk(0))
    clock.t += 4
    m.handle(M.Connected())
    assert ticks(m, clock, 4.5) == [] and ticks(m, clock, 0.5) == [(0.5, [1, 2, 3])]


@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999])
def test_jitter_spreads_the_repeats_of_devices_that_stalled_together(draw: float) -> None:
    clock = Clock()
    m = machine(clock, rand=lambda: draw)
    start(m)
    m.handle(chunk(0))
    got = ticks(m, clock, 10, step=0.05)
    assert len(got) == 1 and 5.0 * (1 + 0.5 * draw) - 0.05 < got[0][0] < 5.0 * (1 + 0.5 * draw) + 0.05 + 1e-9


# -- a fleet waiting its turn -----------------------------------------------------------------------------------------
def fleet(devices: int, backoff: StallBackoff | None, max_transfers: int = 64, per_step: int = 50,
          step: float = 0.05) -> dict[str, int]:
    """``devices`` real device machines against a coordinator that serves ``max_transfers`` transfers at once and
    ``per_step`` chunks per ``step`` seconds, keeping the latest request of every waiting transfer in its place in
    line (as ``Coordinator._admit``); each device ticks every 0.5 s. Returns chunks sent and re-requested."""
    clock = Clock()
    rng = random.Random(16)
    ms = [M.DeviceMachine(SimChecks(), max_bundle_bytes=1 << 20, window=16, stall_seconds=5.0, clock=clock,
                          rand=rng.random, backoff=backoff) for _ in range(devices)]
    serving: dict[int, set[int]] = {}
    waiting: dict[int, list[int]] = {}  # dict order: a repeated request keeps its place
    wire: deque[tuple[int, int]] = deque()
    sent = 0
    done = [False] * devices

    def request(d: int, wanted: list[int]) -> None:
        if d not in serving:
            if len(serving) >= max_transfers or waiting:
                waiting[d] = wanted
                return
            serving[d] = set()
        for i in wanted:
            if i not in serving[d]:
                serving[d].add(i)
                wire.append((d, i))
        if len(serving[d]) == INFO.chunks:  # every chunk on its way: the slot goes to the next in line
            del serving[d]
            while waiting and len(serving) < max_transfers:
                nxt = next(iter(waiting))
                request(nxt, waiting.pop(nxt))

    def run(d: int, event: Any) -> None:
        todo = deque(ms[d].handle(event))
        while todo:
            act = todo.popleft()
            answer: Any = None
            if isinstance(act, M.RequestChunks):
                request(d, act.request.wanted)
            elif isinstance(act, M.OpenFile):
                answer = M.Opened(frozenset())
            elif isinstance(act, M.CheckFile):
                answer = M.FileChecked(True)
            elif isinstance(act, M.PrepareInstall):
                answer = M.Prepared(Path("memory"))
            elif isinstance(act, M.Install):
                done[d] = True
            if answer is not None:
                todo.extendleft(reversed(ms[d].handle(answer)))

    for d in range(devices):
        run(d, M.DesiredIn(P.Desired("j1", "install", "dep1", "2", INFO)))
    n = 0
    while not all(done) and n < 100_000:
        n += 1
        clock.t += step
        for _ in range(min(per_step, len(wire))):
            d, i = wire.popleft()
            sent += 1
            run(d, chunk(i))
        if n % round(0.5 / step) == 0:
            for d in range(devices):
                if not done[d]:
                    run(d, M.Tick())
    assert all(done)
    return {"sent": sent, "rerequested": sum(m.stats["rerequested"] for m in ms), "seconds": round(n * step)}


def test_a_thousand_devices_waiting_their_turn_re_request_under_one_percent_of_the_chunks() -> None:
    fixed = fleet(1000, StallBackoff(stall=5.0, unanswered=5.0, factor=1.0, jitter=0.0))  # the fixed 5 s timer
    assert fixed["rerequested"] > 0.5 * fixed["sent"]  # the simulation shows issue 16's waste
    backed_off = fleet(1000, None)  # the default: StallBackoff.of(stall_seconds)
    assert backed_off["sent"] == 1000 * INFO.chunks and backed_off["seconds"] <= fixed["seconds"]
    assert backed_off["rerequested"] <= 0.01 * backed_off["sent"]
