"""Personalisation (FedPer style, ``federated run --personalize``): a device fine-tunes the run's final global head
on its own samples, keeps that local head only when it beats the global head on its held-back samples, and the
agent serves it once the version with that global head is installed; a damaged, foreign or disabled personal
head leaves the signed global head in service. The whole loop through real Flower processes is in
test_federated_head.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.errors import ConfigError

from .test_federated_head import _tiny_head_bundle


def _head(seed: int = 0, n_in: int = 12, n_out: int = 4) -> Any:
    from edgefleet.head import Head, HeadLayer

    rng = np.random.default_rng(seed)
    return Head([HeadLayer("dense", "probs", (n_in,), (n_out,), "softmax",
                           (("kernel", (n_in, n_out)), ("bias", (n_out,))))],
                {"probs.kernel": rng.normal(scale=0.1, size=(n_in, n_out)), "probs.bias": np.zeros(n_out)})


def _blobs(n: int, seed: int, labels: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """Four well separated classes in 12 features; ``labels[c]`` is what this device calls class ``c``."""
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 12, dtype=np.float32) * 4
    c = rng.integers(0, 4, n)
    return (centres[c] + rng.normal(scale=0.7, size=(n, 12))).astype(np.float32), np.asarray(labels)[c]


def _global_head() -> Any:
    from edgefleet.cloud_sync.federated.head_trainer import HeadTrainConfig, train_head

    x, y = _blobs(2000, seed=1)
    return train_head(_head(), x, y, HeadTrainConfig(epochs=20, learning_rate=0.01, optimizer="adam")).head


def test_a_device_keeps_a_local_head_only_when_it_beats_the_global_one_on_its_held_back_samples() -> None:
    from edgefleet.cloud_sync.federated.head_trainer import HeadTrainConfig, personalize

    glob = _global_head()
    cfg = HeadTrainConfig(epochs=20, learning_rate=0.05, optimizer="adam")
    # a device whose users call classes 0 and 1 the other way round: the global head is wrong on half its data
    x, y = _blobs(300, seed=2, labels=(1, 0, 2, 3))
    swapped = personalize(glob, x[:200], y[:200], x[200:], y[200:], cfg)
    # a device like the fleet: the global head is as good as it gets; the margin asks for 5 points more
    x, y = _blobs(300, seed=3)
    typical = personalize(glob, x[:200], y[:200], x[200:], y[200:], cfg, margin=0.05)

    assert swapped.kept and swapped.holdout == 100
    assert swapped.global_accuracy < 0.8 < 0.95 < swapped.personal_accuracy, swapped.to_dict()
    assert not typical.kept and typical.global_accuracy > 0.95, typical.to_dict()
    # the local head started from the global one and is a head of the same layers
    assert swapped.head.layers == glob.layers
    # no held-back samples: nothing shows the local head is better, so it is not kept
    assert not personalize(glob, x[:200], y[:200], x[:0], y[:0], cfg).kept
    with pytest.raises(ConfigError, match="margin"):
        personalize(glob, x, y, x, y, cfg, margin=1.5)


def _manifest(bundle: Path) -> Any:
    from edgefleet.bundle import verify_bundle_dir

    return verify_bundle_dir(bundle).manifest


def _save(root: Path, manifest: Any, head: Any, **kw: Any) -> Path:
    from edgefleet.device_agent.personal import PersonalHeads
    from edgefleet.head import backbone_digest

    args = dict(base=manifest.head.sha256, backbone=backbone_digest(manifest), head=head, global_accuracy=0.5,
                personal_accuracy=0.9, holdout=40, run="77")
    args.update(kw)
    return PersonalHeads(root).save(**args)


def test_personal_heads_are_found_for_their_version_only_and_damaged_ones_are_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from edgefleet.device_agent.personal import PersonalHeads
    from edgefleet.errors import StoreError
    from edgefleet.head import backbone_digest

    v1 = _manifest(_tiny_head_bundle(tmp_path, seed=0))
    other = _manifest(_tiny_head_bundle(tmp_path, seed=1))  # another backbone and head
    mine = _head(seed=5, n_in=12, n_out=10)
    state = tmp_path / "state"
    heads = PersonalHeads(state)

    assert heads.for_manifest(v1) is None  # none kept yet
    _save(state, v1, mine)
    got = heads.load(v1)
    assert got.base == v1.head.sha256 and got.run == "77" and got.personal_accuracy == 0.9
    assert all(np.array_equal(got.head.weights[k], mine.weights[k]) for k in mine.weights)
    assert heads.for_manifest(other) is None

    # another version's head sha with the same record: refused for its backbone
    _save(state, other, mine, base=other.head.sha256, backbone=backbone_digest(v1))
    with pytest.raises(StoreError, match="trained on another backbone"):
        heads.load(other)
    # a damaged head file: the agent serves the global head and says why
    npz = state / "personal" / f"{v1.head.sha256}.npz"
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    with caplog.at_level(logging.WARNING, logger="edgefleet.agent.personal"):
        assert heads.for_manifest(v1) is None
    assert "does not match its record" in caplog.text
    # a damaged record
    (state / "personal" / f"{v1.head.sha256}.json").write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        heads.load(v1)
    # names are sha256 digests only (no path out of the directory)
    with pytest.raises(StoreError, match="sha256"):
        heads.remove("../../etc/passwd")


def test_only_the_newest_personal_heads_are_kept(tmp_path: Path) -> None:
    from edgefleet.device_agent.personal import PersonalHeads

    bundles = [_manifest(_tiny_head_bundle(tmp_path / str(i), seed=i)) for i in range(6)]
    heads = PersonalHeads(tmp_path / "state", keep=4)
    for m in bundles:
        _save(tmp_path / "state", m, _head(seed=1, n_out=10))
    kept = {d["base"] for d in heads.records()}
    assert kept == {m.head.sha256 for m in bundles[2:]}
    assert sorted(p.name for p in (tmp_path / "state" / "personal").iterdir()) == sorted(
        f"{m.head.sha256}.{ext}" for m in bundles[2:] for ext in ("npz", "json"))
    assert heads.remove(bundles[5].head.sha256) and not heads.remove(bundles[5].head.sha256)
    # a record whose time is not a number sorts as the oldest; pruning goes on (it runs on every save)
    meta = tmp_path / "state" / "personal" / f"{bundles[2].head.sha256}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "created": "yesterday"}))
    heads.prune()
    assert heads.records()[-1]["base"] == bundles[2].head.sha256


def _agent(root: Path, personal_heads: bool = True) -> Any:
    from edgefleet.device_agent import Agent
    from edgefleet.device_agent.config import AgentConfig, FederatedNodeConfig, UpdateConfig

    cfg = AgentConfig(state_dir=str(root), device_id=root.name, require_signature=False,
                      update=UpdateConfig(probation_seconds=0.0),
                      federated=FederatedNodeConfig(personal_heads=personal_heads))
    return Agent(cfg, tick_seconds=0.05)


def test_the_agent_serves_the_personal_head_of_the_installed_version(tmp_path: Path) -> None:
    import edgefleet

    v1 = _tiny_head_bundle(tmp_path, seed=0)
    m1 = _manifest(v1)
    mine = _head(seed=9, n_in=12, n_out=10)
    x = np.random.default_rng(0).uniform(0, 16, (5, 64)).astype(np.float32)
    with edgefleet.load(v1) as model:
        feats, global_out = model.features(x), model.predict(x)
    state = tmp_path / "dev"
    _save(state, m1, mine)

    agent = _agent(state)
    try:
        agent.install(Path(str(v1) + ".efb"), wait=True, timeout=60)
        out = agent.predict(x)
        status, quality = agent.status()["serving"], agent.status()["quality"]
    finally:
        agent.close()
    off = _agent(state, personal_heads=False)
    try:
        out_off, status_off = off.predict(x), off.status()["serving"]
    finally:
        off.close()

    np.testing.assert_allclose(out, mine.forward(feats), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, global_out)
    assert status["head"] == "personal" and status["personal"]["run"] == "77", status
    assert quality["1"]["head"] == "personal", quality  # the version's quality telemetry says which head it serves
    assert status["personal"]["personal_accuracy"] == 0.9 and status["personal"]["global_accuracy"] == 0.5
    # personal heads off ([federated] personal_heads = false): the bundle's signed global head
    np.testing.assert_allclose(out_off, global_out, rtol=1e-6)
    assert status_off["head"] == "global" and status_off["personal"] is None


def test_a_personal_head_of_other_layers_leaves_the_global_head_in_service(tmp_path: Path) -> None:
    import edgefleet

    v1 = _tiny_head_bundle(tmp_path, seed=0)
    m1 = _manifest(v1)
    state = tmp_path / "dev"
    path = _save(state, m1, _head(seed=9, n_in=12, n_out=10))
    # rewritten as a head of another shape, its record updated to match (a bug, not an attacker)
    from edgefleet.device_agent.personal import PersonalHeads

    PersonalHeads(state).save(base=m1.head.sha256, backbone=json.loads(path.with_suffix(".json").read_text())["backbone"],
                              head=_head(seed=9, n_in=12, n_out=4), global_accuracy=0.5, personal_accuracy=0.9,
                              holdout=10)
    x = np.random.default_rng(0).uniform(0, 16, (3, 64)).astype(np.float32)
    agent = _agent(state)
    try:
        agent.install(Path(str(v1) + ".efb"), wait=True, timeout=60)
        out, status = agent.predict(x), agent.status()["serving"]
    finally:
        agent.close()
    with edgefleet.load(v1) as model:
        np.testing.assert_allclose(out, model.predict(x), rtol=1e-6)
    assert status["head"] == "global"


def test_personalisation_needs_a_head_run_with_held_back_samples(tmp_path: Path) -> None:
    from edgefleet.cloud_sync.federated import cli
    from edgefleet.cloud_sync.federated.config import FederatedConfig

    with pytest.raises(ConfigError, match="needs a deployed bundle compiled with --trainable-head"):
        FederatedConfig(personalize=True)
    with pytest.raises(ConfigError, match="held-back samples"):
        FederatedConfig(personalize=True, head_bundle="b", head_backbone="d", holdout_fraction=0.0)
    with pytest.raises(ConfigError, match="personal_epochs"):
        FederatedConfig(personal_epochs=0)
    args = cli.parse_run_args(["--personalize", "--out", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="--trainable-head"):
        cli.cmd_run(args)
    # the options round-trip through the run config the ClientApps read
    cfg = FederatedConfig(personalize=True, personal_epochs=3, personal_margin=0.02, head_bundle="b",
                          head_backbone="d")
    assert FederatedConfig.from_run_config(cfg.to_run_config()) == cfg


def test_the_run_reports_both_heads_per_device() -> None:
    from edgefleet.cloud_sync.federated.records import log_lines, personalization_lines
    from edgefleet.cloud_sync.federated.server_app import personalization_summary

    rows = [{"device_id": "dev-b", "global_accuracy": 0.6, "personal_accuracy": 0.9, "holdout": 20, "kept": True,
             "stored": True},
            {"device_id": "dev-a", "global_accuracy": 0.8, "personal_accuracy": 0.7, "holdout": 20, "kept": False,
             "stored": False}]
    summary = personalization_summary(rows)
    assert summary["kept"] == 1 and summary["reported"] == 2
    assert summary["mean_global_accuracy"] == pytest.approx(0.7)
    assert summary["mean_personal_accuracy"] == pytest.approx(0.8)
    assert summary["mean_served_accuracy"] == pytest.approx(0.85)
    lines = personalization_lines(summary)
    assert lines[0].startswith("personalisation: 1 of 2 device(s) keep a local head")
    assert "dev-b: global 0.600, local 0.900 on 20 held-back sample(s): keeps its local head" in lines[1]
    assert "dev-a: global 0.800, local 0.700" in lines[2] and lines[2].endswith("serves the global head")
    run = {"id": "r1", "status": "finished", "group": "g", "strategy": "fedavg", "trigger": "manual", "rounds": 1,
           "rounds_done": 1, "round_metrics": [],
           "result": {"personalization": summary}, "created": 0.0, "updated": 0.0}
    assert lines[1] in log_lines(run, [])


# -- adversarial: damaged records on the device, hostile replies at the server -----------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                     | st.text(max_size=40), lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                                 kids, max_size=3),
                     max_leaves=8)
_record_keys = st.sampled_from(["base", "backbone", "sha256", "run", "created", "global_accuracy", "personal_accuracy",
                                "holdout", "other"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A tiny head bundle's manifest and a state directory holding a good personal head for it."""
    root = tmp_path_factory.mktemp("tiny")
    m = _manifest(_tiny_head_bundle(root, seed=0))
    _save(root / "state", m, _head(seed=9, n_in=12, n_out=10))
    return m, root / "state"


