"""TUF over the air (issue 12): a coordinator with a TUF repository sends each install job the
repository's metadata; a device in TUF mode binds the announced file (length, sha256) to the
signed target before it asks for the first byte, and installs only what verifies against the
model's delegated keys. Deployments the coordinator cannot trust are refused at the API (issue 13).
Real python-tuf metadata, real Ed25519 keys and bundles, the in-memory broker (no sockets)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from edgefleet import trust
from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.coordinator.rows import Deployment, Job
from edgefleet.cloud_sync.coordinator.service import Coordinator, bundle_identity
from edgefleet.cloud_sync.device import DeviceSync
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.device_agent import tuf_mode
from edgefleet.errors import (
    MetadataExpiredError,
    SignatureError,
    UnknownTargetError,
    UnsignedBundleError,
)
from edgefleet.keys import generate_keypair, load_private_key
from edgefleet.trust import load_key_arg

ALL = RolloutPlan(1.0, (1.0,), 0.0)


@pytest.fixture(scope="module")
def tkeys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tuf_ota_keys")
    out: dict[str, Any] = {"dir": d}
    for name in ("root", "online", "evil", "rb", "rb2"):
        generate_keypair(d, name=name)
        out[name] = load_key_arg(d / f"{name}.key")
        out[f"{name}.pub"] = load_key_arg(d / f"{name}.pub")
    return out


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any], tkeys: dict[str, Any]) -> dict[str, Path]:
    from agent_helpers import build_bundle

    d = tmp_path_factory.mktemp("tuf_ota_bundles")
    return {
        "other": build_bundle(d / "other", "9", keys["priv"], seed=9, archive=True, name="doorbell"),
        "evil2": build_bundle(d / "evil2", "2", load_private_key(tkeys["dir"] / "evil.key"), seed=8, archive=True),
        "unsigned2": build_bundle(d / "unsigned2", "2", None, seed=7, archive=True),
    }


@pytest.fixture()
def repo(tmp_path: Path, keys: dict[str, Any], tkeys: dict[str, Any], archives: dict[str, Path]) -> Path:
    """root (threshold 1), online key for snapshot/timestamp; model 'dense' delegated to the fleet
    key that signs the test bundles; rollback orders to the rb key; dense 1 and 2 are signed targets."""
    r = tmp_path / "repo"
    fleet = load_key_arg(Path(keys["pub"]).with_suffix(".key"))
    trust.init_repository(r, [tkeys["root"]], 1, tkeys["online.pub"])
    trust.delegate(r, "dense", [fleet], [tkeys["root"]])
    trust.delegate_rollback(r, [tkeys["rb.pub"]], [tkeys["root"]])
    for v in ("1", "2"):
        trust.add_bundle(r, archives[v], [fleet], tkeys["online"])
    return r


def _fleet(tmp_path: Path, make_agent: Any, archives: dict[str, Path], broker: MemoryBroker, n: int = 2,
           tuf_root: Path | None = None, **coord_kw: Any) -> tuple[Coordinator, list[DeviceSync]]:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, MemoryTransport(broker, "coord"), "f1", chunk_size=4096, tick_seconds=0.05,
                        groups={f"d{i}": "g" for i in range(n)}, **coord_kw)
    coord.start()
    syncs = []
    for i in range(n):
        dev = f"d{i}"
        agent = make_agent(dev, install=archives["1"])
        if tuf_root is not None:  # provisioned after its first (factory) install: TUF mode from now on
            tuf_mode.provision_root(agent.root, tuf_root)
        s = DeviceSync(agent, lambda will, dev=dev: MemoryTransport(broker, dev, will=will), "f1", dev,
                       tmp_path / "devices" / dev / "sync", telemetry_interval=0.1, stall_seconds=0.5)
        s.start()
        syncs.append(s)
    wait_for(lambda: len(reg.devices("f1")) == n)
    return coord, syncs


def _stop(coord: Coordinator, syncs: list[DeviceSync]) -> None:
    for s in syncs:
        s.stop()
    coord.stop()


def _job(coord: Coordinator, dep: Deployment, device: str) -> Job | None:
    return next((j for j in coord.registry.jobs(dep.id) if j.device_id == device), None)


def _ended(coord: Coordinator, dep: Deployment, device: str) -> Job | None:
    j = _job(coord, dep, device)
    return j if j is not None and j.status in P.TERMINAL_STATES else None


def test_tuf_ota_installs_the_signed_target_and_persists_metadata(tmp_path: Path, make_agent: Any,
                                                                  archives: dict[str, Path], repo: Path) -> None:
    broker = MemoryBroker()
    seen: list[P.Desired] = []
    spy = MemoryTransport(broker, "spy")
    spy.on_message(lambda t, p: seen.append(P.Desired.parse(p)) if p and t.endswith("/desired") else None)
    spy.connect()
    spy.subscribe(f"{P.PREFIX}/f1/devices/+/down/desired", qos=1)
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, tuf_root=repo / "metadata" / "1.root.json",
                          tuf_repo=repo)
    try:
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
        assert all(s.agent.active_version == "2" for s in syncs)
        wait_for(lambda: seen)
        d = seen[0]
        assert d.model == "dense" and d.tuf and "metadata/timestamp.json" in d.tuf
        assert "metadata/1.root.json" in d.tuf and any(k.endswith(".dense.json") for k in d.tuf)
        for s in syncs:  # python-tuf persisted what it verified: rollback protection for the next job
            assert (tuf_mode.tuf_dir(s.agent.root) / "metadata" / "timestamp.json").is_file()
            assert s.stats["requested"] > 0
    finally:
        _stop(coord, syncs)


def _forged(d: P.Desired, **changes: Any) -> P.Desired:
    changes.setdefault("job_id", "forged-" + d.job_id[:40])
    return dataclasses.replace(d, **changes)


def _publish_as_attacker(broker: MemoryBroker, device: str, d: P.Desired) -> None:
    t = MemoryTransport(broker, f"attacker-{time.monotonic_ns()}")
    t.connect()
    t.publish(P.down_topic("f1", device, P.Down.DESIRED), d.to_bytes(), qos=1, retain=True)


def _refused_before_download(broker: MemoryBroker, s: DeviceSync, d: P.Desired, reason: str) -> None:
    updates: list[P.JobUpdate] = []
    watch = MemoryTransport(broker, f"watch-{time.monotonic_ns()}")
    watch.on_message(lambda t, p: updates.append(P.JobUpdate.parse(p)) if t.endswith("/up/job") else None)
    watch.connect()
    watch.subscribe(P.up_topic("f1", s.device_id, P.Up.JOB), qos=1)
    requested = s.stats["requested"]
    _publish_as_attacker(broker, s.device_id, d)
    final = wait_for(lambda: next((u for u in updates if u.job_id == d.job_id and u.status in P.TERMINAL_STATES),
                                  None))
    assert (final.status, final.reason) == ("REJECTED", reason), final
    assert not any(u.status == "DOWNLOADING" for u in updates if u.job_id == d.job_id)
    assert s.stats["requested"] == requested  # not one chunk asked for
    transfers = s.dir / "transfers"
    assert not transfers.exists() or not any(transfers.iterdir())  # nothing preallocated
    assert s.agent.active_version == "1"


def test_forged_size_hash_and_tampered_metadata_are_refused_before_the_first_byte(
        tmp_path: Path, make_agent: Any, archives: dict[str, Path], repo: Path) -> None:
    """Someone who can publish to a device's topic (a stolen coordinator credential, a broker bug)
    sends a job whose file is not the signed target: 64 GiB, another hash, tampered metadata."""
    broker = MemoryBroker()
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, n=1, tuf_root=repo / "metadata" / "1.root.json",
                          tuf_repo=repo)
    s = syncs[0]
    try:
        coord.add_artifact(archives["2"].read_bytes())
        info = coord._file(hashlib.sha256(archives["2"].read_bytes()).hexdigest())[0]
        tuf = {k: v.decode() for k, v in trust.client_metadata(repo, "dense").items()}
        good = P.Desired("job-good-1", P.JobAction.INSTALL.value, "dep-x", "2", info, tuf=tuf, model="dense")
        huge = dataclasses.replace(info, size=64 << 30, chunk_size=1 << 20)  # 65,536 chunks: the protocol's limit
        _refused_before_download(broker, s, _forged(good, file=huge), "target_mismatch")
        other_hash = dataclasses.replace(info, file_id="ab" * 32)
        _refused_before_download(broker, s, _forged(good, job_id="forged-hash", file=other_hash), "target_mismatch")
        # metadata edited in transit (the timestamp, which a client always fetches, names a newer snapshot) and
        # not re-signed: python-tuf refuses the signature
        ts = json.loads(tuf["metadata/timestamp.json"])
        ts["signed"]["version"] += 1
        ts["signed"]["meta"]["snapshot.json"]["version"] += 1
        tampered = {**tuf, "metadata/timestamp.json": json.dumps(ts)}
        _refused_before_download(broker, s, _forged(good, job_id="forged-meta", file=huge, tuf=tampered),
                                 "metadata_threshold")
        # a version that is no signed target
        _refused_before_download(broker, s, _forged(good, job_id="forged-ver", target_version="7"), "unknown_target")
        # no metadata at all, to a device in TUF mode
        _refused_before_download(broker, s, _forged(good, job_id="forged-none", tuf=None), "no_repository")
        # bad metadata file names are a malformed message (dropped, counted), never written
        bad = _forged(good, job_id="forged-name").to_dict()
        bad["tuf"] = {"metadata/../../x.json": "{}"}
        before = s.malformed
        t = MemoryTransport(broker, "attacker-names")
        t.connect()
        t.publish(P.down_topic("f1", "d0", P.Down.DESIRED), json.dumps(bad).encode(), qos=1)
        wait_for(lambda: s.malformed > before)
        # and the real job still installs afterwards
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
        assert s.agent.active_version == "2"
    finally:
        _stop(coord, syncs)


def _outcome(broker: MemoryBroker, s: DeviceSync, d: P.Desired) -> P.JobUpdate:
    updates: list[P.JobUpdate] = []
    watch = MemoryTransport(broker, f"watch-{time.monotonic_ns()}")
    watch.on_message(lambda t, p: updates.append(P.JobUpdate.parse(p)) if t.endswith("/up/job") else None)
    watch.connect()
    watch.subscribe(P.up_topic("f1", s.device_id, P.Up.JOB), qos=1)
    _publish_as_attacker(broker, s.device_id, d)
    return wait_for(lambda: next((u for u in updates if u.job_id == d.job_id and u.status in P.TERMINAL_STATES),
                                 None))


def test_rollback_orders_over_mqtt_are_signed_by_the_rollback_role(
        tmp_path: Path, make_agent: Any, archives: dict[str, Path], repo: Path, keys: dict[str, Any],
        tkeys: dict[str, Any]) -> None:
    """Finding 5 over the air: the coordinator's --signing-key is the TUF rollback role's key and its rollback jobs
    carry the repository's metadata; a device in TUF mode executes an order only when python-tuf finds the rollback
    role's threshold among its signatures. An order signed by the device's flat trusted key (which is also the
    model's delegated bundle key) or by the online key is refused, named, and the device stays on its version."""
    from edgefleet.cloud_sync.wire.orders import RollbackOrder
    from edgefleet.errors import ConfigError

    rb = load_private_key(tkeys["dir"] / "rb.key")
    with pytest.raises(ConfigError, match="not a key of the 'rollback' role"):  # a bundle key as --signing-key
        Coordinator(Registry(f"sqlite:///{tmp_path / 'x.db'}"), MemoryTransport(MemoryBroker(), "x"), "f1",
                    tuf_repo=repo, signing_key=keys["priv"])
    broker = MemoryBroker()
    seen: list[P.Desired] = []
    spy = MemoryTransport(broker, "spy")
    spy.on_message(lambda t, p: seen.append(P.Desired.parse(p)) if p and t.endswith("/desired") else None)
    spy.connect()
    spy.subscribe(f"{P.PREFIX}/f1/devices/+/down/desired", qos=1)
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, n=1, tuf_root=repo / "metadata" / "1.root.json",
                          tuf_repo=repo, signing_key=rb)
    s = syncs[0]
    try:
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
        assert s.agent.active_version == "2"
        tuf = {k: v.decode() for k, v in trust.client_metadata(repo, "dense").items()}
        now = time.time()

        def order(job: str, *signers: Any, seq: int = 1 << 50) -> P.Desired:
            doc = RollbackOrder("f1", "d0", dep.id, job, "2", "1", seq, now, now + 3600).sign(list(signers))
            return P.Desired(job, P.JobAction.ROLLBACK.value, dep.id, "1", rollback_to="1", rollback_order=doc,
                             tuf=tuf, model="dense")

        for job, signer in (("by-fleet-key", keys["priv"]), ("by-online-key", load_private_key(tkeys["dir"] /
                                                                                                  "online.key"))):
            u = _outcome(broker, s, order(job, signer))
            assert (u.status, u.reason) == ("REJECTED", "order_key_not_delegated"), u
            assert s.agent.active_version == "2"
        u = _outcome(broker, s, dataclasses.replace(order("no-metadata", rb), tuf=None))
        assert (u.status, u.reason) == ("REJECTED", "no_repository") and s.agent.active_version == "2"
        # the coordinator's own order: signed by the rollback key, sent with the metadata, executed
        coord.set_state(dep.id, "rollback")
        rb_job = wait_for(lambda: next((j for j in coord.registry.jobs(dep.id) if j.action == "rollback"
                                        and j.status in P.TERMINAL_STATES), None), 30)
        assert (rb_job.status, rb_job.reason) == ("SUCCEEDED", "rolled_back"), rb_job
        assert s.agent.active_version == "1"
        sent = next(d for d in seen if d.job_id == rb_job.job_id)
        assert sent.tuf and "metadata/timestamp.json" in sent.tuf and sent.rollback_order is not None
        assert s.stats["orders_refused"] == 3
    finally:
        spy.close()
        _stop(coord, syncs)


