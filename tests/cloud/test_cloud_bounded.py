"""Bounded before trusted on the device side of cloud sync (issue 12, finding 2).

The file size and id a device acts on come from the unsigned ``desired`` message: a forged
64 GiB size was preallocated. What a device preallocates or accepts is capped by a configured
maximum bundle size (default: the store quota) before any work. The wire protocol is unchanged.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgefleet.cloud_sync.device import DeviceSync
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.transfer import Begin, ChunkFile, Fail, Receiver, apply_delta, file_info, make_delta
from edgefleet.errors import SyncError

GIB64 = 64 << 30
SHA = hashlib.sha256(b"forged").hexdigest()


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.lstat().st_blocks * 512 for p in [path, *path.rglob("*")])


def _apparent(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())


class _Transport:
    """Records what the device publishes; always connected."""

    def __init__(self, will: Any = None) -> None:
        self.sent: list[tuple[str, bytes]] = []

    connected = True

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...
    def on_message(self, handler: Any) -> None: ...
    def on_connect(self, callback: Any) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.sent.append((topic, payload))

    def jobs(self) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.sent if t.endswith("/job")]


def _agent(quota_mb: float = 1.0) -> Any:
    store = SimpleNamespace(state=lambda: SimpleNamespace(active=None, previous=None), quota_bytes=int(quota_mb * (1 << 20)))
    cfg = SimpleNamespace(store=SimpleNamespace(quota_mb=quota_mb), hardware_tags=(), require_signature=True)
    return SimpleNamespace(job_hooks=[], store=store, config=cfg, active_version=None, trusted_keys=[])


def _sync(tmp_path: Path, **kw: Any) -> tuple[DeviceSync, _Transport]:
    t = _Transport()
    s = DeviceSync(_agent(kw.pop("quota_mb", 1.0)), lambda will: t, "f1", "d1", tmp_path / "sync", **kw)
    return s, t


def _desired(size: int, delta: int | None = None) -> P.Desired:
    return P.Desired("job1", "install", "dep1", "9", P.FileInfo(SHA, size, 1 << 20),
                     P.FileInfo(hashlib.sha256(b"d").hexdigest(), delta, 1 << 20) if delta else None,
                     hashlib.sha256(b"base").hexdigest() if delta else "")


def test_forged_64gib_size_is_refused_before_anything_is_preallocated(tmp_path: Path) -> None:
    """Review: a forged 64 GiB size in the desired message was preallocated. The cap here is the
    agent's store quota (1 MiB) since nothing else is configured."""
    sync, t = _sync(tmp_path)
    sync._on_desired(_desired(GIB64))
    jobs = t.jobs()
    assert jobs and jobs[-1]["status"] == "REJECTED" and jobs[-1]["reason"] == "bundle_too_large", jobs
    assert "DOWNLOADING" not in [j["status"] for j in jobs]
    assert _apparent(tmp_path / "sync" / "transfers") == 0
    assert _du(tmp_path / "sync") < 64 << 10
    assert not any(topic.endswith("/chunks") for topic, _ in t.sent)  # not a single chunk asked for


def test_configured_cap_and_a_bundle_within_it(tmp_path: Path) -> None:
    sync, t = _sync(tmp_path, max_bundle_bytes=4096, quota_mb=100)
    sync._on_desired(_desired(4097))
    assert t.jobs()[-1]["reason"] == "bundle_too_large"
    sync2, t2 = _sync(tmp_path / "b", max_bundle_bytes=4096, quota_mb=100)
    sync2._on_desired(P.Desired("job2", "install", "dep1", "9", P.FileInfo(SHA, 4096, 1024)))
    assert [j["status"] for j in t2.jobs()] == ["DOWNLOADING"]
    assert any(topic.endswith("/chunks") for topic, _ in t2.sent)
    assert sync2._active is not None and sync2._active.receiver is not None
    assert sync2._active.receiver.max_bytes == 4096


def test_forged_delta_size_is_ignored_not_preallocated(tmp_path: Path) -> None:
    """A delta declared larger than the cap is never fetched (the full file is, within the cap)."""
    sync, t = _sync(tmp_path, max_bundle_bytes=1 << 20)
    sync.base_archive = lambda: (hashlib.sha256(b"base").hexdigest(), tmp_path / "base.efb")  # type: ignore[method-assign]
    sync._on_desired(_desired(1000, delta=GIB64))
    assert sync._active is not None and not sync._active.using_delta
    transfers = tmp_path / "sync" / "transfers"
    assert [p.name for p in transfers.iterdir()] == [SHA]  # the full file only
    assert (transfers / SHA / "data").stat().st_size == 1000


def test_a_delta_larger_than_its_file_is_ignored(tmp_path: Path) -> None:
    """A delta is never larger than the file it rebuilds: one declared larger (within the cap) is not fetched;
    the file is (in TUF mode its size is the signed target's)."""
    sync, t = _sync(tmp_path, max_bundle_bytes=1 << 20)
    sync.base_archive = lambda: (hashlib.sha256(b"base").hexdigest(), tmp_path / "base.efb")  # type: ignore[method-assign]
    sync._on_desired(_desired(1000, delta=1001))
    assert sync._active is not None and not sync._active.using_delta
    assert [p.name for p in (tmp_path / "sync" / "transfers").iterdir()] == [SHA]


def test_receiver_fails_before_asking_for_a_chunk() -> None:
    r = Receiver("j", P.FileInfo(SHA, GIB64, 1 << 20), max_bytes=1 << 20)
    actions = r.handle(Begin())
    assert len(actions) == 1 and isinstance(actions[0], Fail) and actions[0].reason == "bundle_too_large"
    assert r.failed and r.requested == 0


def test_chunkfile_refuses_to_preallocate(tmp_path: Path) -> None:
    with pytest.raises(SyncError, match="maximum bundle size"):
        ChunkFile(tmp_path / "t", P.FileInfo(SHA, GIB64, 1 << 20), max_bytes=1 << 20)
    assert not (tmp_path / "t").exists()


def test_delta_declaring_another_size_is_refused_before_decompressing(tmp_path: Path) -> None:
    old = bytes(range(256)) * 64
    new = old[:-10] + b"0123456789"
    good = make_delta(old, new)
    assert good is not None and apply_delta(old, good, file_info(new, 1024)) == new
    # a bz2 bomb: a tiny diff block that inflates to 64 MiB, for a 16 KiB file
    bomb = bz2.compress(b"\0" * (64 << 20))
    ctrl = bz2.compress(b"")
    header = b"BSDIFF40" + (len(ctrl)).to_bytes(8, "little") + len(bomb).to_bytes(8, "little") + len(new).to_bytes(8, "little")
    tracemalloc.start()
    try:
        with pytest.raises(SyncError):
            apply_delta(old, header + ctrl + bomb + bz2.compress(b""), file_info(new, 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    forged = good[:24] + (GIB64).to_bytes(8, "little") + good[32:]
    with pytest.raises(SyncError, match="declares"):
        apply_delta(old, forged, file_info(new, 1024))


def test_a_device_without_bsdiff4_refuses_a_delta_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """bsdiff4 is in the [device] extra; a device installed without it gets a SyncError (and fetches the full
    file), not an ImportError out of the sync loop."""
    import sys

    old = bytes(range(256)) * 64
    new = old[:-10] + b"0123456789"
    good = make_delta(old, new)
    assert good is not None
    monkeypatch.setitem(sys.modules, "bsdiff4.core", None)
    with pytest.raises(SyncError, match="bsdiff4 is not installed"):
        apply_delta(old, good, file_info(new, 1024))
