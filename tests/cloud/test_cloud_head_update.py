"""Head-only OTA over MQTT: when a deployment's bundle is a new head on the backbone a device runs, the
coordinator offers the head update file (edgefleet.headupdate) where it would offer a bsdiff4 delta; the device
rebuilds the new version from its installed one and installs it as a full download (real mosquitto, real agents,
SQLite). A head update that does not apply makes the device fetch the full bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_for
from helpers import coordinator, device

from edgefleet.bundle import open_bundle
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.wire.headdelta import apply_head_update, declares_head, is_head_update, make_head_update
from edgefleet.cloud_sync.wire.transfer import file_info, make_delta
from edgefleet.errors import SyncError
from edgefleet.head import Head, HeadLayer
from edgefleet.headupdate import HeadUpdate, head_update_of, update_head

ALL = RolloutPlan(0.0, (1.0,), 0.0)


def _backbone(path: Path, seed: int) -> Path:
    """An ONNX backbone (numpy-built, no TensorFlow): 64 -> relu(4096) -> 16 features, ~1.3 MB of weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.1, (64, 4096)).astype(np.float32)
    w2 = rng.normal(0, 0.05, (4096, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])],
        "backbone", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _head(seed: int) -> Head:
    rng = np.random.default_rng(seed)
    layers = [HeadLayer("dense", "fc", (16,), (8,), "relu", (("kernel", (16, 8)), ("bias", (8,)))),
              HeadLayer("dense", "probs", (8,), (3,), "softmax", (("kernel", (8, 3)), ("bias", (3,))))]
    return Head(layers, {"fc.kernel": rng.normal(size=(16, 8)), "fc.bias": rng.normal(size=8),
                         "probs.kernel": rng.normal(size=(8, 3)), "probs.bias": rng.normal(size=3)})


@pytest.fixture(scope="module")
def head_archives(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> dict[str, Path]:
    """Signed archives: v1 (backbone + head), v2 (the same backbone, a new head, by update_head), and v2-other (a
    new head on another backbone: not a head-only update of v1)."""
    from edgefleet.pack import pack

    d = tmp_path_factory.mktemp("head-bundles")
    out = {}
    for tag, seed in (("1", 1), ("other1", 2)):
        _, arch = pack(_backbone(d / f"backbone{seed}.onnx", seed), d / f"v{tag}", name="cam", version="1",
                       head=_head(0), private_key=keys["priv"], hardware_tags=("test-board",), archive=True)
        assert arch is not None
        out[tag] = arch
    for tag, base in (("2", "1"), ("2-other", "other1")):
        _, arch = update_head(out[base], _head(7), d / f"v{tag}", version="2", private_key=keys["priv"],
                              trusted_keys=keys["pub"], archive=True)
        assert arch is not None
        out[tag] = arch
    return out


def test_a_new_head_ships_as_its_head_update_and_the_device_rebuilds_the_full_bundle(
        broker: Any, tmp_path: Path, make_agent: Any, head_archives: dict[str, Path], keys: dict[str, Any]) -> None:
    # Arrange: two agents run v1; the coordinator knows v1's archive (the base devices report)
    v1, v2 = head_archives["1"].read_bytes(), head_archives["2"].read_bytes()
    coord = coordinator(broker.url, tmp_path / "reg.db", chunk_size=16 * 1024)
    syncs = [device(broker.url, make_agent(f"d{i}", install=head_archives["1"]), tmp_path) for i in range(2)]
    try:
        wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 2)
        coord.add_artifact(v1)
        before = [s.transport.received_bytes for s in syncs]

        # Act
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)

        # Assert: each device got the head update (not a bsdiff4 patch, not the bundle) and runs v2, stored as the
        # full v2 is (the same object id: its manifest's sha256), serving v2's predictions
        assert coord.counters["head_updates_built"] == 1 and coord.counters["deltas_built"] == 1
        row = coord.registry.delta(hashlib.sha256(v1).hexdigest(), hashlib.sha256(v2).hexdigest())
        assert row is not None and row.data is not None and is_head_update(bytes(row.data))
        full, _ = open_bundle(head_archives["2"], keys["pub"])
        x = np.random.default_rng(3).normal(size=(4, 64)).astype(np.float32)
        import edgefleet

        with edgefleet.load(head_archives["2"], trusted_keys=keys["pub"]) as m:
            want = m.predict(x)
        got_mqtt = [s.transport.received_bytes - b for s, b in zip(syncs, before)]
        for s, got in zip(syncs, got_mqtt):
            assert s.agent.active_version == "2"
            assert s.stats["head_updates_used"] == 1 and s.stats["delta_used"] == 1 and s.stats["delta_failed"] == 0
            assert s.agent.store.state().active.id == hashlib.sha256(full.manifest_bytes).hexdigest()
            np.testing.assert_allclose(np.asarray(s.agent.predict(x)), want, rtol=1e-5, atol=1e-6)
            assert s.stats["bytes_received"] == row.size
            assert got < len(v2) * 0.02, (got, len(v2))  # the update and the control messages: < 2% of the bundle
        print(f"\nv2 archive {len(v2):,} B; head update {row.size:,} B ({row.size / len(v2):.2%}); "
              f"bsdiff4 of the archives {len(make_delta(v1, v2) or b''):,} B; MQTT bytes per device {got_mqtt}")
    finally:
        for s in syncs:
            s.stop()
        coord.stop()