def test_a_rollback_role_of_threshold_two_needs_both_coordinator_keys(
        tmp_path: Path, make_agent: Any, archives: dict[str, Path], repo: Path, tkeys: dict[str, Any]) -> None:
    """Orders carry several signatures: with a rollback threshold of 2 a coordinator given one of the keys does not
    start (its orders would all be refused); given both, each order carries both signatures and is executed."""
    from edgefleet.errors import ConfigError

    trust.delegate_rollback(repo, [tkeys["rb2.pub"]], [tkeys["root"]], threshold=2, online_key=tkeys["online"])
    rb, rb2 = (load_private_key(tkeys["dir"] / f"{n}.key") for n in ("rb", "rb2"))
    with pytest.raises(ConfigError, match="needs 2 signatures on an order; 1 signing key"):
        Coordinator(Registry(f"sqlite:///{tmp_path / 'x.db'}"), MemoryTransport(MemoryBroker(), "x"), "f1",
                    tuf_repo=repo, signing_key=rb)
    broker = MemoryBroker()
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, n=1, tuf_root=repo / "metadata" / "1.root.json",
                          tuf_repo=repo, signing_key=[rb, rb2])
    s = syncs[0]
    try:
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 30)
        coord.set_state(dep.id, "rollback")
        rb_job = wait_for(lambda: next((j for j in coord.registry.jobs(dep.id) if j.action == "rollback"
                                        and j.status in P.TERMINAL_STATES), None), 30)
        assert (rb_job.status, rb_job.reason) == ("SUCCEEDED", "rolled_back"), rb_job
        assert s.agent.active_version == "1"
        order = P.Desired.parse(rb_job.desired.encode()).rollback_order
        assert order is not None and len(order["signatures"]) == 2
        # the same order with one of its two signatures: refused, named
        now = time.time()
        from edgefleet.cloud_sync.wire.orders import RollbackOrder

        one = RollbackOrder("f1", "d0", dep.id, "one-sig", "2", "1", 1 << 50, now, now + 3600).sign(rb)
        tuf = {k: v.decode() for k, v in trust.client_metadata(repo, "dense").items()}
        u = _outcome(broker, s, P.Desired("one-sig", P.JobAction.ROLLBACK.value, dep.id, "1", rollback_to="1",
                                          rollback_order=one, tuf=tuf, model="dense"))
        assert (u.status, u.reason) == ("REJECTED", "order_threshold"), u
    finally:
        _stop(coord, syncs)


