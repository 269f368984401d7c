"""The update attacks from TUF/Uptane: each refused with a named reason while the old version serves."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import build_bundle, copy_bundle, rewrite_manifest

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.orders import make_rollback_order
from edgefleet.device_agent.updates import JobStatus


@pytest.fixture()
def agent(agent_config: Any, bundles: dict[str, Path]) -> Any:
    a = Agent(agent_config(), monitor=False)
    assert a.install(bundles["1"]).status is JobStatus.SUCCEEDED
    assert a.install(bundles["2"]).status is JobStatus.SUCCEEDED
    yield a
    a.close()


def refused(agent: Agent, source: Path, reason: str, x: np.ndarray, **kw: Any) -> None:
    before = agent.predict(x)
    objects_before = sorted(p.name for p in agent.store.objects.iterdir())
    job = agent.install(source, **kw)
    assert job.status is JobStatus.REJECTED, (job.status, job.reason, job.message)
    assert job.reason == reason, job.message
    assert agent.active_version == "2"
    np.testing.assert_array_equal(agent.predict(x), before)
    assert sorted(p.name for p in agent.store.objects.iterdir()) == objects_before
    assert list(agent.store.staging.iterdir()) == []
    agent.store.verify(agent.store.state().active.id)


def test_unsigned_bundle(agent: Agent, tmp_path: Path, x4: np.ndarray) -> None:
    refused(agent, build_bundle(tmp_path, "5", None, seed=5), "unsigned", x4)


def test_wrong_key(agent: Agent, tmp_path: Path, keys: dict, x4: np.ndarray) -> None:
    refused(agent, build_bundle(tmp_path, "5", keys["other_priv"], seed=5), "bad_signature", x4)


def test_edited_manifest_without_resigning(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    rewrite_manifest(b, lambda d: d["target"].update(hardware_tags=[]))
    refused(agent, b, "bad_signature", x4)


def test_replay_of_older_signed_bundle(agent: Agent, bundles: dict, x4: np.ndarray) -> None:
    refused(agent, bundles["1"], "version_not_newer", x4)


def test_same_version_different_content(agent: Agent, tmp_path: Path, keys: dict, x4: np.ndarray) -> None:
    refused(agent, build_bundle(tmp_path, "2", keys["priv"], seed=99), "version_not_newer", x4)


def test_other_hardware(agent: Agent, tmp_path: Path, keys: dict, x4: np.ndarray) -> None:
    b = build_bundle(tmp_path, "5", keys["priv"], seed=5, hardware_tags=("other-board",))
    refused(agent, b, "hardware_mismatch", x4)


def test_newer_agent_required(agent: Agent, tmp_path: Path, keys: dict, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    rewrite_manifest(b, lambda d: d["target"].update(min_agent_version="99.0"), keys["priv"])
    refused(agent, b, "agent_too_old", x4)


def test_mix_and_match_file_swapped_between_valid_bundles(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    other = bundles["4"] / "model.onnx"
    assert other.stat().st_size == (b / "model.onnx").stat().st_size
    (b / "model.onnx").write_bytes(other.read_bytes())
    refused(agent, b, "hash_mismatch", x4)


def test_truncated_file(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[: len(data) // 2])
    refused(agent, b, "file_truncated", x4)


def test_oversized_file_endless_data(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    with open(b / "model.onnx", "ab") as fh:
        fh.write(b"\0" * (4 << 20))
    refused(agent, b, "file_too_large", x4)


def test_signed_manifest_declaring_smaller_sizes(agent: Agent, tmp_path: Path, keys: dict, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    rewrite_manifest(b, lambda d: d["files"]["model.onnx"].update(size=d["files"]["model.onnx"]["size"] - 10), keys["priv"])
    refused(agent, b, "file_too_large", x4)


def test_unlisted_extra_file(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    (b / "payload.sh").write_text("rm -rf /")
    refused(agent, b, "unexpected_file", x4)


def test_failing_smoke_test(agent: Agent, tmp_path: Path, keys: dict, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")

    def skew(d: dict) -> None:
        d["smoke_tests"]["outputs"]["y"] = (np.asarray(d["smoke_tests"]["outputs"]["y"]) + 1.0).tolist()

    rewrite_manifest(b, skew, keys["priv"])
    refused(agent, b, "smoke_test_failed", x4)


def test_truncated_archive(agent: Agent, tmp_path: Path, keys: dict, x4: np.ndarray) -> None:
    arch = build_bundle(tmp_path, "5", keys["priv"], seed=5, archive=True)
    data = arch.read_bytes()
    bad = tmp_path / "cut.efb"
    bad.write_bytes(data[: len(data) // 2])
    refused(agent, bad, "archive_corrupt", x4)


def test_archive_with_path_traversal(agent: Agent, tmp_path: Path, x4: np.ndarray) -> None:
    evil = tmp_path / "evil.efb"
    payload = tmp_path / "p"
    payload.write_text("x")
    with tarfile.open(evil, "w") as tar:
        tar.add(payload, arcname="../../escape")
    refused(agent, evil, "unsafe_archive", x4)
    assert not (agent.store.root.parent / "escape").exists()


def test_rollback_order_from_untrusted_key_is_refused(agent: Agent, keys: dict, bundles: dict, x4: np.ndarray) -> None:
    order = make_rollback_order(keys["other_priv"], bundles["1"])
    refused(agent, bundles["1"], "bad_rollback_order", x4, rollback_order=order)


def test_rollback_order_for_another_bundle_is_refused(agent: Agent, keys: dict, bundles: dict, x4: np.ndarray) -> None:
    order = make_rollback_order(keys["priv"], bundles["3"])
    refused(agent, bundles["1"], "bad_rollback_order", x4, rollback_order=order)


def test_signed_rollback_order_installs_older_version(agent: Agent, keys: dict, bundles: dict) -> None:
    order = make_rollback_order(keys["priv"], bundles["1"], device_id="dev-1", expires_in=60)
    job = agent.install(bundles["1"], rollback_order=order)
    assert job.status is JobStatus.SUCCEEDED, job.message
    assert agent.active_version == "1"


def test_expired_rollback_order(agent: Agent, keys: dict, bundles: dict, x4: np.ndarray, monkeypatch: Any) -> None:
    order = make_rollback_order(keys["priv"], bundles["1"], expires_in=1)
    order["order"]["expires_at"] = 1.0  # (re-signing would be needed to change it legitimately)
    refused(agent, bundles["1"], "bad_rollback_order", x4, rollback_order=order)


def test_archive_install_works(agent: Agent, tmp_path: Path, keys: dict) -> None:
    arch = build_bundle(tmp_path, "7", keys["priv"], seed=7, archive=True)
    job = agent.install(arch)
    assert job.status is JobStatus.SUCCEEDED, job.message
    assert agent.active_version == "7"
    assert os.listdir(agent.store.staging) == []


def test_quota_exceeded(agent_config: Any, bundles: dict, x4: np.ndarray) -> None:
    cfg = agent_config()
    with Agent(cfg, monitor=False) as a:
        a.install(bundles["1"])
    small = cfg.with_overrides(store=type(cfg.store)(quota_mb=0.0005))
    with Agent(small, monitor=False) as a:
        job = a.install(bundles["2"])
        assert (job.status, job.reason) == (JobStatus.REJECTED, "quota_exceeded")
        assert a.active_version == "1"


def test_damaged_active_version_falls_back_to_previous(agent_config: Any, bundles: dict, x4: np.ndarray) -> None:
    cfg = agent_config()
    with Agent(cfg, monitor=False) as a:
        a.install(bundles["1"])
        a.install(bundles["2"])
        active = a.store.object_path(a.store.state().active.id) / "model.onnx"
    data = bytearray(active.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot on the device
    active.write_bytes(bytes(data))
    with Agent(cfg, monitor=False) as a:
        assert a.active_version == "1"
        assert a.predict(x4).shape == (2, 3)
        st = a.store.state()
        assert st.active.version == "1" and st.bad and st.previous.version == "2"
        assert "store_repaired" in [r.kind for r in a.telemetry.queue.peek(1000)]


def test_endless_signature_file(agent: Agent, tmp_path: Path, bundles: dict, x4: np.ndarray) -> None:
    b = copy_bundle(bundles["3"], tmp_path / "b")
    with open(b / "signature", "ab") as fh:
        fh.write(b" " * (1 << 20))
    refused(agent, b, "bad_signature", x4)


def test_reinstalling_repairs_a_damaged_previous_copy(agent: Agent, bundles: dict, keys: dict) -> None:
    prev = agent.store.state().previous
    model = agent.store.object_path(prev.id) / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    order = make_rollback_order(keys["priv"], bundles["1"])
    job = agent.install(bundles["1"], rollback_order=order)
    assert job.status is JobStatus.SUCCEEDED, job.message
    agent.store.verify(prev.id)
    assert agent.active_version == "1"
