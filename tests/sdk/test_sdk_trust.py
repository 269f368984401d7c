"""TUF metadata (edgefleet.trust, python-tuf): the repository side and verification against it.

Every test builds a real repository (real Ed25519 keys, real python-tuf metadata, real
bundles packed from the tiny test models) in a temporary directory, then plays one attack
from the TUF specification's threat model (or the wrong-model install of issue 12) and
expects a named refusal.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet import trust
from edgefleet.cli import main as cli_main
from edgefleet.errors import (
    ConfigError,
    EdgefleetError,
    MetadataExpiredError,
    MetadataFormatError,
    MixAndMatchError,
    RevokedKeyError,
    RollbackError,
    SignatureError,
    TargetMismatchError,
    ThresholdError,
    TrustError,
    UnknownModelError,
    UnknownTargetError,
    WrongModelError,
)
from edgefleet.keys import generate_keypair, load_private_key
from edgefleet.pack import pack
from edgefleet.trust import KeyArg, Repository, load_key_arg, verify_bundle

UTC = dt.timezone.utc
KEY_NAMES = ("r1", "r2", "r3", "online", "online2", "cam", "cam2", "door", "evil", "rb", "rb2")


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust_keys")
    for name in KEY_NAMES:
        generate_keypair(out, name=name)
    return out


class Keys:
    def __init__(self, d: Path) -> None:
        self.d = d

    def __getitem__(self, name: str) -> KeyArg:
        """``cam`` -> the private key (it signs); ``cam.pub`` -> the public key only."""
        return load_key_arg(self.d / (name if name.endswith(".pub") else f"{name}.key"))

    def path(self, name: str) -> str:
        return str(self.d / (name if "." in name else f"{name}.key"))


@pytest.fixture(scope="module")
def keys(keydir: Path) -> Keys:
    return Keys(keydir)


@pytest.fixture(scope="module")
def bundles(model_dir: Path, keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Archives: (name, version, signing key) -> .efb path."""
    out = tmp_path_factory.mktemp("trust_bundles")
    made: dict[str, Path] = {}
    for tag, name, version, key in [
        ("cam1", "cam", "1.0.0", "cam"),
        ("cam2", "cam", "2.0.0", "cam"),
        ("cam3", "cam", "3.0.0", "cam"),
        ("cam1_evil", "cam", "1.0.0", "evil"),
        ("cam2_by_cam2", "cam", "2.0.0", "cam2"),
        ("door1", "door", "1.0.0", "door"),
        ("door99_by_cam", "door", "99.0.0", "cam"),
        ("other1", "other", "1.0.0", "cam"),
    ]:
        _, archive = pack(
            model_dir / "digits.onnx",
            out / tag,
            name=name,
            version=version,
            private_key=load_private_key(keydir / f"{key}.key"),
            archive=True,
        )
        assert archive is not None
        made[tag] = archive
    return made


@pytest.fixture()
def repo(tmp_path: Path, keys: Keys, bundles: dict[str, Path]) -> Path:
    """root: r1+r2 (threshold 2), online key for snapshot/timestamp, cam -> cam key,
    door -> door key, cam 1.0.0 and door 1.0.0 published."""
    r = tmp_path / "repo"
    roots = [keys["r1"], keys["r2"]]
    trust.init_repository(r, roots, 2, keys["online.pub"])
    trust.delegate(r, "cam", [keys["cam.pub"]], roots)
    trust.delegate(r, "door", [keys["door.pub"]], roots)
    trust.add_bundle(r, bundles["cam1"], [keys["cam"]], keys["online"])
    trust.add_bundle(r, bundles["door1"], [keys["door"]], keys["online"])
    return r


def root1(repo: Path) -> bytes:
    return (repo / "metadata" / "1.root.json").read_bytes()


def forge(repo: Path, role: str, signers: list[KeyArg], mutate: Callable[[Any], None] = lambda s: None) -> None:
    """An attacker holding ``signers`` writes the next version of ``role``."""
    r = Repository(repo)
    md = r.load(role)
    mutate(md.signed)
    md.signed.version += 1
    md.signatures.clear()
    for k in signers:
        assert k.private is not None
        md.sign(trust._signer(k.private), append=True)
    r.write_role(role, md)