def test_a_job_without_metadata_or_with_expired_metadata_is_refused(
        tmp_path: Path, make_agent: Any, archives: dict[str, Path], repo: Path, tkeys: dict[str, Any]) -> None:
    broker = MemoryBroker()
    root = repo / "metadata" / "1.root.json"
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, n=1, tuf_root=root)  # no --tuf-repo
    try:
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        j = wait_for(lambda: _ended(coord, dep, "d0"))
        assert (j.status, j.reason) == ("REJECTED", "no_repository")
        assert syncs[0].agent.active_version == "1" and syncs[0].stats["requested"] == 0
    finally:
        _stop(coord, syncs)
    # an indefinite freeze: a replayed job carries metadata whose timestamp has expired
    v2 = archives["2"].read_bytes()
    coord_file = P.FileInfo(hashlib.sha256(v2).hexdigest(), len(v2), 4096)
    trust.publish(repo, tkeys["online"], timestamp_expires=dt.timedelta(days=-1))
    with pytest.raises(MetadataExpiredError):  # the coordinator itself no longer deploys from this repository
        bundle_identity(archives["2"].read_bytes(), None, repo)
    broker = MemoryBroker()
    (tmp_path / "b").mkdir()
    coord, syncs = _fleet(tmp_path / "b", make_agent, archives, broker, n=1, tuf_root=root)
    try:
        stale = {k: v.decode() for k, v in trust.client_metadata(repo, "dense").items()}
        job = P.Desired("job-stale-1", P.JobAction.INSTALL.value, "dep-x", "2", coord_file, tuf=stale, model="dense")
        _refused_before_download(broker, syncs[0], job, "metadata_expired")
    finally:
        _stop(coord, syncs)


