"""The device side's decisions as a machine (issue 14): ``DeviceMachine.handle(event) -> actions``, tested without
threads, brokers or files: duplicates, replayed job ids, supersede, cancel during install, rollback refusals."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edgefleet.cloud_sync.device import machine as M
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.orders import OrderRefused, RollbackOrder
from edgefleet.cloud_sync.wire.transfer import file_info
from edgefleet.errors import UpdateRejectedError

DATA = bytes(range(256)) * 40  # 10240 bytes: 10 chunks of 1024
INFO = file_info(DATA, 1024)


class FakeDevice:
    """The machine's view of a device, set by each test."""

    def __init__(self) -> None:
        self.active = "1"
        self.previous: str | None = "0"
        self.base: str | None = None
        self.refuse: UpdateRejectedError | None = None
        self.order: RollbackOrder | None = None
        self.order_refused: OrderRefused | None = None

    def active_version(self) -> str:
        return self.active

    def previous_version(self) -> str | None:
        return self.previous

    def delta_base(self) -> str | None:
        return self.base

    def check_before_download(self, desired: P.Desired) -> Path | None:
        if self.refuse is not None:
            raise self.refuse
        return None

    def check_order(self, desired: P.Desired) -> tuple[RollbackOrder | None, bool]:
        if self.order_refused is not None:
            raise self.order_refused
        return self.order, self.order is not None


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def machine(dev: FakeDevice | None = None, state: dict[str, Any] | None = None, **kw: Any) -> M.DeviceMachine:
    return M.DeviceMachine(dev or FakeDevice(), state=state, max_bundle_bytes=kw.pop("max_bundle_bytes", 1 << 20),
                           window=kw.pop("window", 4), **kw)


def install(job: str, version: str = "2", info: P.FileInfo = INFO, **kw: Any) -> P.Desired:
    return P.Desired(job, "install", "dep1", version, info, **kw)


def reports(actions: list[Any]) -> list[tuple[str, str, str]]:
    return [(a.update.job_id, a.update.status, a.update.reason) for a in actions if isinstance(a, M.Report)]


def of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def download(m: M.DeviceMachine, job: str) -> list[Any]:
    """Start ``job`` and answer OpenFile with an empty file; returns every action."""
    out = m.handle(M.DesiredIn(install(job)))
    assert of(out, M.OpenFile)
    return out + m.handle(M.Opened(frozenset()))


def receive_all(m: M.DeviceMachine, data: bytes = DATA, info: P.FileInfo = INFO) -> list[Any]:
    out: list[Any] = []
    for i in range(info.chunks):
        out += m.handle(M.ChunkIn(P.Chunk(info.file_id, i, data[i * info.chunk_size:(i + 1) * info.chunk_size])))
    return out


def test_a_whole_install_from_desired_to_success() -> None:
    m = machine()
    out = download(m, "j1")
    assert reports(out) == [("j1", "DOWNLOADING", "")]
    assert of(out, M.RequestChunks)[0].request.wanted == [0, 1, 2, 3]  # the window
    out = receive_all(m)
    assert len(of(out, M.StoreChunk)) == 10 and of(out, M.CheckFile)
    out = m.handle(M.FileChecked(True))
    assert out == [M.PrepareInstall(INFO, False)]
    out = m.handle(M.Prepared(Path("/x/incoming.efb")))
    assert reports(out) == [("j1", "IN_PROGRESS", "")] and of(out, M.Install) == [M.Install(Path("/x/incoming.efb"), "j1")]
    out = m.handle(M.AgentJob("j1", "SUCCEEDED", "", "healthy"))
    assert reports(out) == [("j1", "SUCCEEDED", "healthy")]
    assert of(out, M.SaveState) and of(out, M.Birth) and m.active is None
    versions = [a.update.version for a in of(out, M.Report)]
    assert versions == [3] and m.state["finished"]["j1"] == {"status": "SUCCEEDED", "reason": "healthy", "version": 3}
    assert m.stats["requested"] == 10 and m.stats["chunks_received"] == 10


def test_duplicate_desired_of_the_running_job_does_nothing() -> None:
    m = machine()
    download(m, "j1")
    assert m.handle(M.DesiredIn(install("j1"))) == []