def test_a_head_update_that_does_not_apply_makes_the_device_fetch_the_full_bundle(
        broker: Any, tmp_path: Path, make_agent: Any, head_archives: dict[str, Path], keys: dict[str, Any]) -> None:
    # Arrange: the registry holds a head update for (v1 -> v2) whose head file is another one (as a corrupted
    # cache or a tampered copy would): the signed manifest names another sha256
    v1, v2 = head_archives["1"].read_bytes(), head_archives["2"].read_bytes()
    coord = coordinator(broker.url, tmp_path / "reg.db", chunk_size=16 * 1024)
    s = device(broker.url, make_agent("d0", install=head_archives["1"]), tmp_path)
    try:
        wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 1)
        coord.add_artifact(v1)
        good = HeadUpdate.from_bytes(make_head_update(v1, v2, keys["pub"]) or b"")
        bad = HeadUpdate(good.base_manifest_sha256, good.manifest_patch, good.signature, _head(9).to_npz()).to_bytes()
        coord.registry.put_delta(hashlib.sha256(v1).hexdigest(), hashlib.sha256(v2).hexdigest(),
                                 hashlib.sha256(bad).hexdigest(), bad)

        # Act
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)

        # Assert: refused, then the full bundle fetched and installed
        assert s.agent.active_version == "2"
        assert s.stats["delta_failed"] == 1 and s.stats.get("head_updates_used", 0) == 0
        assert s.stats["bytes_received"] == len(bad) + len(v2)
    finally:
        s.stop()
        coord.stop()


def test_the_coordinator_offers_a_head_update_only_for_a_new_head_on_the_same_backbone(
        head_archives: dict[str, Path], archives: dict[str, Path], keys: dict[str, Any], tmp_path: Path) -> None:
    v1, v2, other = (head_archives[k].read_bytes() for k in ("1", "2", "2-other"))
    plain1, plain2 = archives["1"].read_bytes(), archives["2"].read_bytes()

    update = make_head_update(v1, v2, keys["pub"])

    assert update is not None and len(update) < len(v2) * 0.02
    assert make_head_update(v1, other, keys["pub"]) is None  # another backbone: a bsdiff4 delta or the file
    assert make_head_update(plain1, plain2, keys["pub"]) is None  # bundles without a head
    assert declares_head(v2) and not declares_head(plain2) and not declares_head(b"not a tar archive")
    installed, keep = open_bundle(head_archives["1"], keys["pub"], workdir=tmp_path)
    wrong, keep_wrong = open_bundle(head_archives["other1"], keys["pub"], workdir=tmp_path)
    assert apply_head_update(installed, update, file_info(v2, 1024), keys["pub"]) == v2
    with pytest.raises(SyncError, match="head update does not apply: .*another base"):
        apply_head_update(wrong, update, file_info(v2, 1024), keys["pub"])
    with pytest.raises(SyncError, match="head update does not apply: .*unsigned"):
        unsigned = HeadUpdate.from_bytes(update)
        apply_head_update(installed, HeadUpdate(unsigned.base_manifest_sha256, unsigned.manifest_patch, None,
                                                unsigned.head).to_bytes(), file_info(v2, 1024), keys["pub"])
    with pytest.raises(SyncError, match="does not match the declared file"):
        apply_head_update(installed, update, file_info(v1, 1024), keys["pub"])
    assert not is_head_update(make_delta(v1, v2) or b"BSDIFF4")
    target, keep_target = open_bundle(head_archives["2"], keys["pub"], workdir=tmp_path)
    assert update == head_update_of(target, installed).to_bytes()  # the SDK's own update is what is shipped
    del keep, keep_wrong, keep_target