def point_timestamp(repo: Path, snapshot_version: int, online: KeyArg) -> None:
    """A timestamp (next version) naming snapshot ``snapshot_version``, signed by ``online``."""
    import hashlib

    r = Repository(repo)
    ts = r.load("timestamp")
    snap = (repo / "metadata" / f"{snapshot_version}.snapshot.json").read_bytes()
    ts.signed.version += 1
    ts.signed.snapshot_meta.version = snapshot_version
    ts.signed.snapshot_meta.length = len(snap)
    ts.signed.snapshot_meta.hashes = {"sha256": hashlib.sha256(snap).hexdigest()}
    ts.signatures.clear()
    assert online.private is not None
    ts.sign(trust._signer(online.private))
    r.write_role("timestamp", ts)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("edgefleet: error: ")
    return err


# ---------------------------------------------------------------- the good path


def test_published_bundle_verifies_from_a_pinned_root(repo: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    v = verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=tmp_path / "dev")
    assert (v.path, v.model, v.version, v.root_version) == ("cam/1.0.0.efb", "cam", "1.0.0", 1)
    assert v.length == bundles["cam1"].stat().st_size and len(v.sha256) == 64
    assert v.signer is not None and [k.key_id for k in v.keys] == [v.signer.key_id]
    # the targets are stored content-addressed (consistent snapshots)
    assert (repo / "targets" / "cam" / f"{v.sha256}.1.0.0.efb").is_file()
    top = Repository(repo).top_targets().signed
    role = top.delegations.roles["cam"]
    assert role.terminating and role.paths == ["cam/*"] and role.threshold == 1