def test_a_replayed_job_id_repeats_its_outcome_and_does_nothing_else() -> None:
    state: dict[str, Any] = {}
    m = machine(state=state)
    download(m, "j1")
    m.handle(M.DesiredIn(P.Desired("j1", "none")))  # canceled: a terminal outcome
    again = machine(state=state)  # a restarted device with the persisted state
    for mm in (m, again):
        out = mm.handle(M.DesiredIn(install("j1")))
        assert reports(out) == [("j1", "CANCELED", "canceled")]
        assert [type(a) for a in out] == [M.Report] and mm.active is None


def test_a_new_job_supersedes_a_download() -> None:
    m = machine()
    download(m, "j1")
    out = m.handle(M.DesiredIn(install("j2", "3")))
    assert reports(out) == [("j1", "CANCELED", "superseded"), ("j2", "DOWNLOADING", "")]
    kinds = [type(a) for a in out]
    assert kinds.index(M.DiscardFile) < kinds.index(M.OpenFile)  # the old file goes before the new one opens
    assert m.active is not None and m.active.desired.job_id == "j2"


def test_cancel_during_install_waits_and_a_new_job_is_pending_until_the_install_ends() -> None:
    m = machine()
    download(m, "j1")
    receive_all(m)
    m.handle(M.FileChecked(True))
    m.handle(M.Prepared(Path("/x/in.efb")))
    assert m.active is not None and m.active.installing
    assert m.handle(M.DesiredIn(P.Desired("j1", "none"))) == []  # not canceled while installing
    assert m.handle(M.ChunkIn(P.Chunk(INFO.file_id, 0, DATA[:1024]))) == []  # nor are chunks taken
    assert m.handle(M.DesiredIn(install("j2", "3"))) == []  # pending
    assert m.pending is not None
    out = m.handle(M.AgentJob("j1", "IN_PROGRESS", "probation", "probation"))
    assert reports(out) == [("j1", "IN_PROGRESS", "probation")]
    out = m.handle(M.AgentJob("j1", "ROLLED_BACK", "", "probation_failed"))
    assert reports(out) == [("j1", "ROLLED_BACK", "probation_failed"), ("j2", "DOWNLOADING", "")]
    assert m.pending is None and m.active is not None and m.active.desired.job_id == "j2"


def test_cancel_of_a_download() -> None:
    m = machine()
    download(m, "j1")
    out = m.handle(M.DesiredIn(P.Desired("j1", "none")))
    assert reports(out) == [("j1", "CANCELED", "canceled")] and of(out, M.DiscardFile)
    assert m.handle(M.DesiredIn(P.Desired("other", "none"))) == []


def test_refusals_before_download() -> None:
    dev = FakeDevice()
    m = machine(dev, max_bundle_bytes=4096)
    out = m.handle(M.DesiredIn(install("big")))
    assert reports(out) == [("big", "REJECTED", "bundle_too_large")] and not of(out, M.OpenFile)
    dev.refuse = UpdateRejectedError("another model", reason="wrong_model")
    assert reports(m.handle(M.DesiredIn(install("other")))) == [("other", "REJECTED", "wrong_model")]
    dev.refuse, dev.active = None, "2"
    assert reports(m.handle(M.DesiredIn(install("same", "2")))) == [("same", "SUCCEEDED", "already_active")]


def test_a_delta_when_the_base_is_held_and_the_full_file_when_it_fails() -> None:
    dev = FakeDevice()
    delta = file_info(b"patch" * 100, 1024)
    dev.base = hashlib.sha256(b"base").hexdigest()
    m = machine(dev)
    out = m.handle(M.DesiredIn(install("j1", delta=delta, delta_base=dev.base)))
    assert of(out, M.OpenFile) == [M.OpenFile(delta)]
    m.handle(M.Opened(frozenset()))
    receive_all(m, b"patch" * 100, delta)
    assert m.handle(M.FileChecked(True)) == [M.PrepareInstall(INFO, True)]
    out = m.handle(M.DeltaFailed("does not apply"))
    assert [type(a) for a in out] == [M.DiscardFile, M.OpenFile] and out[1] == M.OpenFile(INFO)
    assert m.stats["delta_failed"] == 1 and m.active is not None and not m.active.using_delta
    dev.base = "0" * 64  # another base: the full file at once
    m2 = machine(dev)
    assert of(m2.handle(M.DesiredIn(install("j2", delta=delta, delta_base=hashlib.sha256(b"base").hexdigest()))),
              M.OpenFile) == [M.OpenFile(INFO)]