@settings(deadline=None, max_examples=150)
@given(st.dictionaries(_record_keys, _json, max_size=6))
def test_a_damaged_personal_head_record_is_a_store_error_never_a_crash(tiny: tuple[Any, Path],
                                                                     changes: dict[str, Any]) -> None:
    from edgefleet.device_agent.personal import PersonalHeads
    from edgefleet.errors import StoreError

    m, state = tiny
    meta = state / "personal" / f"{m.head.sha256}.json"
    good = json.loads(meta.read_text()) if meta.exists() and meta.read_text().startswith("{\n") else None
    if good is None:  # (the file is rewritten below: start each example from a good record)
        _save(state, m, _head(seed=9, n_in=12, n_out=10))
        good = json.loads(meta.read_text())
    try:
        meta.write_text(json.dumps({**good, **changes}, default=str))
        try:
            got = PersonalHeads(state).load(m)
        except StoreError:
            return
        assert 0 <= got.global_accuracy <= 1 and 0 <= got.personal_accuracy <= 1 and got.holdout >= 0
        assert got.base == m.head.sha256
    finally:
        meta.write_text(json.dumps(good, indent=1))


@settings(deadline=None, max_examples=150)
@given(st.dictionaries(st.sampled_from(["device-id", "base", "holdout", "global-accuracy", "personal-accuracy",
                                        "global-loss", "personal-loss", "margin", "kept", "stored", "x"]),
                       st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
                       | st.text(max_size=300), max_size=10))
