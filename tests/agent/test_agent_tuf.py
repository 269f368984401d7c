"""The device side of TUF for local installs (issue 12): a device provisioned with a pinned TUF
root checks every archive against real python-tuf metadata before staging it, accepts only a
signature by a key delegated to its own model, and keeps serving the old version through every
refusal (each with a named reason). Real Ed25519 keys, real metadata, real bundles."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from agent_helpers import build_bundle

from edgefleet import trust
from edgefleet.cli import main as cli_main
from edgefleet.device_agent import tuf_mode
from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.config import AgentConfig, UpdateConfig
from edgefleet.device_agent.updates import JobStatus
from edgefleet.errors import ConfigError, MetadataFormatError, RollbackError, UpdateRejectedError
from edgefleet.keys import generate_keypair, load_private_key
from edgefleet.trust import KeyArg, Repository, load_key_arg

UTC = dt.timezone.utc
X = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)
KEY_NAMES = ("r1", "r2", "online", "cam", "door", "evil", "rb", "rb2")


@pytest.fixture(scope="module")
def tkeys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tuf_keys")
    for name in KEY_NAMES:
        generate_keypair(d, name=name)
    out: dict[str, Any] = {"dir": d}
    for name in KEY_NAMES:
        out[name] = load_key_arg(d / f"{name}.key")
        out[f"{name}.pub"] = load_key_arg(d / f"{name}.pub")
    return out


@pytest.fixture(scope="module")
def tbundles(tmp_path_factory: pytest.TempPathFactory, tkeys: dict[str, Any]) -> dict[str, Path]:
    """.efb archives: tag -> path (name, version, signing key)."""
    d = tmp_path_factory.mktemp("tuf_bundles")
    out: dict[str, Path] = {}
    for tag, name, version, key, seed in [
        ("cam1", "cam", "1.0.0", "cam", 1),
        ("cam2", "cam", "2.0.0", "cam", 2),
        ("cam3", "cam", "3.0.0", "cam", 3),
        ("cam2_evil", "cam", "2.0.0", "evil", 4),
        ("cam2_online", "cam", "2.0.0", "online", 5),
        ("cam2_rb", "cam", "2.0.0", "rb", 8),
        ("door1", "door", "1.0.0", "door", 6),
        ("door5", "door", "5.0.0", "door", 7),
    ]:
        out[tag] = build_bundle(d / tag, version, load_private_key(tkeys["dir"] / f"{key}.key"), seed=seed,
                                archive=True, name=name)
    return out


@pytest.fixture()
def repo(tmp_path: Path, tkeys: dict[str, Any], tbundles: dict[str, Path]) -> Path:
    """root r1+r2 (threshold 2); online key for snapshot/timestamp; cam -> cam key, door -> door key;
    rollback orders -> rb key (threshold 1); cam 1.0.0, cam 2.0.0, door 1.0.0 and door 5.0.0 published."""
    r = tmp_path / "repo"
    roots = [tkeys["r1"], tkeys["r2"]]
    trust.init_repository(r, roots, 2, tkeys["online.pub"])
    trust.delegate(r, "cam", [tkeys["cam.pub"]], roots)
    trust.delegate(r, "door", [tkeys["door.pub"]], roots)
    trust.delegate_rollback(r, [tkeys["rb.pub"]], roots)
    for tag, key in (("cam1", "cam"), ("cam2", "cam"), ("door1", "door"), ("door5", "door")):
        trust.add_bundle(r, tbundles[tag], [tkeys[key]], tkeys["online"])
    return r


@pytest.fixture()
def device(tmp_path: Path, tkeys: dict[str, Any], repo: Path) -> Callable[..., AgentConfig]:
    """A provisioned camera. Its flat trusted set holds the evil and the online key (a fleet key and
    the coordinator's, as a device has for rollback orders): TUF mode must not accept them for bundles."""
    state = tmp_path / "state"
    state.mkdir()
    tuf_mode.provision_root(state, repo / "metadata" / "1.root.json")

    def make(**changes: Any) -> AgentConfig:
        cfg = AgentConfig(state_dir=str(state), device_id="cam-7", model_name="cam", hardware_tags=("test-board",),
                          trusted_keys=(str(tkeys["dir"] / "evil.pub"), str(tkeys["dir"] / "online.pub")),
                          update=UpdateConfig(probation_seconds=0.0))
        return dataclasses.replace(cfg, **changes)

    return make


def forge(repo: Path, role: str, signers: list[KeyArg], mutate: Callable[[Any], None]) -> None:
    """Whoever holds ``signers`` writes the next version of ``role``."""
    r = Repository(repo)
    md = r.load(role)
    mutate(md.signed)
    md.signed.version += 1
    md.signatures.clear()
    for k in signers:
        md.sign(trust._signer(k.private), append=True)
    r.write_role(role, md)


def list_target(path: str, archive: Path) -> Callable[[Any], None]:
    from tuf.api.metadata import TargetFile

    def mutate(signed: Any) -> None:
        signed.targets[path] = TargetFile.from_file(path, str(archive), ["sha256"])

    return mutate


def refused(agent: Agent, archive: Path, repo: Path, reason: str, serving: str = "1.0.0") -> str:
    before = agent.predict(X)
    job = agent.install(archive, repo=repo)
    assert job.status is JobStatus.REJECTED and job.reason == reason, (job.status, job.reason, job.message)
    assert agent.active_version == serving and np.array_equal(agent.predict(X), before)
    assert agent.status()["active"]["version"] == serving
    return job.message


# ---------------------------------------------------------------- the good path


def test_installs_a_delegated_bundle_and_persists_tuf_state(device: Callable[..., AgentConfig], repo: Path,
                                                            tbundles: dict[str, Path]) -> None:
    cfg = device()
    with Agent(cfg) as agent:
        assert agent.tuf_mode
        job = agent.install(tbundles["cam1"], repo=repo)
        assert job.status is JobStatus.SUCCEEDED, (job.reason, job.message)
        assert agent.active_version == "1.0.0"
    tuf = Path(cfg.state_dir) / "tuf"
    assert {"root.json", "timestamp.json", "snapshot.json", "targets.json", "cam.json"} <= {
        p.name for p in (tuf / "metadata").iterdir()}
    assert (tuf / "clock-floor").is_file() and len(list((tuf / "keys").glob("*.pub"))) == 1
    # after a restart the stored version loads (the delegated key re-verifies it) and v2 installs
    with Agent(cfg) as agent:
        assert agent.active_version == "1.0.0" and agent.predict(X).shape == (2, 3)
        assert agent.install(tbundles["cam2"], repo=repo).status is JobStatus.SUCCEEDED
        assert agent.active_version == "2.0.0"


def test_provisioning_from_config_and_first_install_sets_identity(tmp_path: Path, repo: Path,
                                                                  tbundles: dict[str, Path]) -> None:
    cfg = AgentConfig(state_dir=str(tmp_path / "s2"), hardware_tags=("test-board",),
                      tuf_root=str(repo / "metadata" / "1.root.json"), update=UpdateConfig(probation_seconds=0.0))
    with Agent(cfg) as agent:  # no flat keys at all: the delegation is the trust
        assert agent.tuf_mode
        assert agent.install(tbundles["door1"], repo=repo).status is JobStatus.SUCCEEDED
        job = agent.install(tbundles["cam2"], repo=repo)  # identity is now door (the first install)
        assert job.status is JobStatus.REJECTED and job.reason == "wrong_model"
    # the same option from agent.toml, relative to the file's folder
    from edgefleet.device_agent.config import load_config

    shutil.copy(repo / "metadata" / "1.root.json", tmp_path / "root.json")
    (tmp_path / "agent.toml").write_text('[agent]\nstate_dir = "s3"\ntuf_root = "root.json"\n')
    loaded = load_config(tmp_path / "agent.toml")
    assert loaded.tuf_root == str(tmp_path / "root.json")


# ---------------------------------------------------------------- refusals: the old version keeps serving


def test_wrong_model_signed_by_its_own_delegated_key_refused(device: Callable[..., AgentConfig], repo: Path,
                                                             tbundles: dict[str, Path]) -> None:
    """door 5.0.0 is a valid signed target, signed by door's own delegated key: not for a camera."""
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        msg = refused(agent, tbundles["door5"], repo, "wrong_model")
        assert "'door'" in msg and "'cam'" in msg
    # the same with no assigned name: the device serves cam
    with Agent(device(model_name="")) as agent:
        refused(agent, tbundles["door5"], repo, "wrong_model")


def test_bundle_signed_by_an_undelegated_key_refused(device: Callable[..., AgentConfig], repo: Path,
                                                     tbundles: dict[str, Path], tkeys: dict[str, Any]) -> None:
    """cam's metadata (validly signed by the cam key) lists a cam 3.0.0 whose bundle is signed by a key
    the device trusts in its flat set but that is not delegated to cam: refused."""
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        evil = tbundles["cam2_evil"]
        forge(repo, "cam", [tkeys["cam"]], list_target("cam/2.0.0.efb", evil))
        trust.publish(repo, tkeys["online"])
        msg = refused(agent, evil, repo, "key_not_delegated")
        assert "not signed by a key delegated to model 'cam'" in msg


def test_the_coordinators_online_key_is_never_a_bundle_key(device: Callable[..., AgentConfig], repo: Path,
                                                           tbundles: dict[str, Path], tkeys: dict[str, Any]) -> None:
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        by_online = tbundles["cam2_online"]
        forge(repo, "cam", [tkeys["cam"]], list_target("cam/2.0.0.efb", by_online))
        trust.publish(repo, tkeys["online"])
        refused(agent, by_online, repo, "key_not_delegated")
        # and the online key cannot list targets itself: cam's role signed by it is refused
        forge(repo, "cam", [tkeys["online"]], list_target("cam/2.0.0.efb", by_online))
        trust.publish(repo, tkeys["online"])
        refused(agent, by_online, repo, "metadata_threshold")


def test_expired_timestamp_refused(device: Callable[..., AgentConfig], repo: Path, tbundles: dict[str, Path],
                                   tkeys: dict[str, Any]) -> None:
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        past = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(days=2)
        forge(repo, "timestamp", [tkeys["online"]], lambda s: setattr(s, "expires", past))
        msg = refused(agent, tbundles["cam2"], repo, "metadata_expired")
        assert "timestamp.json is expired" in msg


def test_metadata_rollback_after_restart_refused(device: Callable[..., AgentConfig], repo: Path,
                                                 tbundles: dict[str, Path], tkeys: dict[str, Any],
                                                 tmp_path: Path) -> None:
    cfg = device()
    old_mirror = tmp_path / "old-mirror"
    shutil.copytree(repo, old_mirror)  # still valid (unexpired) metadata: cam 1.0.0, 2.0.0
    trust.add_bundle(repo, tbundles["cam3"], [tkeys["cam"]], tkeys["online"])
    with Agent(cfg) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
    with Agent(cfg) as agent:  # a restart: the versions seen are persisted in STATE/tuf
        refused(agent, tbundles["cam2"], old_mirror, "metadata_rollback")
        # the current repository still works
        assert agent.install(tbundles["cam2"], repo=repo).status is JobStatus.SUCCEEDED


def test_hash_mismatch_extra_bytes_and_unlisted_version_refused(device: Callable[..., AgentConfig], repo: Path,
                                                                tbundles: dict[str, Path], tmp_path: Path) -> None:
    flipped, longer = tmp_path / "flipped.efb", tmp_path / "longer.efb"
    data = bytearray(tbundles["cam2"].read_bytes())
    longer.write_bytes(bytes(data) + b"\0" * 512)
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        assert "does not match the signed target" in refused(agent, flipped, repo, "target_mismatch")
        assert "bytes but the signed target" in refused(agent, longer, repo, "target_mismatch")
        refused(agent, tbundles["cam3"], repo, "unknown_target")  # signed by the cam key, never published
        refused(agent, tbundles["cam2"], tmp_path / "nowhere", "no_repository")
        job = agent.install(tbundles["cam2"])  # TUF mode: no repository, no install
        assert job.status is JobStatus.REJECTED and job.reason == "no_repository"
        assert agent.install(tbundles["cam2"], repo=repo).status is JobStatus.SUCCEEDED


def test_a_bundle_directory_is_refused_archive_required(device: Callable[..., AgentConfig], repo: Path,
                                                       tbundles: dict[str, Path]) -> None:
    """A signed target is an archive's length and sha256: a device in TUF mode installs the .efb itself, never
    a bundle directory (whose bytes no target names), even one that holds the very same signed bundle."""
    with Agent(device()) as agent:
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        directory = tbundles["cam2"].with_suffix("")
        assert directory.is_dir()
        assert ".efb archive" in refused(agent, directory, repo, "archive_required")
        assert agent.install(tbundles["cam2"], repo=repo).status is JobStatus.SUCCEEDED


def test_without_tuf_mode_a_repository_is_a_config_error(agent_config: Any, bundles: dict[str, Path],
                                                         repo: Path) -> None:
    with Agent(agent_config()) as agent:
        assert not agent.tuf_mode
        assert agent.install(bundles["1"]).status is JobStatus.SUCCEEDED  # unchanged: the flat trusted keys
        with pytest.raises(ConfigError, match="trust-root"):
            agent.install(bundles["2"], repo=repo)


def _key(tkeys: dict[str, Any], *names: str) -> Any:
    keys = [load_private_key(tkeys["dir"] / f"{n}.key") for n in names]
    return keys[0] if len(keys) == 1 else keys


def test_rollback_order_in_tuf_mode_still_needs_the_signed_target(device: Callable[..., AgentConfig], repo: Path,
                                                                   tbundles: dict[str, Path],
                                                                   tkeys: dict[str, Any]) -> None:
    """An older version comes back only with a single-use order signed by the repository's rollback role AND
    as a signed target of the device's model (the TUF check runs first)."""
    from edgefleet.device_agent.orders import make_rollback_order

    order = make_rollback_order(_key(tkeys, "rb"), tbundles["cam1"].with_suffix(""))
    with Agent(device()) as agent:
        for tag in ("cam1", "cam2"):
            assert agent.install(tbundles[tag], repo=repo).status is JobStatus.SUCCEEDED
        job = agent.install(tbundles["cam1"], repo=repo, rollback_order=order)
        assert job.status is JobStatus.SUCCEEDED and agent.active_version == "1.0.0", job.message
        assert agent.install(tbundles["cam2"], repo=repo).status is JobStatus.SUCCEEDED
        again = agent.install(tbundles["cam1"], repo=repo, rollback_order=order)
        assert again.status is JobStatus.REJECTED and again.reason == "order_replayed"
        flipped = bytearray(tbundles["cam1"].read_bytes())
        flipped[len(flipped) // 2] ^= 1
        bad = tbundles["cam1"].parent / "flipped-cam1.efb"
        bad.write_bytes(bytes(flipped))
        fresh = make_rollback_order(_key(tkeys, "rb"), tbundles["cam1"].with_suffix(""))
        refused(agent, bad, repo, "target_mismatch", serving="2.0.0")
        assert agent.install(bad, repo=repo, rollback_order=fresh).reason == "target_mismatch"
        assert agent.active_version == "2.0.0"


def test_rollback_order_signed_by_a_flat_or_model_key_refused_in_tuf_mode(
        device: Callable[..., AgentConfig], repo: Path, tbundles: dict[str, Path], tkeys: dict[str, Any]) -> None:
    """Finding 5: the flat keys the device trusts (a fleet key, the coordinator's online key), the model's own
    delegated key and the root keys do not sign rollback orders on a TUF device: only the rollback role does.
    Without TUF the same device accepts a flat-key order, as before."""
    from edgefleet.device_agent.orders import make_rollback_order

    cam1 = tbundles["cam1"].with_suffix("")
    with Agent(device()) as agent:
        for tag in ("cam1", "cam2"):
            assert agent.install(tbundles[tag], repo=repo).status is JobStatus.SUCCEEDED
        for signer in ("evil", "online", "cam", "r1"):
            job = agent.install(tbundles["cam1"], repo=repo, rollback_order=make_rollback_order(_key(tkeys, signer), cam1))
            assert job.status is JobStatus.REJECTED and job.reason == "order_key_not_delegated", (signer, job.message)
            assert "signed by 0 of the 'rollback' role's keys, threshold 1" in job.message
            assert agent.active_version == "2.0.0"
        # a rollback-key signature added to an order signed by others still counts (the threshold is 1)
        both = make_rollback_order(_key(tkeys, "evil", "rb"), cam1)
        assert agent.install(tbundles["cam1"], repo=repo, rollback_order=both).status is JobStatus.SUCCEEDED
        assert agent.active_version == "1.0.0"


def test_rollback_role_threshold_two_needs_two_signatures(device: Callable[..., AgentConfig], repo: Path,
                                                          tbundles: dict[str, Path], tkeys: dict[str, Any]) -> None:
    from edgefleet.device_agent.orders import make_rollback_order

    roots = [tkeys["r1"], tkeys["r2"]]
    trust.delegate_rollback(repo, [tkeys["rb2.pub"]], roots, threshold=2, online_key=tkeys["online"])
    cam1 = tbundles["cam1"].with_suffix("")
    with Agent(device()) as agent:
        for tag in ("cam1", "cam2"):
            assert agent.install(tbundles[tag], repo=repo).status is JobStatus.SUCCEEDED
        for keys in (("rb",), ("rb2",), ("rb", "rb"), ("rb", "cam")):
            job = agent.install(tbundles["cam1"], repo=repo, rollback_order=make_rollback_order(_key(tkeys, *keys), cam1))
            assert job.status is JobStatus.REJECTED and job.reason == "order_threshold", (keys, job.message)
            assert "signed by 1 of the 'rollback' role's keys, threshold 2" in job.message
        job = agent.install(tbundles["cam1"], repo=repo, rollback_order=make_rollback_order(_key(tkeys, "rb", "rb2"),
                                                                                             cam1))
        assert job.status is JobStatus.SUCCEEDED and agent.active_version == "1.0.0", job.message


def test_rollback_orders_need_a_rollback_role_and_a_revoked_rollback_key_no_longer_signs(
        device: Callable[..., AgentConfig], repo: Path, tbundles: dict[str, Path], tkeys: dict[str, Any],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.device_agent.orders import make_rollback_order

    roots = [tkeys["r1"], tkeys["r2"]]
    cam1 = tbundles["cam1"].with_suffix("")
    # the CLI: revoke the rollback key (recorded as revoked), then delegate another one
    root_args = ["--root-key", str(tkeys["dir"] / "r1.key"), "--root-key", str(tkeys["dir"] / "r2.key")]
    assert cli_main(["keys", "revoke", "--repo", str(repo), "--rollback", "--key", str(tkeys["dir"] / "rb.pub"),
                     *root_args, "--online-key", str(tkeys["dir"] / "online.key")]) == 0
    with Agent(device()) as agent:
        for tag in ("cam1", "cam2"):
            assert agent.install(tbundles[tag], repo=repo).status is JobStatus.SUCCEEDED
        job = agent.install(tbundles["cam1"], repo=repo, rollback_order=make_rollback_order(_key(tkeys, "rb"), cam1))
        assert job.status is JobStatus.REJECTED and job.reason == "order_key_not_delegated", job.message
        assert cli_main(["repo", "delegate-rollback", str(tkeys["dir"] / "rb2.pub"), "--repo", str(repo), *root_args,
                         "--online-key", str(tkeys["dir"] / "online.key")]) == 0
        capsys.readouterr()
        job = agent.install(tbundles["cam1"], repo=repo, rollback_order=make_rollback_order(_key(tkeys, "rb2"), cam1))
        assert job.status is JobStatus.SUCCEEDED, job.message
    with pytest.raises(trust.RevokedKeyError):
        trust.delegate_rollback(repo, [tkeys["rb.pub"]], roots)
    # a repository that delegates no rollback role: every order is refused, named
    bare = tmp_path / "bare"
    trust.init_repository(bare, roots, 2, tkeys["online.pub"])
    trust.delegate(bare, "cam", [tkeys["cam.pub"]], roots)
    for tag in ("cam1", "cam2"):
        trust.add_bundle(bare, tbundles[tag], [tkeys["cam"]], tkeys["online"])
    state = tmp_path / "bare-state"
    state.mkdir()
    tuf_mode.provision_root(state, bare / "metadata" / "1.root.json")
    cfg = dataclasses.replace(device(), state_dir=str(state))
    with Agent(cfg) as agent:
        for tag in ("cam1", "cam2"):
            assert agent.install(tbundles[tag], repo=bare).status is JobStatus.SUCCEEDED
        job = agent.install(tbundles["cam1"], repo=bare, rollback_order=make_rollback_order(_key(tkeys, "rb"), cam1))
        assert job.status is JobStatus.REJECTED and job.reason == "no_rollback_role", job.message
        assert "delegate-rollback" in job.message and agent.active_version == "2.0.0"


def test_the_rollback_key_cannot_sign_an_installable_bundle(device: Callable[..., AgentConfig], repo: Path,
                                                            tbundles: dict[str, Path], tkeys: dict[str, Any]) -> None:
    """Whoever holds the rollback key (the coordinator's --signing-key) cannot get a bundle installed: the
    repository tooling refuses it as a model key and its bundles as targets; a target listed by the model's
    own key whose bundle the rollback key signed is refused (key_not_delegated); the model's metadata signed
    by the rollback key is below threshold."""
    from edgefleet.errors import ThresholdError

    roots = [tkeys["r1"], tkeys["r2"]]
    by_rb = tbundles["cam2_rb"]
    with pytest.raises(ThresholdError, match="rollback-order key"):
        trust.add_bundle(repo, by_rb, [tkeys["rb"]], tkeys["online"])
    with pytest.raises(ConfigError, match="rollback-order key"):
        trust.delegate(repo, "cam", [tkeys["rb.pub"]], roots)
    for k in ("cam.pub", "online.pub", "r1.pub"):  # and no model, online or root key becomes a rollback key
        with pytest.raises(ConfigError, match="a rollback key must sign nothing else"):
            trust.delegate_rollback(repo, [tkeys[k]], roots)
    with pytest.raises(ConfigError, match="reserved"):
        trust.delegate(repo, "rollback", [tkeys["evil.pub"]], roots)
    with Agent(device(trusted_keys=(str(tkeys["dir"] / "rb.pub"),))) as agent:  # even as a flat trusted key
        assert agent.install(tbundles["cam1"], repo=repo).status is JobStatus.SUCCEEDED
        forge(repo, "cam", [tkeys["cam"]], list_target("cam/2.0.0.efb", by_rb))
        trust.publish(repo, tkeys["online"])
        refused(agent, by_rb, repo, "key_not_delegated")
        forge(repo, "cam", [tkeys["rb"]], list_target("cam/2.0.0.efb", by_rb))
        trust.publish(repo, tkeys["online"])
        refused(agent, by_rb, repo, "metadata_threshold")


# ---------------------------------------------------------------- provisioning and the CLI


def test_provisioning_is_idempotent_and_never_goes_back(tmp_path: Path, repo: Path, tkeys: dict[str, Any]) -> None:
    state = tmp_path / "st"
    state.mkdir()
    assert tuf_mode.provision_root(state, repo / "metadata" / "1.root.json").changed
    assert not tuf_mode.provision_root(state, repo / "metadata" / "1.root.json").changed
    trust.rotate_root(repo, [tkeys["r1"], tkeys["r2"]], [tkeys["r1"]], 1, tkeys["online"])
    assert tuf_mode.provision_root(state, repo / "metadata" / "2.root.json").version == 2
    with pytest.raises(RollbackError, match="only moves forward"):
        tuf_mode.provision_root(state, repo / "metadata" / "1.root.json")
    with pytest.raises(MetadataFormatError):
        tuf_mode.provision_root(state, b"{not json")


def test_cli_trust_root_install_and_refusals_are_one_line(tmp_path: Path, repo: Path, tbundles: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "cli-state")
    common = ["--state-dir", state, "--hardware-tag", "test-board", "--model-name", "cam"]

    def one_line(argv: list[str], code: int) -> str:
        rc = cli_main(argv)
        out = capsys.readouterr()
        assert rc == code, out.out + out.err
        assert "Traceback" not in out.err and out.err.count("\n") == 1 and out.err.startswith("edgefleet: error: ")
        return out.err

    # --repo before a root is pinned: a config error
    one_line(["agent", "install", str(tbundles["cam1"]), "--repo", str(repo), *common], ConfigError.exit_code)
    assert cli_main(["agent", "trust-root", str(repo / "metadata" / "1.root.json"), "--state-dir", state]) == 0
    assert "pinned TUF root v1 (threshold 2 of 2" in capsys.readouterr().out
    one_line(["agent", "trust-root", str(tmp_path / "missing.json"), "--state-dir", state], ConfigError.exit_code)
    assert cli_main(["agent", "install", str(tbundles["cam1"]), "--repo", str(repo), *common]) == 0
    capsys.readouterr()
    code = UpdateRejectedError.exit_code
    assert "wrong_model" in one_line(["agent", "install", str(tbundles["door5"]), "--repo", str(repo), *common], code)
    assert "no_repository" in one_line(["agent", "install", str(tbundles["cam2"]), *common], code)
    assert "unknown_target" in one_line(["agent", "install", str(tbundles["cam3"]), "--repo", str(repo), *common], code)
    assert cli_main(["agent", "status", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "active:    cam v1.0.0" in out and "TUF root v1 pinned" in out


def test_cli_rollback_order_from_the_rollback_role_and_bounded_order_files(
        tmp_path: Path, repo: Path, tbundles: dict[str, Path], tkeys: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    """'agent install --rollback-order FILE' in TUF mode: an order of the rollback role rolls back, one signed by
    the device's flat trusted key is refused (exit 12, named); the order file is read bounded: a FIFO, a huge
    file, invalid JSON or a JSON list are one-line config errors (exit 2), never a hang or a traceback."""
    import json
    import os
    import threading

    from edgefleet.device_agent.orders import make_rollback_order

    state = str(tmp_path / "cli-state")
    common = ["--state-dir", state, "--hardware-tag", "test-board", "--model-name", "cam",
              "--trust", str(tkeys["dir"] / "evil.pub")]
    assert cli_main(["agent", "trust-root", str(repo / "metadata" / "1.root.json"), "--state-dir", state]) == 0
    for tag in ("cam1", "cam2"):
        assert cli_main(["agent", "install", str(tbundles[tag]), "--repo", str(repo), *common]) == 0
    capsys.readouterr()
    cam1 = tbundles["cam1"].with_suffix("")

    def order_file(name: str, signer: str) -> str:
        p = tmp_path / name
        p.write_text(json.dumps(make_rollback_order(_key(tkeys, signer), cam1)))
        return str(p)

    def run(order: str, code: int) -> str:
        out: dict[str, Any] = {}
        t = threading.Thread(target=lambda: out.setdefault("rc", cli_main(
            ["agent", "install", str(tbundles["cam1"]), "--repo", str(repo), "--rollback-order", order, *common])),
            daemon=True)
        t.start()
        t.join(20)
        if t.is_alive():
            os.close(os.open(order, os.O_WRONLY | os.O_NONBLOCK))
            t.join(5)
            pytest.fail(f"blocked on {order}")
        err = capsys.readouterr().err
        assert out["rc"] == code, err
        if code:
            assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("edgefleet: error: ")
        return err

    assert "order_key_not_delegated" in run(order_file("flat.json", "evil"), UpdateRejectedError.exit_code)
    fifo = tmp_path / "order.fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in run(str(fifo), ConfigError.exit_code)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as fh:
        fh.truncate(1 << 30)
    assert "larger than the" in run(str(huge), ConfigError.exit_code)
    (tmp_path / "bad.json").write_text("{not json")
    assert "not valid JSON" in run(str(tmp_path / "bad.json"), ConfigError.exit_code)
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "not a signed order document" in run(str(tmp_path / "list.json"), ConfigError.exit_code)
    run(order_file("good.json", "rb"), 0)
    assert cli_main(["agent", "status", "--state-dir", state]) == 0
    assert "active:    cam v1.0.0" in capsys.readouterr().out