def test_a_stalled_transfer_asks_again_only_when_connected() -> None:
    clock = Clock()
    m = machine(clock=clock, stall_seconds=5.0, rand=lambda: 0.0)
    download(m, "j1")
    m.handle(M.ChunkIn(P.Chunk(INFO.file_id, 0, DATA[:1024])))  # chunks flow, then stop
    clock.t += 6
    assert m.handle(M.Tick(connected=False)) == []
    out = m.handle(M.Tick())
    assert [a.request.wanted for a in of(out, M.RequestChunks)] == [[1, 2, 3]]
    assert m.handle(M.Tick()) == []  # not again at once


def test_resume_after_a_restart_from_the_persisted_current_job() -> None:
    state: dict[str, Any] = {}
    m = machine(state=state)
    download(m, "j1")
    again = machine(state=state)
    out = again.handle(M.Connected())
    assert isinstance(out[0], M.Birth) and reports(out) == [("j1", "DOWNLOADING", "")]
    assert of(out, M.OpenFile) and again.active is not None and again.active.version == 2


def _order(**kw: Any) -> RollbackOrder:
    d: dict[str, Any] = {"fleet": "f1", "device_id": "d0", "deployment_id": "dep1", "job_id": "rb1",
                         "from_version": "2", "to_version": "1", "seq": 7, "issued_at": 1.0}
    d.update(kw)
    return RollbackOrder(**d)


def rollback_job(to: str = "1") -> P.Desired:
    return P.Desired("rb1", "rollback", "dep1", rollback_to=to)


def test_a_rollback_order_is_recorded_before_the_rollback() -> None:
    dev = FakeDevice()
    dev.active, dev.previous, dev.order = "2", "1", _order()
    m = machine(dev)
    out = m.handle(M.DesiredIn(rollback_job()))
    assert of(out, M.RecordOrder) == [M.RecordOrder(dev.order, True)] and not of(out, M.Rollback)
    assert (m.state["order_seq"], m.state["order_job"]) == (7, "rb1")
    assert m.handle(M.OrderRecorded()) == [M.Rollback()]
    assert reports(m.handle(M.RolledBack())) == [("rb1", "SUCCEEDED", "rolled_back")]


@pytest.mark.parametrize("setup, expected", [
    ({"order_refused": OrderRefused("replayed", reason="order_replayed")}, ("REJECTED", "order_replayed")),
    ({"order_refused": OrderRefused("no sig", reason="order_unsigned")}, ("REJECTED", "order_unsigned")),
    ({"active": "1"}, ("SUCCEEDED", "already_there")),
    ({"active": "3"}, ("CANCELED", "not_on_version")),
    ({"previous": "0"}, ("FAILED", "rollback_target_missing")),
    ({"previous": None}, ("FAILED", "rollback_target_missing")),
])
def test_rollback_refusals(setup: dict[str, Any], expected: tuple[str, str]) -> None:
    dev = FakeDevice()
    dev.active, dev.previous, dev.order = "2", "1", _order()
    for k, v in setup.items():
        setattr(dev, k, v)
    m = machine(dev)
    out = m.handle(M.DesiredIn(rollback_job()))
    if of(out, M.RecordOrder):
        out = m.handle(M.OrderRecorded())
    assert reports(out) == [("rb1", *expected)] and not of(out, M.Rollback)
    assert m.stats["orders_refused"] == (1 if "order_refused" in setup else 0)


def test_an_order_not_recorded_is_not_executed_and_a_failed_rollback_is_reported() -> None:
    dev = FakeDevice()
    dev.active, dev.previous, dev.order = "2", "1", _order()
    m = machine(dev)
    m.handle(M.DesiredIn(rollback_job()))
    out = m.handle(M.OrderNotRecorded("disk_full", "no space"))
    assert reports(out) == [("rb1", "FAILED", "disk_full")] and not of(out, M.Rollback)
    m2 = machine(dev)
    m2.handle(M.DesiredIn(P.Desired("rb2", "rollback", "dep1", rollback_to="1")))
    m2.handle(M.OrderRecorded())
    assert reports(m2.handle(M.RollbackFailed("store broken"))) == [("rb2", "FAILED", "rollback_failed")]


def test_answers_for_a_job_that_has_ended_are_ignored() -> None:
    m = machine()
    for ev in (M.Opened(), M.FileChecked(True), M.Prepared(Path("x")), M.DeltaFailed(), M.InstallFailed("x"),
               M.OrderRecorded(), M.RolledBack(), M.RollbackFailed("x"), M.AgentJob("j", "SUCCEEDED")):
        assert m.handle(ev) == []