def test_cli_root_init_delegate_add_verify(tmp_path: Path, keys: Keys, bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    r = str(tmp_path / "repo")
    roots = ["--root-key", keys.path("r1"), "--root-key", keys.path("r2")]
    assert cli_main(["keys", "root-init", "--repo", r, *roots, "--threshold", "2", "--online-key", keys.path("online.pub"),
                     "--expires", "365d"]) == 0
    assert cli_main(["keys", "delegate", "--repo", r, "--model", "cam", "--key", keys.path("cam.pub"), *roots]) == 0
    assert cli_main(["repo", "add", bundles["cam1"].as_posix(), "--repo", r, "--key", keys.path("cam"),
                     "--online-key", keys.path("online"), "--timestamp-expires", "12h"]) == 0
    capsys.readouterr()
    assert cli_main(["verify", str(bundles["cam1"]), "--repo", r, "--trusted-root", f"{r}/metadata/1.root.json",
                     "--pub", keys.path("cam.pub")]) == 0
    out = capsys.readouterr().out
    assert "OK: cam/1.0.0.efb is a signed target" in out and "signature by key" in out
    ts = Repository(r).load("timestamp").signed
    assert dt.timedelta(hours=11) < ts.expires - dt.datetime.now(UTC) <= dt.timedelta(hours=12)
    # the bare-key check still runs with --repo: a wrong --pub is refused
    one_line_error(capsys, ["verify", str(bundles["cam1"]), "--repo", r, "--pub", keys.path("door.pub")], SignatureError.exit_code)


def test_online_key_is_refused_as_root_or_model_key(tmp_path: Path, keys: Keys, repo: Path) -> None:
    with pytest.raises(ConfigError, match="online key"):
        trust.init_repository(tmp_path / "r2", [keys["r1"], keys["online"]], 1, keys["online.pub"])
    with pytest.raises(ConfigError, match="root or online key"):
        trust.delegate(repo, "cam", [keys["online.pub"]], [keys["r1"], keys["r2"]])
    with pytest.raises(ConfigError, match="reserved"):
        trust.delegate(repo, "targets", [keys["cam.pub"]], [keys["r1"], keys["r2"]])


# ---------------------------------------------------------------- arbitrary installation


def test_arbitrary_installation_unlisted_version_refused(repo: Path, bundles: dict[str, Path]) -> None:
    # signed by the real cam key, but never added to the repository
    with pytest.raises(UnknownTargetError, match="not a signed target"):
        verify_bundle(bundles["cam3"], repo, trusted_root=root1(repo))


def test_arbitrary_installation_other_key_same_name_refused(repo: Path, bundles: dict[str, Path]) -> None:
    # cam 1.0.0 rebuilt and signed by an unknown key: not the bytes the metadata lists
    with pytest.raises(TargetMismatchError):
        verify_bundle(bundles["cam1_evil"], repo, trusted_root=root1(repo))


def test_arbitrary_installation_flipped_byte_refused(repo: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "cam1.efb"
    data = bytearray(bundles["cam1"].read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(TargetMismatchError, match="does not match the signed target"):
        verify_bundle(bad, repo, trusted_root=root1(repo))


def test_unknown_model_refused(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    with pytest.raises(UnknownModelError, match="other"):
        verify_bundle(bundles["other1"], repo, trusted_root=root1(repo))
    with pytest.raises(UnknownModelError):
        trust.add_bundle(repo, bundles["other1"], [keys["cam"]], keys["online"])


# ---------------------------------------------------------------- wrong model (issue 12, finding 1)


def test_wrong_model_key_cannot_add_another_models_bundle(repo: Path, bundles: dict[str, Path], keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(WrongModelError, match="signs model"):
        trust.add_bundle(repo, bundles["door99_by_cam"], [keys["cam"]], keys["online"])
    err = one_line_error(capsys, ["repo", "add", str(bundles["door99_by_cam"]), "--repo", str(repo), "--key",
                                  keys.path("cam"), "--online-key", keys.path("online")], WrongModelError.exit_code)
    assert "not 'door'" in err


def test_wrong_model_forged_role_signed_by_other_models_key(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    """The cam key and the online key are both stolen: the attacker writes door's role
    metadata listing a door 99.0.0 bundle, signs it with the cam key and publishes it."""
    from tuf.api.metadata import TargetFile

    def add_door99(signed: Any) -> None:
        signed.targets["door/99.0.0.efb"] = TargetFile.from_file("door/99.0.0.efb", str(bundles["door99_by_cam"]), ["sha256"])

    forge(repo, "door", [keys["cam"]], add_door99)
    trust.publish(repo, keys["online"])
    with pytest.raises(WrongModelError, match="signed by the key of model"):
        verify_bundle(bundles["door99_by_cam"], repo, trusted_root=root1(repo))


def test_wrong_model_target_in_own_role_is_never_consulted(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    """The cam key lists door/99.0.0.efb in cam's own (validly signed) metadata: the
    terminating delegation door/* never looks there."""
    from tuf.api.metadata import TargetFile

    def add_door99(signed: Any) -> None:
        signed.targets["door/99.0.0.efb"] = TargetFile.from_file("door/99.0.0.efb", str(bundles["door99_by_cam"]), ["sha256"])

    forge(repo, "cam", [keys["cam"]], add_door99)
    trust.publish(repo, keys["online"])
    with pytest.raises(UnknownTargetError, match="not a signed target of model 'door'"):
        verify_bundle(bundles["door99_by_cam"], repo, trusted_root=root1(repo))


# ---------------------------------------------------------------- rollback


def test_rollback_of_timestamp_refused(repo: Path, bundles: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    ts = repo / "metadata" / "timestamp.json"
    old = ts.read_bytes()
    trust.publish(repo, keys["online"])
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    ts.write_bytes(old)  # a mirror replays yesterday's (still unexpired) timestamp
    with pytest.raises(RollbackError, match="must be >="):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)


def test_rollback_of_targets_version_refused_even_with_the_online_key(repo: Path, bundles: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    # the online key signs a fresh snapshot naming an older (validly signed) targets version
    r = Repository(repo)
    snap = r.load("snapshot")
    snap.signed.meta["targets.json"].version = 1
    snap.signed.version += 1
    snap.signatures.clear()
    snap.sign(trust._signer(keys["online"].private))
    r.write_role("snapshot", snap)
    point_timestamp(repo, snap.signed.version, keys["online"])
    with pytest.raises(RollbackError, match="targets.json"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)


def test_rollback_of_snapshot_version_refused(repo: Path, bundles: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    point_timestamp(repo, 1, keys["online"])  # the online key names an old (validly signed) snapshot
    with pytest.raises(RollbackError, match="snapshot version must be >="):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)


# ---------------------------------------------------------------- indefinite freeze and the clock policy


def test_indefinite_freeze_expired_timestamp_refused(repo: Path, bundles: dict[str, Path]) -> None:
    later = dt.datetime.now(UTC) + dt.timedelta(days=2)  # the coordinator stopped re-signing two days ago
    with pytest.raises(MetadataExpiredError, match="timestamp.json is expired"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), now=later)


def test_clock_skew_tolerance(repo: Path, bundles: dict[str, Path]) -> None:
    expires = Repository(repo).load("timestamp").signed.expires
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), now=expires + dt.timedelta(minutes=4))
    with pytest.raises(MetadataExpiredError):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), now=expires + dt.timedelta(minutes=6))
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), now=expires + dt.timedelta(minutes=20),
                  clock_skew=dt.timedelta(minutes=30))


def test_device_without_a_clock_checks_expiry_at_its_floor(repo: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    floor = dt.datetime.fromisoformat((state / trust.CLOCK_FLOOR_FILE).read_text().replace("Z", "+00:00"))
    assert abs(floor - dt.datetime.now(UTC)) < dt.timedelta(minutes=1)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)  # RTC lost after a power cut
    v = verify_bundle(bundles["cam1"], repo, state_dir=state, now=epoch)
    assert v.reference_time >= floor - trust.DEFAULT_CLOCK_SKEW
    # the floor never goes back; once past the metadata's expiry, a clockless device refuses
    (state / trust.CLOCK_FLOOR_FILE).write_text(trust._fmt(dt.datetime.now(UTC) + dt.timedelta(days=3)))
    with pytest.raises(MetadataExpiredError):
        verify_bundle(bundles["cam1"], repo, state_dir=state, now=epoch)


def test_clock_far_ahead_refuses_and_does_not_move_the_floor(repo: Path, bundles: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    before = (state / trust.CLOCK_FLOOR_FILE).read_text()
    with pytest.raises(MetadataExpiredError):
        verify_bundle(bundles["cam1"], repo, state_dir=state, now=dt.datetime(2099, 1, 1, tzinfo=UTC))
    assert (state / trust.CLOCK_FLOOR_FILE).read_text() == before
    verify_bundle(bundles["cam1"], repo, state_dir=state)  # clock fixed: works again


# ---------------------------------------------------------------- mix-and-match


def test_mix_and_match_targets_version_refused(repo: Path, bundles: dict[str, Path]) -> None:
    meta = repo / "metadata"
    latest = Repository(repo).latest_version("targets")
    shutil.copyfile(meta / "1.targets.json", meta / f"{latest}.targets.json")  # validly signed, other version
    with pytest.raises(MixAndMatchError, match="Expected targets"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_mix_and_match_snapshot_content_refused(repo: Path, bundles: dict[str, Path]) -> None:
    meta = repo / "metadata"
    latest = Repository(repo).latest_version("snapshot")
    shutil.copyfile(meta / "1.snapshot.json", meta / f"{latest}.snapshot.json")
    with pytest.raises(MixAndMatchError):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_mix_and_match_model_role_version_refused(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    trust.add_bundle(repo, bundles["cam2"], [keys["cam"]], keys["online"])
    meta = repo / "metadata"
    shutil.copyfile(meta / "1.cam.json", meta / "2.cam.json")
    with pytest.raises(MixAndMatchError, match="Expected cam v2, got v1"):
        verify_bundle(bundles["cam2"], repo, trusted_root=root1(repo))


# ---------------------------------------------------------------- key compromise below threshold


def test_one_of_two_root_keys_cannot_rotate_root(repo: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ThresholdError, match="OLD root keys"):
        trust.rotate_root(repo, [keys["r1"]], [keys["evil"]], 1)
    assert Repository(repo).latest_version("root") == 1
    one_line_error(capsys, ["keys", "rotate-root", "--repo", str(repo), "--old-key", keys.path("r1"),
                            "--root-key", keys.path("evil"), "--threshold", "1"], ThresholdError.exit_code)


def test_forged_root_signed_by_one_of_two_keys_refused(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    def take_over(root: Any) -> None:
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        root.add_key(trust.tuf_key(keys["evil"].public), "root")
        root.roles["root"].threshold = 1

    forge(repo, "root", [keys["r1"], keys["evil"]], take_over)
    with pytest.raises(ThresholdError, match="root was signed by 1/2 keys"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_targets_signed_by_one_root_key_refused(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    forge(repo, "targets", [keys["r1"]], lambda t: t.add_key(trust.tuf_key(keys["evil"].public), "door"))
    trust.publish(repo, keys["online"])
    with pytest.raises(ThresholdError, match="targets was signed by 1/2 keys"):
        verify_bundle(bundles["door1"], repo, trusted_root=root1(repo))
    with pytest.raises(ThresholdError, match="targets needs 2"):
        trust.delegate(repo, "door", [keys["evil.pub"]], [keys["r1"]])


def test_online_key_cannot_sign_targets(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    forge(repo, "targets", [keys["online"]], lambda t: t.add_key(trust.tuf_key(keys["evil"].public), "cam"))
    trust.publish(repo, keys["online"])
    with pytest.raises(ThresholdError, match="online key, which may sign only snapshot and timestamp"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_model_threshold_of_two_needs_both_model_keys(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    roots = [keys["r1"], keys["r2"]]
    trust.delegate(repo, "cam", [keys["cam2.pub"]], roots, threshold=2, online_key=keys["online"])
    with pytest.raises(ThresholdError, match="cam was signed by 1/2 keys"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))
    with pytest.raises(ThresholdError, match="needs 2 of its keys"):
        trust.add_bundle(repo, bundles["cam2"], [keys["cam"]], keys["online"])
    trust.add_bundle(repo, bundles["cam2"], [keys["cam"], keys["cam2"]], keys["online"])
    verify_bundle(bundles["cam2"], repo, trusted_root=root1(repo))


# ---------------------------------------------------------------- root rotation


def test_root_rotation_chain_is_walked_and_persisted(repo: Path, bundles: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    state = tmp_path / "device"
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo), state_dir=state)
    # v2: r2+r3 (threshold 2), signed by r1+r2 (old) and r2+r3 (new); targets re-signed by the new keys
    trust.rotate_root(repo, [keys["r1"], keys["r2"]], [keys["r2"], keys["r3"]], 2, online_key=keys["online"])
    # v3: r3 alone, and a new online key
    trust.rotate_root(repo, [keys["r2"], keys["r3"]], [keys["r3"]], 1, online_key=keys["online2"])
    assert Repository(repo).latest_version("root") == 3
    v = verify_bundle(bundles["cam1"], repo, state_dir=state)  # device trusted only v1: walks 2, 3
    assert v.root_version == 3
    assert sorted(p.name for p in (state / "metadata" / "root_history").iterdir()) == [
        "1.root.json", "2.root.json", "3.root.json"]
    # a fresh device provisioned with v1 walks the same chain
    assert verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo)).root_version == 3
    # the retired keys can no longer move root forward ...
    with pytest.raises(ThresholdError, match="OLD root keys"):
        trust.rotate_root(repo, [keys["r1"], keys["r2"]], [keys["r1"]], 1)
    # ... and a root v4 they sign anyway is refused by the device
    forge(repo, "root", [keys["r1"], keys["r2"]])
    with pytest.raises(ThresholdError, match="root was signed by 0/1 keys"):
        verify_bundle(bundles["cam1"], repo, state_dir=state)
    # the retired online key cannot publish
    (repo / "metadata" / "4.root.json").unlink()
    with pytest.raises(ThresholdError, match="not the snapshot key"):
        trust.publish(repo, keys["online"])


def test_root_rotation_needs_the_new_keys_too(repo: Path, keys: Keys) -> None:
    with pytest.raises(ThresholdError, match="NEW root keys"):
        trust.rotate_root(repo, [keys["r1"], keys["r2"]], [keys["r3.pub"]], 1)


# ---------------------------------------------------------------- revocation


def test_revoked_model_key_refused_and_replaced(repo: Path, bundles: dict[str, Path], keys: Keys, model_dir: Path, tmp_path: Path) -> None:
    roots = [keys["r1"], keys["r2"]]
    verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))
    published = trust.revoke(repo, "cam", [keys["cam.pub"]], roots, online_key=keys["online"])
    assert any("nothing verifies" in n for n in published.notes)
    with pytest.raises(RevokedKeyError, match="revoked"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))
    with pytest.raises(RevokedKeyError):
        trust.add_bundle(repo, bundles["cam2"], [keys["cam"]], keys["online"])
    with pytest.raises(RevokedKeyError):
        trust.delegate(repo, "cam", [keys["cam.pub"]], roots)
    # a new key takes over; its own bundles verify, the revoked key's signature does not count
    trust.delegate(repo, "cam", [keys["cam2.pub"]], roots, online_key=keys["online"])
    trust.add_bundle(repo, bundles["cam2_by_cam2"], [keys["cam2"]], keys["online"])
    v = verify_bundle(bundles["cam2_by_cam2"], repo, trusted_root=root1(repo))
    assert v.signer is not None and v.signer.key_id == keys["cam2"].public.key_id
    # cam 1.0.0 is still listed (now re-signed by cam2) but its bundle is signed by the revoked key
    with pytest.raises(SignatureError):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_cli_revoke(repo: Path, bundles: dict[str, Path], keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "revoke", "--repo", str(repo), "--model", "door", "--key", keys.path("door.pub"),
                     "--root-key", keys.path("r1"), "--root-key", keys.path("r2"), "--online-key", keys.path("online")]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["verify", str(bundles["door1"]), "--repo", str(repo)], RevokedKeyError.exit_code)


# ---------------------------------------------------------------- length and hashes (endless data, extraneous)


def test_extraneous_bytes_appended_to_bundle_refused(repo: Path, bundles: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cam1.efb"
    bad.write_bytes(bundles["cam1"].read_bytes() + b"\0" * 4096)
    with pytest.raises(TargetMismatchError, match="extraneous"):
        verify_bundle(bad, repo, trusted_root=root1(repo))
    one_line_error(capsys, ["verify", str(bad), "--repo", str(repo)], TargetMismatchError.exit_code)


def test_endless_metadata_refused(repo: Path, bundles: dict[str, Path]) -> None:
    ts = repo / "metadata" / "timestamp.json"
    ts.write_bytes(ts.read_bytes().rstrip() + b" " * 200_000)  # over python-tuf's timestamp length cap
    with pytest.raises(MetadataFormatError, match="endless data"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_endless_model_metadata_beyond_snapshot_length_cap(repo: Path, bundles: dict[str, Path], keys: Keys) -> None:
    big = repo / "metadata" / "1.cam.json"
    big.write_bytes(big.read_bytes() + b" " * 6_000_000)  # over targets_max_length
    with pytest.raises(MetadataFormatError, match="endless data"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_fifo_metadata_does_not_block(repo: Path, bundles: dict[str, Path]) -> None:
    import os

    ts = repo / "metadata" / "timestamp.json"
    ts.unlink()
    os.mkfifo(ts)
    with pytest.raises(MetadataFormatError, match="not a regular file"):
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))


def test_oversized_key_and_root_files_are_refused_before_reading(repo: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Key files given to the repository commands and a trusted root: bounded, one-line named errors."""
    big = tmp_path / "big.key"
    with open(big, "wb") as fh:
        fh.truncate(1 << 30)
    with pytest.raises(ConfigError, match="larger than the 65536-byte cap"):
        load_key_arg(big)
    one_line_error(capsys, ["repo", "delegate-rollback", str(big), "--repo", str(repo), "--root-key", str(big)],
                   ConfigError.exit_code)
    root = tmp_path / "root.json"
    with open(root, "wb") as fh:
        fh.truncate(600_000)
    with pytest.raises(MetadataFormatError, match="over the 512000-byte cap"):
        trust.read_trusted_root(root)


# ---------------------------------------------------------------- deltas, publish, misc


def test_delta_is_a_signed_target_too(repo: Path, bundles: dict[str, Path], keys: Keys, tmp_path: Path) -> None:
    delta = tmp_path / "cam-1-to-2.delta"
    delta.write_bytes(b"BSDIFF40" + b"x" * 100)
    trust.add_bundle(repo, bundles["cam2"], [keys["cam"]], keys["online"], delta=delta, delta_base="1.0.0")
    role = Repository(repo).load("cam").signed
    info = role.targets["cam/2.0.0.from-1.0.0.delta"]
    assert info.length == 108 and info.custom["edgefleet"] == {
        "kind": "delta", "model": "cam", "base": "cam/1.0.0.efb", "result": "cam/2.0.0.efb"}
    with pytest.raises(UnknownTargetError, match="delta base"):
        trust.add_bundle(repo, bundles["cam3"], [keys["cam"]], keys["online"], delta=delta, delta_base="0.9.0")


def test_published_version_is_never_replaced(repo: Path, bundles: dict[str, Path], keys: Keys, model_dir: Path, tmp_path: Path) -> None:
    before = Repository(repo).latest_version("cam")
    assert trust.add_bundle(repo, bundles["cam1"], [keys["cam"]], keys["online"]).notes[0].startswith("cam/1.0.0.efb is already")
    assert Repository(repo).latest_version("cam") == before
    _, other = pack(model_dir / "digits.onnx", tmp_path / "cam1b", name="cam", version="1.0.0",
                    private_key=keys["cam"].private, archive=True, labels=["a"] * 10)
    with pytest.raises(ConfigError, match="never replaced"):
        trust.add_bundle(repo, other, [keys["cam"]], keys["online"])


def test_publish_refreshes_timestamp_and_keeps_snapshot(repo: Path, keys: Keys) -> None:
    r = Repository(repo)
    snap, ts = r.latest_version("snapshot"), r.load("timestamp").signed.version
    trust.publish(repo, keys["online"])
    assert r.latest_version("snapshot") == snap and r.load("timestamp").signed.version == ts + 1
    with pytest.raises(ConfigError, match="online private key"):
        trust.publish(repo, keys["online.pub"])


def test_cli_refusals_are_one_line(tmp_path: Path, keys: Keys, repo: Path, bundles: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(capsys, ["keys", "root-init", "--repo", str(tmp_path / "x"), "--root-key", keys.path("r1"),
                            "--threshold", "2", "--online-key", keys.path("online.pub")], ConfigError.exit_code)
    one_line_error(capsys, ["keys", "root-init", "--repo", str(repo), "--root-key", keys.path("r1"),
                            "--threshold", "1", "--online-key", keys.path("online.pub")], ConfigError.exit_code)
    one_line_error(capsys, ["verify", str(bundles["other1"]), "--repo", str(repo)], UnknownModelError.exit_code)
    one_line_error(capsys, ["verify", str(bundles["cam3"]), "--repo", str(repo)], UnknownTargetError.exit_code)
    one_line_error(capsys, ["verify", str(bundles["cam1"])], ConfigError.exit_code)
    one_line_error(capsys, ["verify", str(bundles["cam1"]), "--repo", str(repo), "--clock-skew", "soon"], ConfigError.exit_code)
    one_line_error(capsys, ["keys", "delegate", "--repo", str(repo), "--model", "../x", "--key", keys.path("cam.pub"),
                            "--root-key", keys.path("r1")], ConfigError.exit_code)


def test_error_classes_are_trust_errors_with_distinct_codes() -> None:
    classes = [MetadataExpiredError, MetadataFormatError, MixAndMatchError, RevokedKeyError, RollbackError,
               TargetMismatchError, ThresholdError, UnknownModelError, UnknownTargetError, WrongModelError]
    assert all(issubclass(c, TrustError) and issubclass(c, SignatureError) for c in classes)
    assert len({c.exit_code for c in classes + [TrustError]}) == len(classes) + 1


# ---------------------------------------------------------------- hypothesis over metadata parsing


def _mutations() -> st.SearchStrategy[Callable[[dict], Any]]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    paths = st.sampled_from([("signed", "version"), ("signed", "expires"), ("signed", "_type"), ("signed", "meta"),
                             ("signed", "spec_version"), ("signatures",), ("signed",), ("signed", "meta", "snapshot.json")])

    def setter(path: tuple[str, ...], value: Any) -> Callable[[dict], Any]:
        def apply(doc: dict) -> Any:
            node = doc
            for part in path[:-1]:
                node = node.setdefault(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node[path[-1]] = value
            return doc
        return apply

    return st.builds(setter, paths, json_values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hypothesis_mangled_timestamp_is_a_named_refusal(repo: Path, bundles: dict[str, Path], data: st.DataObject) -> None:
    ts = repo / "metadata" / "timestamp.json"
    original = ts.read_bytes()
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=300))
    else:
        raw = json.dumps(data.draw(_mutations())(json.loads(original))).encode()
    ts.write_bytes(raw)
    try:
        verify_bundle(bundles["cam1"], repo, trusted_root=root1(repo))
    except TrustError:
        pass
    except EdgefleetError as exc:  # pragma: no cover - shown on failure
        pytest.fail(f"not a TrustError: {type(exc).__name__}: {exc}")
    else:  # accepted only if python-tuf reads the same signed content (e.g. a default spelled out)
        from tuf.api.metadata import Metadata

        assert Metadata.from_bytes(raw).signed_bytes == Metadata.from_bytes(original).signed_bytes
    finally:
        ts.write_bytes(original)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=400))
def test_hypothesis_random_bytes_as_a_trusted_root(repo: Path, bundles: dict[str, Path], blob: bytes) -> None:
    with pytest.raises(TrustError):
        verify_bundle(bundles["cam1"], repo, trusted_root=blob)


# ---------------------------------------------------------------- the rollback role (rollback orders)


def _rollback_client(repo: Path, tmp_path: Path) -> trust.TrustClient:
    client = trust.TrustClient(tmp_path / f"client-{time.monotonic_ns()}", trust.make_repo_fetcher(repo), root1(repo))
    client.refresh()
    return client


def _signed(payload: bytes, *names: str, keys: Keys) -> list[dict[str, str]]:
    from edgefleet.keys import sign_payload

    return [sign_payload(keys[n].private, payload) for n in names]  # type: ignore[arg-type]


def test_rollback_role_is_a_delegation_without_paths(repo: Path, keys: Keys, tmp_path: Path) -> None:
    """The rollback role is delegated from top-level targets with its own keys and threshold and no paths: it
    is no model, lists no target, is not in the snapshot, and python-tuf verifies order signatures against it."""
    roots = [keys["r1"], keys["r2"]]
    payload = b'{"an":"order"}'
    with pytest.raises(UnknownModelError, match="delegate-rollback"):  # none yet
        _rollback_client(repo, tmp_path).verify_rollback_order(payload, _signed(payload, "cam", keys=keys))
    trust.delegate_rollback(repo, [keys["rb.pub"], keys["rb2.pub"]], roots, threshold=2, online_key=keys["online"])
    r = Repository(repo)
    role = r.top_targets().signed.delegations.roles[trust.ROLLBACK_ROLE]
    assert role.paths == [] and role.terminating and role.threshold == 2 and len(role.keyids) == 2
    assert trust.ROLLBACK_ROLE not in r.model_roles() and not r.versions(trust.ROLLBACK_ROLE)
    assert f"{trust.ROLLBACK_ROLE}.json" not in r.load("snapshot").signed.meta
    assert {k.key_id for k in trust.rollback_keys(repo)[0]} == {keys["rb.pub"].public.key_id,
                                                                keys["rb2.pub"].public.key_id}
    client = _rollback_client(repo, tmp_path)
    assert client.verify_rollback_order(payload, _signed(payload, "rb", "rb2", keys=keys)).verified
    for names, count in ((("rb",), 1), (("rb", "cam", "online", "r1"), 1), (("cam", "door", "evil"), 0)):
        with pytest.raises(ThresholdError, match=f"signed by {count} of the 'rollback' role's keys, threshold 2"):
            client.verify_rollback_order(payload, _signed(payload, *names, keys=keys))
    with pytest.raises(ThresholdError):  # a signature over another payload
        client.verify_rollback_order(payload, _signed(b"another order", "rb", "rb2", keys=keys))
    with pytest.raises(UnknownTargetError):  # it provides no target
        client.get_target(trust.ROLLBACK_ROLE, "1.0.0")
    # the same key cannot be a model key and a rollback key, either way round; 'rollback' is no model name
    with pytest.raises(ConfigError, match="rollback-order key"):
        trust.delegate(repo, "cam", [keys["rb.pub"]], roots)
    with pytest.raises(ConfigError, match="a rollback key must sign nothing else"):
        trust.delegate_rollback(repo, [keys["door.pub"]], roots)
    with pytest.raises(ConfigError, match="reserved"):
        trust.delegate(repo, trust.ROLLBACK_ROLE, [keys["evil.pub"]], roots)
    with pytest.raises(ConfigError, match="threshold 3"):
        trust.delegate_rollback(repo, [keys["rb.pub"]], roots, threshold=3)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hypothesis_rollback_orders_against_the_rollback_role(repo: Path, keys: Keys, tmp_path: Path,
                                                              data: st.DataObject) -> None:
    """Mangled orders (any JSON as the signature, the signatures, the order or one of its fields) given to a
    TUF device's order check: a named refusal, or accepted only as the order the rollback key signed."""
    from edgefleet.device_agent.orders import check_rollback_order, make_rollback_order
    from edgefleet.device_agent.tuf_mode import order_verifier
    from edgefleet.errors import UpdateRejectedError

    if not Repository(repo).top_targets().signed.delegations.roles.get(trust.ROLLBACK_ROLE):
        trust.delegate_rollback(repo, [keys["rb.pub"]], [keys["r1"], keys["r2"]], online_key=keys["online"])
    bundle = tmp_path / "b"
    bundle.mkdir(exist_ok=True)
    (bundle / "manifest.json").write_text('{"name": "cam", "version": "1.0.0"}')
    good = make_rollback_order(load_private_key(keys.path("rb")), bundle)
    doc = json.loads(json.dumps(good))
    where = data.draw(st.sampled_from(["signature", "signatures", "order", "field", "none"]))
    if where == "field":
        doc["order"][data.draw(st.sampled_from(sorted(doc["order"])))] = data.draw(_JSON)
    elif where != "none":
        doc[where] = data.draw(_JSON)
    manifest_id = good["order"]["manifest_sha256"]
    try:
        accepted = check_rollback_order(doc, manifest_id, [], verify=order_verifier(_rollback_client(repo, tmp_path)))
    except UpdateRejectedError as exc:
        assert exc.reason in {"bad_rollback_order", "order_key_not_delegated", "order_threshold", "order_expired",
                              "order_not_yet_valid"}, exc.reason
    else:
        assert doc["order"] == good["order"] and accepted.signed


def test_peek_refuses_non_archives(tmp_path: Path, repo: Path) -> None:
    from edgefleet.errors import BundleFormatError

    odd = tmp_path / "x.efb"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        payload = b"[" * 100_000
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    odd.write_bytes(buf.getvalue())
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        verify_bundle(odd, repo)