def test_a_job_for_another_model_is_refused_before_download(tmp_path: Path, make_agent: Any,
                                                            archives: dict[str, Path], extra: dict[str, Path]) -> None:
    """Without TUF too: the job names its model, and a device serving another refuses it at once."""
    broker = MemoryBroker()
    coord, syncs = _fleet(tmp_path, make_agent, archives, broker, n=1)
    try:
        dep = coord.create_deployment(extra["other"].read_bytes(), "g", ALL)
        j = wait_for(lambda: _ended(coord, dep, "d0"))
        assert (j.status, j.reason) == ("REJECTED", "wrong_model")
        assert syncs[0].stats["requested"] == 0 and syncs[0].agent.active_version == "1"
    finally:
        _stop(coord, syncs)


def test_deploy_refuses_unsigned_untrusted_and_undelegated_bundles(
        keys: dict[str, Any], archives: dict[str, Path], extra: dict[str, Path], repo: Path) -> None:
    from edgefleet.keys import load_public_key

    fleet = [load_public_key(keys["pub"])]
    v2, evil2, unsigned2 = (archives["2"].read_bytes(), extra["evil2"].read_bytes(), extra["unsigned2"].read_bytes())
    assert bundle_identity(v2, fleet) == ("dense", "2")
    with pytest.raises(UnsignedBundleError):
        bundle_identity(unsigned2, fleet)
    with pytest.raises(SignatureError):
        bundle_identity(evil2, fleet)
    with pytest.raises(SignatureError, match="trusts no bundle key"):
        bundle_identity(v2, ())  # cloud serve without --trust or --tuf-repo
    assert bundle_identity(v2, (), repo) == ("dense", "2")
    with pytest.raises(UnknownTargetError):
        bundle_identity(extra["other"].read_bytes(), (), repo)  # a model the repository does not delegate
    with pytest.raises(SignatureError):
        bundle_identity(evil2, (), repo)  # same name and version as the target, other bytes and key
    with pytest.raises(SignatureError):
        bundle_identity(unsigned2, (), repo)


def test_deploy_of_an_expired_repository_is_refused(archives: dict[str, Path], repo: Path,
                                                    tkeys: dict[str, Any]) -> None:
    trust.publish(repo, tkeys["online"], timestamp_expires=dt.timedelta(days=-1))
    with pytest.raises(MetadataExpiredError):
        bundle_identity(archives["2"].read_bytes(), (), repo)


def test_cloud_serve_refuses_deployments_without_trust(tmp_path: Path, archives: dict[str, Path]) -> None:
    """The API answers a refused bundle with a 4xx and its message; nothing is deployed."""
    import httpx
    from helpers import serve_api

    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f", groups={"d1": "g"}, trusted_keys=())
    with serve_api(coord, "tok") as url:
        r = httpx.post(f"{url}/v1/deployments", params={"group": "g"}, content=archives["2"].read_bytes(),
                       headers={"Authorization": "Bearer tok"})
    assert 400 <= r.status_code < 500 and "trusts no bundle key" in r.text
    assert reg.deployments("f") == []