def test_a_hostile_devices_personal_record_is_bounded_at_the_server(rec: dict[str, Any]) -> None:
    from edgefleet.cloud_sync.federated.server_app import _personal_row, personalization_summary

    row = _personal_row(rec)
    assert set(row) == {"device_id", "base", "holdout", "global_accuracy", "personal_accuracy", "global_loss",
                        "personal_loss", "margin", "kept", "stored"}
    assert len(row["device_id"]) <= 128 and isinstance(row["holdout"], int) and row["holdout"] >= 0
    for k in ("global_accuracy", "personal_accuracy"):
        assert row[k] is None or 0 <= row[k] <= 1
    summary = personalization_summary([row])
    json.dumps(summary, allow_nan=False)  # what the registry's API accepts: no NaN, no infinity


def test_an_interrupted_write_leaves_no_lasting_debris(tmp_path: Path) -> None:
    import os
    import time

    from edgefleet.device_agent.personal import STALE_SECONDS, PersonalHeads

    m = _manifest(_tiny_head_bundle(tmp_path, seed=0))
    state = tmp_path / "state"
    _save(state, m, _head(seed=9, n_in=12, n_out=10))
    d = state / "personal"
    old = d / f".{m.head.sha256}.npz.tmp-deadbeef"  # what a kill -9 inside write_atomic leaves
    fresh = d / f".{m.head.sha256}.json.tmp-cafef00d"  # a write that may still be running
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (time.time() - STALE_SECONDS - 5,) * 2)
    PersonalHeads(state).prune()
    assert not old.exists() and fresh.exists()
    assert PersonalHeads(state).for_manifest(m) is not None