def test_the_head_update_comes_from_the_http_origin_when_the_coordinator_has_one(
        broker: Any, tmp_path: Path, make_agent: Any, head_archives: dict[str, Path]) -> None:
    import os
    import shutil

    from edgefleet.cloud_sync.origin import DirectoryOrigin, LocalNginx

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (scripts/setup.sh installs it)")
    nginx = LocalNginx(tmp_path / "nginx", tmp_path / "origin", binary=binary).start()
    coord = coordinator(broker.url, tmp_path / "reg.db", chunk_size=16 * 1024,
                        origin=DirectoryOrigin(tmp_path / "origin", nginx.url))
    s = device(broker.url, make_agent("d0", install=head_archives["1"]), tmp_path)
    try:
        wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == 1)
        v1, v2 = head_archives["1"].read_bytes(), head_archives["2"].read_bytes()
        coord.add_artifact(v1)

        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)

        assert s.agent.active_version == "2" and s.stats["head_updates_used"] == 1 and s.stats["http_files"] == 1
        served = [a for a in nginx.access() if a[0] == 200]
        assert len(served) == 1 and served[0][2] == s.stats["http_bytes"] < len(v2) * 0.02
        assert is_head_update((tmp_path / "origin" / served[0][3].lstrip("/")).read_bytes())
        assert coord.counters["chunks_served"] == 0
    finally:
        s.stop()
        coord.stop()
        nginx.stop()


def test_a_fine_tuned_head_ships_encoded_no_larger_than_bsdiff4_and_every_refusal_is_a_sync_error(
        head_archives: dict[str, Path], keys: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgefleet.headupdate as hu

    # v1's head with every weight moved by ~0.1% (a federated round's change), on v1's backbone
    rng = np.random.default_rng(5)
    head = _head(0)
    tuned = head.with_weights({k: v * (1 + 1e-3 * rng.normal(size=v.shape)) for k, v in head.weights.items()})
    _, arch = update_head(head_archives["1"], tuned, tmp_path / "v2", version="2", private_key=keys["priv"],
                          trusted_keys=keys["pub"], archive=True)
    assert arch is not None
    v1, v2 = head_archives["1"].read_bytes(), arch.read_bytes()

    update = make_head_update(v1, v2, keys["pub"])

    delta = make_delta(v1, v2)
    assert update is not None and delta is not None and is_head_update(update)
    assert HeadUpdate.from_bytes(update).head_encoding == "xor-lzma" and len(update) <= len(delta)
    installed, keep = open_bundle(head_archives["1"], keys["pub"], workdir=tmp_path)
    assert apply_head_update(installed, update, file_info(v2, 1024), keys["pub"]) == v2
    # refusals the device answers by fetching the full bundle: each a SyncError naming it
    parsed = HeadUpdate.from_bytes(update)
    cut = HeadUpdate(parsed.base_manifest_sha256, parsed.manifest_patch, parsed.signature, parsed.head[:-3],
                     parsed.head_encoding).to_bytes()
    with pytest.raises(SyncError, match="head update does not apply: .*encoded head"):
        apply_head_update(installed, cut, file_info(v2, 1024), keys["pub"])
    head_file = installed.path / (installed.manifest.head.file if installed.manifest.head else "")
    original = head_file.read_bytes()
    head_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # the installed head is not its manifest's
    with pytest.raises(SyncError, match="head update does not apply: .*installed head file"):
        apply_head_update(installed, update, file_info(v2, 1024), keys["pub"])
    head_file.write_bytes(original)
    monkeypatch.setattr(hu, "READ_FORMATS", frozenset({1}))  # an edgefleet that reads format 1 only
    with pytest.raises(SyncError, match="head update does not apply: .*format 2; this edgefleet reads 1"):
        apply_head_update(installed, update, file_info(v2, 1024), keys["pub"])
    del keep
