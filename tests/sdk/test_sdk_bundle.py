"""Bundles: packing, verification, and every kind of tampering gives a named error."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgefleet
from edgefleet.bundle import extract_archive, open_bundle, verify_bundle_dir, write_archive
from edgefleet.errors import (
    BundleFormatError,
    BundleIntegrityError,
    SignatureError,
    UnsafeArchiveError,
    UnsupportedFormatError,
)
from edgefleet.manifest import Manifest
from edgefleet.pack import pack

DIGITS_PRE = [{"op": "scale", "factor": 0.0625}]


def test_pack_writes_manifest_hashes_and_signature(signed_bundle: Path, keypair: tuple[Path, Path]) -> None:
    names = sorted(p.name for p in signed_bundle.iterdir())
    assert names == ["manifest.json", "model.onnx", "signature"]
    raw = (signed_bundle / "manifest.json").read_bytes()
    data = json.loads(raw)
    assert raw == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert data["inputs"][0]["shape"] == [-1, 64] and data["outputs"][0]["dtype"] == "float32"
    assert data["files"]["model.onnx"]["size"] == (signed_bundle / "model.onnx").stat().st_size
    assert data["smoke_tests"]["inputs"]["input"]
    b = verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])
    assert b.signed and b.signer is not None


def test_flipped_byte_in_model_is_integrity_error(signed_bundle: Path, keypair: tuple[Path, Path]) -> None:
    model = signed_bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        edgefleet.load(signed_bundle, trusted_keys=[keypair[1]])


def test_edited_manifest_breaks_signature(signed_bundle: Path, keypair: tuple[Path, Path]) -> None:
    path = signed_bundle / "manifest.json"
    data = json.loads(path.read_bytes())
    data["version"] = "9.0.0"
    path.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])


def test_wrong_key_is_signature_error(signed_bundle: Path, other_keypair: tuple[Path, Path]) -> None:
    with pytest.raises(SignatureError):
        edgefleet.load(signed_bundle, trusted_keys=[other_keypair[1]])


def test_unsigned_bundle_refused_when_keys_given(tmp_path: Path, model_dir: Path, keypair: tuple[Path, Path]) -> None:
    bundle, _ = pack(model_dir / "digits.onnx", tmp_path / "u", name="digits", version="1")
    assert not bundle.signed
    with pytest.raises(SignatureError, match="unsigned"):
        edgefleet.load(bundle.path, trusted_keys=[keypair[1]])
    with edgefleet.load(bundle.path) as m:  # no keys: hashes only
        assert m.version == "1"


def test_missing_and_extra_files(signed_bundle: Path, keypair: tuple[Path, Path]) -> None:
    (signed_bundle / "stray.bin").write_bytes(b"x")
    with pytest.raises(BundleIntegrityError, match="does not list"):
        verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])
    (signed_bundle / "stray.bin").unlink()
    (signed_bundle / "model.onnx").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])


def test_truncated_model_file_reports_size(signed_bundle: Path) -> None:
    model = signed_bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(BundleIntegrityError, match="bytes but the manifest says"):
        verify_bundle_dir(signed_bundle)


def test_no_manifest_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(BundleFormatError, match="manifest.json is missing"):
        edgefleet.load(tmp_path / "x")
    (tmp_path / "x" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="not valid JSON"):
        edgefleet.load(tmp_path / "x")


def test_newer_format_version_unsupported(signed_bundle: Path) -> None:
    data = json.loads((signed_bundle / "manifest.json").read_bytes())
    data["format_version"] = 99
    with pytest.raises(UnsupportedFormatError, match="upgrade"):
        Manifest.from_dict(data)
    data["format_version"] = 1
    data["model"]["format"] = "pt"
    with pytest.raises(UnsupportedFormatError, match="not supported"):
        Manifest.from_dict(data)


def test_archive_roundtrip_and_deterministic(signed_bundle: Path, tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    a1 = write_archive(signed_bundle, tmp_path / "a1.efb")
    a2 = write_archive(signed_bundle, tmp_path / "a2.efb")
    assert a1.read_bytes() == a2.read_bytes()
    with edgefleet.load(a1, trusted_keys=[keypair[1]]) as m:
        assert m.predict([[0.0] * 64]).shape == (1, 10)


def test_truncated_archive(signed_bundle: Path, tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    archive = write_archive(signed_bundle, tmp_path / "a.efb")
    data = archive.read_bytes()
    for cut in (len(data) // 3, len(data) - 1100, 700):
        bad = tmp_path / f"cut{cut}.efb"
        bad.write_bytes(data[:cut])
        with pytest.raises((BundleIntegrityError, BundleFormatError)):
            edgefleet.load(bad, trusted_keys=[keypair[1]])


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo], payloads: list[bytes]) -> Path:
    path = tmp_path / "evil.efb"
    with tarfile.open(path, "w") as tar:
        for info, data in zip(members, payloads):
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "sub/dir/file", "..", "a\\b"])
def test_path_traversal_refused(tmp_path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = 3
    archive = _tar_with(tmp_path, [info], [b"bad"])
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_links_refused(tmp_path: Path) -> None:
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info = tarfile.TarInfo("model.onnx")
        info.type = kind
        info.linkname = "/etc/passwd"
        archive = _tar_with(tmp_path, [info], [b""])
        with pytest.raises(UnsafeArchiveError, match="not a regular file"):
            extract_archive(archive, tmp_path / f"out{kind!r}")


def test_size_cap_and_duplicates(tmp_path: Path) -> None:
    info = tarfile.TarInfo("model.onnx")
    info.size = 5000
    archive = _tar_with(tmp_path, [info], [b"\0" * 5000])
    with pytest.raises(UnsafeArchiveError, match="cap"):
        extract_archive(archive, tmp_path / "o1", max_bytes=4096)
    dup = tarfile.TarInfo("model.onnx")
    dup.size = 1
    archive = _tar_with(tmp_path, [dup, dup], [b"a", b"b"])
    with pytest.raises(UnsafeArchiveError, match="twice"):
        extract_archive(archive, tmp_path / "o2")


def test_open_bundle_cleans_tmp_on_failure(signed_bundle: Path, tmp_path: Path, other_keypair: tuple[Path, Path]) -> None:
    archive = write_archive(signed_bundle, tmp_path / "a.efb")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(SignatureError):
        open_bundle(archive, trusted_keys=[other_keypair[1]], workdir=work)
    assert list(work.iterdir()) == []


def test_pack_is_atomic_on_failure(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(edgefleet.ConfigError):
        pack(model_dir / "digits.onnx", tmp_path / "b", name="digits", version="1", labels=["a", "b"])
    assert not (tmp_path / "b").exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_pack_refuses_bad_names_and_versions(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(edgefleet.BundleFormatError):
        pack(model_dir / "digits.onnx", tmp_path / "b", name="../x", version="1")
    with pytest.raises(edgefleet.ConfigError, match="dotted integers"):
        pack(model_dir / "digits.onnx", tmp_path / "b", name="x", version="v1-beta")


def test_symlinked_model_file_in_dir_refused(signed_bundle: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.onnx"
    shutil.copy(signed_bundle / "model.onnx", real)
    os.unlink(signed_bundle / "model.onnx")
    os.symlink(real, signed_bundle / "model.onnx")
    with pytest.raises(BundleIntegrityError):
        verify_bundle_dir(signed_bundle)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["format_version", "name", "version", "model", "target", "inputs", "outputs", "files", "labels", "preprocessing"]), json_values))
def test_manifest_parser_never_crashes(data: dict) -> None:
    try:
        Manifest.from_dict(data)
    except BundleFormatError:
        pass


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict:
    bundle, _ = pack(model_dir / "digits.onnx", tmp_path_factory.mktemp("m") / "b", name="d", version="1", preprocessing=DIGITS_PRE)
    return json.loads((bundle.path / "manifest.json").read_bytes())


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_manifest_parser_on_mutated_real_manifest(real_manifest: dict, data: st.DataObject) -> None:
    base = json.loads(json.dumps(real_manifest))
    key = data.draw(st.sampled_from(sorted(base)))
    base[key] = data.draw(json_values)
    try:
        m = Manifest.from_dict(base)
    except BundleFormatError:
        return
    assert Manifest.from_dict(json.loads(m.to_bytes())).to_bytes() == m.to_bytes()


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> bytes:
    root = tmp_path_factory.mktemp("arch")
    bundle, archive = pack(model_dir / "digits.onnx", root / "b", name="d", version="1", archive=True)
    assert archive is not None
    return archive.read_bytes()


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corrupted_archives_only_raise_bundle_errors(real_archive: bytes, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    blob = bytearray(real_archive)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    path = tmp_path_factory.mktemp("fuzz") / "x.efb"
    path.write_bytes(bytes(blob[:cut]))
    try:
        with edgefleet.load(path) as model:
            model.predict([[0.0] * 64])
    except edgefleet.EdgefleetError:
        pass


def test_oversized_signature_file_refused(signed_bundle: Path, keypair: tuple[Path, Path]) -> None:
    (signed_bundle / "signature").write_bytes(b"{" + b" " * (128 << 10) + b"}")
    with pytest.raises(SignatureError, match="larger than"):
        verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])
