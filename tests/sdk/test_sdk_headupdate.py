"""Head-only updates (edgefleet.headupdate): v2 = v1's backbone + a new head, signed with lineage; a device
rebuilds v2 from its installed v1 and the update, and the result verifies exactly as the full v2 does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sdk_head_helpers import small_head

import edgefleet
from edgefleet.bundle import open_bundle, verify_bundle_dir
from edgefleet.canonical import sha256_bytes
from edgefleet.errors import (
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    SignatureError,
    UnsignedBundleError,
    UnsupportedFormatError,
    UpdateRejectedError,
)
from edgefleet.head import Head, HeadLayer
from edgefleet.headupdate import (
    UPDATE_KIND,
    HeadUpdate,
    head_update_of,
    json_diff,
    json_patch,
    plan_rebuild,
    rebuild_bundle,
    update_head,
)
from edgefleet.keys import load_private_key
from edgefleet.pack import pack


@pytest.fixture()
def v1(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path]) -> Path:
    bundle, _ = pack(model_dir / "digits_int8.tflite", tmp_path / "v1", name="digits", version="1.0.0",
                     labels=["a", "b", "c"], head=small_head(seed=0), private_key=load_private_key(keypair[0]))
    return bundle.path


@pytest.fixture()
def new_head(tmp_path: Path) -> Path:
    path = tmp_path / "new_head.npz"
    np.savez(path, **{k: v.astype(np.float64) for k, v in small_head(seed=5).weights.items()})  # float64: cast on pack
    return path


@pytest.fixture()
def v2(tmp_path: Path, v1: Path, new_head: Path, keypair: tuple[Path, Path]) -> Path:
    bundle, _ = update_head(v1, new_head, tmp_path / "v2", version="2.0.0", private_key=load_private_key(keypair[0]),
                            trusted_keys=keypair[1])
    return bundle.path


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_v2_is_the_same_backbone_with_the_new_head(v1: Path, v2: Path, keypair: tuple[Path, Path],
                                                   digits_data: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits_data[0][:20] / 16.0
    with edgefleet.load(v1, trusted_keys=keypair[1]) as m1, edgefleet.load(v2, trusted_keys=keypair[1]) as m2:
        a, b = m1.manifest, m2.manifest
        assert b.version == "2.0.0" and b.format_version == 2
        assert (v1 / a.model_file).read_bytes() == (v2 / b.model_file).read_bytes()  # int8 backbone kept, byte for byte
        assert b.files[b.model_file] == a.files[a.model_file] and b.outputs == a.outputs and b.labels == a.labels
        assert b.head is not None and a.head is not None and b.head.sha256 != a.head.sha256 and b.head.layers == a.head.layers
        assert b.lineage["parent_version"] == "1.0.0"
        base = b.lineage["head_update"]["base"]
        assert base["version"] == "1.0.0" and base["head_sha256"] == a.head.sha256
        np.testing.assert_array_equal(m2.features(x), m1.features(x))
        np.testing.assert_allclose(m2.predict(x), small_head(seed=5).forward(m1.features(x)), atol=1e-6)
        assert not np.allclose(m2.predict(x), m1.predict(x))
        assert m2.run_smoke_tests().ok  # recomputed for the new head
        assert b.smoke_tests["inputs"] == a.smoke_tests["inputs"] and b.smoke_tests["outputs"] != a.smoke_tests["outputs"]  # type: ignore[index]


def test_update_head_refusals(tmp_path: Path, v1: Path, new_head: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="newer than the base's 1.0.0"):
        update_head(v1, new_head, tmp_path / "a", version="1.0.0")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{k: np.zeros((2, 2)) for k in small_head().weights})
    with pytest.raises(ConfigError, match="float values of shape"):
        update_head(v1, wrong, tmp_path / "b", version="2")
    plain, _ = pack(model_dir / "digits.onnx", tmp_path / "plain", name="digits", version="1")
    with pytest.raises(ConfigError, match="no trainable head"):
        update_head(plain.path, new_head, tmp_path / "c", version="2")
    with pytest.raises(ConfigError, match="cannot read the head file"):
        update_head(v1, tmp_path / "missing.npz", tmp_path / "d", version="2")
    assert not any((tmp_path / n).exists() for n in "abcd")


def _head_file(bundle: Path) -> bytes:
    return (bundle / "head.npz").read_bytes()


@pytest.mark.parametrize("encoding", ["raw", "xor-lzma"])
def test_rebuilt_bundle_is_byte_identical_to_the_full_download(tmp_path: Path, v1: Path, v2: Path,
                                                                keypair: tuple[Path, Path], encoding: str) -> None:
    installed = verify_bundle_dir(v1, keypair[1])
    update = HeadUpdate.from_bytes(head_update_of(verify_bundle_dir(v2, keypair[1]), installed, encoding).to_bytes())
    assert update.head_encoding == encoding and update.size < sum(len(b) for b in _files(v2).values()) / 2
    plan = plan_rebuild(installed.manifest_bytes, update, keypair[1], installed_head=_head_file(v1))
    assert plan.manifest_bytes == (v2 / "manifest.json").read_bytes() and plan.from_installed == ("model.tflite",)
    rebuilt = rebuild_bundle(installed, update, tmp_path / "rebuilt", keypair[1])
    assert rebuilt.path == tmp_path / "rebuilt" and rebuilt.signer is not None
    assert _files(rebuilt.path) == _files(v2)  # manifest, signature, backbone, head: every byte
    full = verify_bundle_dir(v2, keypair[1])
    assert rebuilt.manifest == full.manifest and rebuilt.manifest_bytes == full.manifest_bytes


def _update(v1: Path, v2: Path, keys: Path) -> tuple[object, HeadUpdate]:
    installed = verify_bundle_dir(v1, keys)
    return installed, head_update_of(verify_bundle_dir(v2, keys), installed, "raw")


def test_a_tampered_head_is_refused(tmp_path: Path, v1: Path, v2: Path, keypair: tuple[Path, Path]) -> None:
    installed, update = _update(v1, v2, keypair[1])
    head = bytearray(update.head)
    head[-30] ^= 1
    bad = HeadUpdate(update.base_manifest_sha256, update.manifest_patch, update.signature, bytes(head))
    with pytest.raises(BundleIntegrityError, match="head file does not match"):
        rebuild_bundle(installed, bad, tmp_path / "out", keypair[1])  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_wrong_base_is_refused(tmp_path: Path, v1: Path, v2: Path, keypair: tuple[Path, Path], model_dir: Path) -> None:
    _, update = _update(v1, v2, keypair[1])
    key = load_private_key(keypair[0])
    other, _ = pack(model_dir / "digits_float.tflite", tmp_path / "other", name="digits", version="1.0.0",
                    labels=["a", "b", "c"], head=small_head(seed=0), private_key=key)
    with pytest.raises(UpdateRejectedError, match="another base") as info:
        rebuild_bundle(other, update, tmp_path / "out", keypair[1])
    assert info.value.reason == "wrong_base"
    # an update made against the other bundle's manifest: v2's signed manifest, but its backbone file is not
    # the one installed there, which the files' hashes refuse
    patch = json_diff(json.loads(other.manifest_bytes), json.loads((v2 / "manifest.json").read_bytes()))
    cross = HeadUpdate(sha256_bytes(other.manifest_bytes), patch, update.signature, update.head)
    with pytest.raises(UpdateRejectedError, match="another backbone") as info:
        plan_rebuild(other.manifest_bytes, cross, keypair[1])
    assert info.value.reason == "wrong_base"
    assert not (tmp_path / "out").exists()


def test_signature_checks(tmp_path: Path, v1: Path, v2: Path, keypair: tuple[Path, Path],
                          other_keypair: tuple[Path, Path]) -> None:
    installed, update = _update(v1, v2, keypair[1])
    raw = installed.manifest_bytes  # type: ignore[attr-defined]
    with pytest.raises(SignatureError, match="does not verify"):
        plan_rebuild(raw, update, other_keypair[1])
    with pytest.raises(UnsignedBundleError):
        plan_rebuild(raw, HeadUpdate(update.base_manifest_sha256, update.manifest_patch, None, update.head), keypair[1])
    changed = dict(update.manifest_patch)
    changed["version"] = ["=", "9.0.0"]  # a version the publisher never signed
    with pytest.raises(SignatureError):
        plan_rebuild(raw, HeadUpdate(update.base_manifest_sha256, changed, update.signature, update.head), keypair[1])
    with pytest.raises(BundleFormatError, match="patch"):
        plan_rebuild(raw, HeadUpdate(update.base_manifest_sha256, {"files": ["?"]}, update.signature, update.head), keypair[1])


def test_update_file_parsing_is_bounded_and_named() -> None:
    for data, fragment in [(b"no newline", "no header line"), (b'{"kind":"x"}\n', "not an edgefleet head update"),
                           (b'{"kind":"edgefleet-head-update","format":3}\n', "format 3"),
                           (b'{"format":2,"kind":"edgefleet-head-update"}\n', "head_encoding 'raw' does not go with"),
                           (b'{"format":1,"head_encoding":"raw","kind":"edgefleet-head-update"}\n', "does not go with"),
                           (HeadUpdate("0" * 64, {}, None, b"abc").to_bytes()[:-1], "truncated")]:
        with pytest.raises(BundleFormatError, match=fragment):
            HeadUpdate.from_bytes(data)


def test_json_diff_and_patch_round_trip() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": None, "e": {"f": 1}}, "g": "x", "h": None}
    new = {"a": 1, "b": {"c": [1, 3], "e": {"f": 1, "z": None}}, "g": None, "i": {"j": 2}}
    diff = json_diff(old, new)
    assert json_patch(old, diff) == new and "a" not in diff and json_diff(new, new) == {}
    assert json_patch(new, json_diff(new, old)) == old


def test_pack_cli_makes_v2_and_the_update(tmp_path: Path, v1: Path, new_head: Path, keypair: tuple[Path, Path]) -> None:
    from edgefleet.cli import cli

    runner = CliRunner()
    out, upd = tmp_path / "cli-v2", tmp_path / "v2.efh"
    res = runner.invoke(cli, ["pack", "--base", str(v1), "--head", str(new_head), "--version", "2.0.0", "--key",
                              str(keypair[0]), "--pub", str(keypair[1]), "-o", str(out), "--head-update", str(upd), "--archive"])
    assert res.exit_code == 0, res.output
    assert "head-only update" in res.output and Path(str(out) + ".efb").is_file()
    b, tmp = open_bundle(Path(str(out) + ".efb"), keypair[1])
    try:
        assert b.manifest.version == "2.0.0" and b.manifest.lineage["parent_version"] == "1.0.0"
        update = HeadUpdate.from_bytes(upd.read_bytes())
        assert plan_rebuild(verify_bundle_dir(v1).manifest_bytes, update, keypair[1],
                            installed_head=_head_file(v1)).manifest_bytes == b.manifest_bytes
    finally:
        if tmp is not None:
            tmp.cleanup()
    for args, fragment in [
        (["--base", str(v1), "--version", "3", "-o", str(tmp_path / "x")], "needs --head"),
        (["--base", str(v1), "--head", str(new_head), "--version", "1", "-o", str(tmp_path / "x")], "newer than"),
        (["--base", str(v1), "--head", str(new_head), "--name", "n", "--version", "3", "-o", str(tmp_path / "x")],
         "--name do not apply"),
        (["model.onnx", "--head", str(new_head), "--name", "n", "--version", "3", "-o", str(tmp_path / "x")], "go with --base"),
        (["--version", "3", "-o", str(tmp_path / "x")], "give MODEL and --name"),
    ]:
        res = runner.invoke(cli, ["pack", *args])
        assert res.exit_code == 2 and fragment in res.output, (args, res.output)
        assert "Traceback" not in res.output


# -- the encoded head (format 2) -----------------------------------------------------------------------------------
def _wide_head(seed: int = 0) -> Head:
    """dense(10 -> 128, relu) -> dense(128 -> 3, softmax): 1,795 float32 weights, a head file of ~7.5 KB."""
    rng = np.random.default_rng(seed)
    layers = [HeadLayer("dense", "fc", (10,), (128,), "relu", (("kernel", (10, 128)), ("bias", (128,)))),
              HeadLayer("dense", "probs", (128,), (3,), "softmax", (("kernel", (128, 3)), ("bias", (3,))))]
    return Head(layers, {"fc.kernel": rng.normal(0, 0.3, (10, 128)), "fc.bias": rng.normal(0, 0.1, 128),
                         "probs.kernel": rng.normal(0, 0.3, (128, 3)), "probs.bias": rng.normal(0, 0.1, 3)})


@pytest.fixture()
def fine_tuned(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path]) -> dict[str, Path]:
    """Signed v1 (a wide head) and v2 (v1's head fine-tuned a little: every weight moved by ~0.1%), with archives."""
    key = load_private_key(keypair[0])
    head = _wide_head()
    v1, a1 = pack(model_dir / "digits_int8.tflite", tmp_path / "w1", name="digits", version="1.0.0",
                  labels=["a", "b", "c"], head=head, private_key=key, archive=True)
    rng = np.random.default_rng(1)
    tuned = head.with_weights({k: v * (1 + 1e-3 * rng.normal(size=v.shape)) for k, v in head.weights.items()})
    v2, a2 = update_head(a1, tuned, tmp_path / "w2", version="2.0.0", private_key=key, trusted_keys=keypair[1],
                         archive=True)
    assert a1 is not None and a2 is not None
    return {"v1": v1.path, "v2": v2.path, "v1.efb": a1, "v2.efb": a2}


def test_a_fine_tuned_head_ships_no_larger_than_bsdiff4_of_the_archives_and_rebuilds_v2(
        tmp_path: Path, fine_tuned: dict[str, Path], keypair: tuple[Path, Path]) -> None:
    import bsdiff4

    installed = verify_bundle_dir(fine_tuned["v1"], keypair[1])
    full = verify_bundle_dir(fine_tuned["v2"], keypair[1])

    data = head_update_of(full, installed).to_bytes()  # the coordinator's and `pack --head-update`'s choice

    archives = bsdiff4.diff(fine_tuned["v1.efb"].read_bytes(), fine_tuned["v2.efb"].read_bytes())
    raw = head_update_of(full, installed, "raw")
    update = HeadUpdate.from_bytes(data)
    assert update.head_encoding == "xor-lzma" and data.startswith(b'{"base_manifest_sha256":')
    print(f"\nhead update {len(data):,} B (raw head {raw.size:,} B); bsdiff4 of the archives {len(archives):,} B")
    assert len(data) <= len(archives) < raw.size, (len(data), len(archives), raw.size)
    assert update.size == len(data)  # bytes shipped
    rebuilt = rebuild_bundle(installed, update, tmp_path / "rebuilt", keypair[1])
    assert _files(rebuilt.path) == _files(fine_tuned["v2"]) and rebuilt.manifest_bytes == full.manifest_bytes


def test_an_encoded_head_that_is_tampered_oversized_or_for_another_installed_head_is_refused(
        tmp_path: Path, fine_tuned: dict[str, Path], v1: Path, keypair: tuple[Path, Path]) -> None:
    import lzma

    installed = verify_bundle_dir(fine_tuned["v1"], keypair[1])
    update = head_update_of(verify_bundle_dir(fine_tuned["v2"], keypair[1]), installed, "xor-lzma")
    base_head = _head_file(fine_tuned["v1"])
    plan = lambda u, head=base_head: plan_rebuild(installed.manifest_bytes, u, keypair[1], installed_head=head)  # noqa: E731
    assert plan(update).head == _head_file(fine_tuned["v2"])

    def encoded(xor: bytes) -> HeadUpdate:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20, "lc": 0, "lp": 2, "pb": 2}]
        return HeadUpdate(update.base_manifest_sha256, update.manifest_patch, update.signature,
                          lzma.compress(xor, format=lzma.FORMAT_RAW, filters=filters), "xor-lzma")

    # tampered: a flipped byte in the compressed stream, a cut stream, trailing bytes, or a stream that decodes to
    # other bytes of the right size
    flipped = bytearray(update.head)
    flipped[len(flipped) // 2] ^= 0x40
    size = len(base_head)
    for bad, error in [(bytes(flipped), (BundleFormatError, BundleIntegrityError)), (update.head[:-5], BundleFormatError),
                       (update.head + b"\0", BundleFormatError), (b"not lzma", BundleFormatError)]:
        with pytest.raises(error):
            plan(HeadUpdate.from_bytes(HeadUpdate(update.base_manifest_sha256, update.manifest_patch, update.signature,
                                                  bad, "xor-lzma").to_bytes()))
    with pytest.raises(BundleIntegrityError, match="head file does not match"):
        plan(encoded(b"\1" * size))
    # decoding to more bytes than the signed manifest gives the head file: a few KB stretched to 1 GB would be a
    # bomb; refused once one byte past the size is out
    bomb = encoded(bytes(size + (1 << 20)))
    assert len(bomb.head) < 1024
    with pytest.raises(BundleIntegrityError, match="decodes past"):
        plan(bomb)
    with pytest.raises(BundleIntegrityError, match="decodes to"):
        plan(encoded(bytes(size - 1)))
    # a device whose installed head is not the one the update was encoded against: another bundle (wrong base),
    # the installed head file changed under its manifest, or not given at all
    other = verify_bundle_dir(v1, keypair[1])
    with pytest.raises(UpdateRejectedError, match="another base") as info:
        rebuild_bundle(other, update, tmp_path / "out", keypair[1])
    assert info.value.reason == "wrong_base"
    changed = bytearray(base_head)
    changed[-40] ^= 1
    for head in (bytes(changed), base_head[:-1], None):
        with pytest.raises(UpdateRejectedError, match="installed head file") as info:
            plan(update, head)
        assert info.value.reason == "wrong_base"
    (fine_tuned["v1"] / "head.npz").write_bytes(bytes(changed))
    with pytest.raises(UpdateRejectedError, match="installed head file"):
        rebuild_bundle(installed, update, tmp_path / "out", keypair[1])
    assert not (tmp_path / "out").exists()


def test_a_format_1_update_made_the_old_way_still_applies_and_an_old_reader_names_format_2(
        tmp_path: Path, fine_tuned: dict[str, Path], keypair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import edgefleet.headupdate as hu
    from edgefleet.canonical import canonical_json

    installed = verify_bundle_dir(fine_tuned["v1"], keypair[1])
    full = verify_bundle_dir(fine_tuned["v2"], keypair[1])
    raw = head_update_of(full, installed, "raw")
    head = _head_file(fine_tuned["v2"])
    # the file as the format-1 writer made it: its header's keys, nothing more
    old = canonical_json({"kind": UPDATE_KIND, "format": 1, "base_manifest_sha256": sha256_bytes(installed.manifest_bytes),
                          "manifest_patch": dict(raw.manifest_patch),
                          "signature": (fine_tuned["v2"] / "signature").read_text("utf-8"), "head_size": len(head)}) + b"\n" + head
    assert raw.to_bytes() == old  # the raw form is still format 1, byte for byte
    rebuilt = rebuild_bundle(installed, HeadUpdate.from_bytes(old), tmp_path / "rebuilt", keypair[1])
    assert _files(rebuilt.path) == _files(fine_tuned["v2"])
    # an edgefleet that reads format 1 only refuses format 2 with a named error (its device fetches the full bundle)
    monkeypatch.setattr(hu, "READ_FORMATS", frozenset({1}))
    with pytest.raises(UnsupportedFormatError, match="format 2; this edgefleet reads 1"):
        HeadUpdate.from_bytes(head_update_of(full, installed, "xor-lzma").to_bytes())
