"""Bounded before trusted (issue 12, finding 2): hostile bundles and archives are refused with a
named error and its exit code before anything large is read, written or allocated.

Every test here stands for one observation of the adversarial review; none of them writes or
allocates much: they assert that the extraction directory stays tiny and bound the time.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgefleet
from edgefleet.bundle import extract_archive, open_bundle, read_manifest, verify_bundle_dir, write_archive
from edgefleet.cli import main
from edgefleet.errors import (
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    ConfigError,
    EdgefleetError,
    InvalidInputError,
    SignatureError,
    UnsafeArchiveError,
)
from edgefleet.keys import load_private_key, sign_payload
from edgefleet.manifest import Manifest, parse_version
from edgefleet.pack import pack
from edgefleet.preprocess import Pipeline


def _du(path: Path) -> int:
    """Bytes actually allocated on disk under ``path`` (sparse files count what they use)."""
    if not path.exists():
        return 0
    total = 0
    for p in [path, *path.rglob("*")]:
        try:
            total += p.lstat().st_blocks * 512
        except OSError:
            pass
    return total


def _cli(argv: list[str], capsys: Any) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _one_line(err: str, limit: int = 600) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:2000]
    assert lines[0].startswith("edgefleet: error: ")
    assert "Traceback" not in err
    assert len(err) < limit, len(err)


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _sparse_header(name: str, realsize: int, stored: int = 512) -> bytes:
    """A GNU sparse ('S') member header: ``stored`` bytes of data that expand to ``realsize``."""
    info = tarfile.TarInfo(name)
    info.size = stored
    info.type = tarfile.GNUTYPE_SPARSE
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[386:398] = _octal(realsize - stored, 12)  # one sparse region: its offset ...
    buf[398:410] = _octal(stored, 12)  # ... and length
    buf[482] = 0  # no extension headers
    buf[483:495] = _octal(realsize, 12)  # the expanded size
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    return bytes(buf[:512])


def _ustar(name: str, data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    pad = (-len(data)) % 512
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * pad


def _rewrite_manifest(bundle: Path, edit: Callable[[dict], Any] | None = None, raw: bytes | None = None,
                      key: Path | None = None) -> None:
    """Replace the manifest (an edited copy of the real one, or raw bytes); re-sign with ``key``
    or drop the signature."""
    if raw is None:
        data = json.loads((bundle / "manifest.json").read_bytes())
        assert edit is not None
        edit(data)
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    (bundle / "manifest.json").write_bytes(raw)
    sig = bundle / "signature"
    if key is None:
        sig.unlink(missing_ok=True)
    else:
        sig.write_bytes(json.dumps(sign_payload(load_private_key(key), raw), sort_keys=True).encode() + b"\n")


def _unblocks(fn: Callable[[], Any], fifo_paths: list[Path], timeout: float = 5.0) -> Any:
    """Run ``fn`` in a thread; if it is still running after ``timeout`` (blocked on a FIFO),
    release the FIFOs and fail."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for p in fifo_paths:  # a writer that closes at once gives the blocked reader EOF
            try:
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"blocked for more than {timeout} s on a FIFO")
    if "error" in out:
        raise out["error"]
    return out.get("value")


# -- archives: sparse and special members, member count, work before verification ------------------------
def test_sparse_member_refused_before_anything_is_written(tmp_path: Path, capsys: Any, keypair: tuple) -> None:
    """Review: a 10 KB archive with a GNU sparse member wrote ~1 GB before the refusal."""
    archive = tmp_path / "sparse.efb"
    archive.write_bytes(_sparse_header("model.onnx", 64 << 20) + b"x" * 512 + b"\0" * 1024)
    assert archive.stat().st_size < 10_000
    dest = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        extract_archive(archive, dest)
    assert time.monotonic() - t0 < 1.0
    assert _du(dest) < 64 << 10
    rc, err = _cli(["verify", str(archive), "--pub", str(keypair[1])], capsys)
    assert rc == UnsafeArchiveError.exit_code
    _one_line(err)


def test_sparse_member_after_a_valid_manifest_writes_nothing_large(signed_bundle: Path, tmp_path: Path) -> None:
    """The same sparse member placed after a genuine signed manifest and signature."""
    good = write_archive(signed_bundle, tmp_path / "good.efb")
    with tarfile.open(good) as tar:
        head = b"".join(_ustar(m.name, tar.extractfile(m).read()) for m in tar if m.name != "model.onnx")
    archive = tmp_path / "sparse2.efb"
    archive.write_bytes(head + _sparse_header("model.onnx", 64 << 20) + b"x" * 512 + b"\0" * 1024)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        extract_archive(archive, dest)
    assert _du(dest) < 64 << 10


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
                                  tarfile.CONTTYPE])
def test_special_members_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("model.onnx")
    info.type = kind
    if kind == tarfile.CONTTYPE:
        info.size = 3
    archive = tmp_path / "special.efb"
    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"abc") if kind == tarfile.CONTTYPE else None)
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_many_empty_members_refused_fast_with_a_short_message(tmp_path: Path, capsys: Any) -> None:
    """Review: 20,000 empty members took 14 s and a 189 KB error line."""
    archive = tmp_path / "many.efb"
    with open(archive, "wb") as fh:
        for i in range(20_000):
            fh.write(_ustar(f"f{i:05d}"))
        fh.write(b"\0" * 1024)
    dest = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, dest)
    assert time.monotonic() - t0 < 1.0
    assert len(str(info.value)) < 300
    assert not dest.exists()
    rc, err = _cli(["inspect", str(archive)], capsys)
    assert rc == UnsafeArchiveError.exit_code
    _one_line(err)


def test_unlisted_members_refused_before_extraction(signed_bundle: Path, tmp_path: Path) -> None:
    """A member the (signed) manifest does not list is refused before any data file is written."""
    good = write_archive(signed_bundle, tmp_path / "good.efb")
    archive = tmp_path / "extra.efb"
    data = good.read_bytes().rstrip(b"\0")
    data += b"\0" * ((-len(data)) % 512)
    archive.write_bytes(data + _ustar("payload.sh", b"rm -rf /") + b"\0" * 1024)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="payload.sh"):
        extract_archive(archive, dest)
    assert not dest.exists()


def test_declared_sizes_cap_each_member(signed_bundle: Path, tmp_path: Path) -> None:
    """A member larger than the size its manifest declares is refused before it is written."""
    good = write_archive(signed_bundle, tmp_path / "good.efb")
    with tarfile.open(good) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    archive = tmp_path / "big.efb"
    archive.write_bytes(b"".join(_ustar(n, d + (b"\0" * (1 << 20) if n == "model.onnx" else b""))
                                 for n, d in members) + b"\0" * 1024)
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="model.onnx"):
        extract_archive(archive, dest)
    assert _du(dest) < 64 << 10


def test_signature_checked_before_data_is_extracted(signed_bundle: Path, tmp_path: Path,
                                                     other_keypair: tuple, monkeypatch: Any) -> None:
    """open_bundle with trusted keys: a wrong signature is refused before any model byte is written."""
    archive = write_archive(signed_bundle, tmp_path / "a.efb")
    written: list[str] = []
    real_open = open

    def spy(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "w" in mode and str(file).endswith("model.onnx"):
            written.append(str(file))
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(SignatureError):
        open_bundle(archive, trusted_keys=[other_keypair[1]], workdir=tmp_path)
    assert written == []


def test_archive_round_trip_still_verifies(signed_bundle: Path, tmp_path: Path, keypair: tuple) -> None:
    archive = write_archive(signed_bundle, tmp_path / "a.efb")
    b, tmp = open_bundle(archive, trusted_keys=[keypair[1]])
    try:
        assert b.signed and b.manifest.name == "digits"
    finally:
        assert tmp is not None
        tmp.cleanup()


# -- manifests: versions, depth, size ---------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1" * 5000, "1" * 10, "1.2.3.4.5", "1.2.3\n", "\u0661", "01x", "", "1..2",
                                  " 1", "+1", "-1", "1.", "1e3"])
def test_bad_versions_are_named_errors(text: str) -> None:
    with pytest.raises(BundleFormatError):
        parse_version(text)


def test_versions_within_bounds() -> None:
    assert parse_version("999999999.0.1.2") == (999999999, 0, 1, 2)
    assert parse_version("3") == (3, 0, 0, 0)


@pytest.mark.parametrize("field", ["version", "min_agent_version"])
def test_5000_digit_version_in_unsigned_manifest(signed_bundle: Path, capsys: Any, field: str) -> None:
    """Review: a 5,000-digit version in an unsigned manifest gave a raw ValueError traceback."""

    def edit(d: dict) -> None:
        if field == "version":
            d["version"] = "1" * 5000
        else:
            d["target"]["min_agent_version"] = "7" * 5000

    _rewrite_manifest(signed_bundle, edit)
    with pytest.raises(BundleFormatError):
        read_manifest(signed_bundle)
    rc, err = _cli(["inspect", str(signed_bundle)], capsys)
    assert rc == BundleFormatError.exit_code
    _one_line(err)


@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
def test_100k_deep_json_manifest(signed_bundle: Path, tmp_path: Path, capsys: Any, shape: str) -> None:
    """Review: 100k-deep JSON in an unsigned manifest gave a raw RecursionError traceback."""
    n = 100_000
    raw = {
        "list": b"[" * n + b"]" * n,
        "object": b'{"a":' * n + b"1" + b"}" * n,
        "mixed": b'{"format_version":1,"x":' + b'[{"a":' * n + b"1" + b"}]" * n + b"}",
    }[shape]
    _rewrite_manifest(signed_bundle, raw=raw)
    t0 = time.monotonic()
    with pytest.raises(BundleFormatError, match="deep"):
        read_manifest(signed_bundle)
    assert time.monotonic() - t0 < 1.0
    rc, err = _cli(["inspect", str(signed_bundle)], capsys)
    assert rc == BundleFormatError.exit_code
    _one_line(err)
    archive = write_archive(signed_bundle, tmp_path / "deep.efb")
    with pytest.raises(BundleFormatError):
        open_bundle(archive)


def test_json_bracket_inside_strings_is_not_depth(signed_bundle: Path) -> None:
    """Depth is counted outside strings: a label full of brackets is fine."""
    _rewrite_manifest(signed_bundle, lambda d: d["labels"].__setitem__(0, "[{" * 5000 + '\\"[' * 100))
    m, _ = read_manifest(signed_bundle)
    assert m.labels[0].startswith("[{[{")


def test_huge_integers_and_duplicate_keys_are_format_errors(signed_bundle: Path) -> None:
    raw = (signed_bundle / "manifest.json").read_bytes()
    _rewrite_manifest(signed_bundle, raw=raw.replace(b'"format_version":1', b'"format_version":' + b"1" * 5000))
    with pytest.raises(BundleFormatError):
        read_manifest(signed_bundle)
    _rewrite_manifest(signed_bundle, raw=raw[:-1] + b',"name":"other"}')
    with pytest.raises(BundleFormatError, match="twice|duplicate"):
        read_manifest(signed_bundle)


def test_oversized_manifest_is_refused_without_reading_it(signed_bundle: Path) -> None:
    path = signed_bundle / "manifest.json"
    with open(path, "r+b") as fh:
        fh.truncate(1 << 30)  # sparse: nothing is really written
    t0 = time.monotonic()
    with pytest.raises(BundleFormatError, match="larger"):
        read_manifest(signed_bundle)
    assert time.monotonic() - t0 < 0.5


# -- no blocking opens: FIFOs, devices, symlinks ------------------------------------------------------------
def test_fifo_manifest_does_not_hang_verify(signed_bundle: Path, capsys: Any, keypair: tuple) -> None:
    """Review: a FIFO manifest.json hung ``verify`` and the agent."""
    m = signed_bundle / "manifest.json"
    m.unlink()
    os.mkfifo(m)
    with pytest.raises(BundleFormatError, match="regular"):
        _unblocks(lambda: verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]]), [m])
    rc, err = _unblocks(lambda: _cli(["verify", str(signed_bundle), "--pub", str(keypair[1])], capsys), [m])
    assert rc == BundleFormatError.exit_code
    _one_line(err)


def test_fifo_signature_and_model_do_not_hang(signed_bundle: Path, keypair: tuple) -> None:
    sig = signed_bundle / "signature"
    sig.unlink()
    os.mkfifo(sig)
    with pytest.raises(SignatureError):
        _unblocks(lambda: verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]]), [sig])
    sig.unlink()
    model = signed_bundle / "model.onnx"
    model.unlink()
    os.mkfifo(model)
    with pytest.raises(BundleIntegrityError):
        _unblocks(lambda: verify_bundle_dir(signed_bundle), [model])


def test_fifo_manifest_does_not_hang_agent_install(signed_bundle: Path, tmp_path: Path, capsys: Any,
                                                    keypair: tuple) -> None:
    m = signed_bundle / "manifest.json"
    m.unlink()
    os.mkfifo(m)
    rc, err = _unblocks(lambda: _cli(["agent", "install", str(signed_bundle), "--state-dir", str(tmp_path / "st"),
                                      "--trust", str(keypair[1])], capsys), [m], timeout=20)
    assert rc != 0 and isinstance(rc, int)
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["manifest.json", "signature"])
def test_symlink_to_dev_zero_is_not_read(signed_bundle: Path, capsys: Any, keypair: tuple, name: str) -> None:
    """Review: a manifest.json symlinked to /dev/zero was read until MemoryError at 1.3 GB."""
    p = signed_bundle / name
    p.unlink()
    p.symlink_to("/dev/zero")
    t0 = time.monotonic()
    with pytest.raises(BundleError):
        verify_bundle_dir(signed_bundle, trusted_keys=[keypair[1]])
    rc, err = _cli(["verify", str(signed_bundle), "--pub", str(keypair[1])], capsys)
    assert time.monotonic() - t0 < 2.0
    assert rc in (BundleFormatError.exit_code, SignatureError.exit_code)
    _one_line(err)


@pytest.mark.parametrize("kind", ["public", "private"])
def test_fifo_key_file_does_not_hang(tmp_path: Path, capsys: Any, signed_bundle: Path, kind: str) -> None:
    """A key path that is a FIFO (or a symlink to one) is refused at once, never waited on."""
    from edgefleet.keys import load_public_key

    fifo = tmp_path / f"key.{kind}"
    os.mkfifo(fifo)
    link = tmp_path / "link.pub"
    link.symlink_to(fifo)
    load = load_public_key if kind == "public" else load_private_key
    for p in (fifo, link):
        with pytest.raises(ConfigError, match="not a regular file"):
            _unblocks(lambda p=p: load(p), [fifo])
    if kind == "public":  # the CLI: one line, the config error's exit code
        rc, err = _unblocks(lambda: _cli(["verify", str(signed_bundle), "--pub", str(fifo)], capsys), [fifo])
        assert rc == ConfigError.exit_code and str(fifo) in err
        _one_line(err)


@pytest.mark.parametrize("kind", ["public", "private"])
def test_huge_key_file_is_refused_without_reading_it(tmp_path: Path, kind: str) -> None:
    """A 4 GiB (sparse) key file, or /dev/zero, is refused from its size before a byte is read."""
    from edgefleet.keys import MAX_KEY_FILE_BYTES, load_public_key

    huge = tmp_path / "huge.pem"
    with open(huge, "wb") as fh:
        fh.truncate(4 << 30)
    zero = tmp_path / "zero.pub"
    zero.symlink_to("/dev/zero")
    load = load_public_key if kind == "public" else load_private_key
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"larger than the {MAX_KEY_FILE_BYTES}-byte cap"):
        load(huge)
    with pytest.raises(ConfigError, match="not a regular file"):
        load(zero)
    assert time.monotonic() - t0 < 1.0


def test_many_extra_files_give_a_short_message(signed_bundle: Path) -> None:
    for i in range(600):
        (signed_bundle / f"extra{i:05d}.bin").touch()
    with pytest.raises(BundleIntegrityError) as info:
        verify_bundle_dir(signed_bundle)
    assert len(str(info.value)) < 400


# -- preprocessing parameters ------------------------------------------------------------------------------
def test_resize_40000_is_refused_when_parsed() -> None:
    """Review: a signed preprocessing resize to 40000x40000 raised a bare MemoryError."""
    with pytest.raises(ConfigError, match="resize"):
        Pipeline.from_spec([{"op": "resize", "height": 40000, "width": 40000}])


def test_signed_resize_40000_bundle_is_a_format_error(signed_bundle: Path, keypair: tuple, capsys: Any,
                                                      tmp_path: Path) -> None:
    def edit(d: dict) -> None:
        d["preprocessing"] = {"input": {"input_shape": None, "steps": [
            {"op": "reshape", "shape": [8, 8, 1]}, {"op": "resize", "height": 40000, "width": 40000}]}}

    _rewrite_manifest(signed_bundle, edit, key=keypair[0])
    with pytest.raises(BundleFormatError, match="preprocessing"):
        edgefleet.load(signed_bundle, trusted_keys=[keypair[1]])
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    rc, err = _cli(["predict", str(signed_bundle), "--input", str(tmp_path / "x.npy"), "--pub", str(keypair[1])],
                   capsys)
    assert rc == BundleFormatError.exit_code
    _one_line(err)


def test_preprocessing_bounded_by_declared_input_shape() -> None:
    """With a declared input shape, an intermediate of more than the per-sample cap is refused at build."""
    with pytest.raises(ConfigError):
        Pipeline.from_spec({"input_shape": [2, 2, 3], "steps": [{"op": "resize", "height": 8192, "width": 8192}]})
    with pytest.raises(ConfigError):
        Pipeline.from_spec([{"op": "window", "size": 1 << 30}])


def test_preprocessing_batch_bound_is_an_input_error() -> None:
    """Without a declared shape, the intermediate of one call is bounded: a named input error, not MemoryError."""
    p = Pipeline.from_spec([{"op": "resize", "height": 4096, "width": 4096}])
    t0 = time.monotonic()
    with pytest.raises(InvalidInputError, match="elements"):
        p.apply(np.zeros((20, 2, 2, 1), np.float32))
    assert time.monotonic() - t0 < 0.5
    assert p.apply(np.zeros((1, 2, 2, 1), np.float32)).shape == (1, 4096, 4096, 1)


# -- hypothesis over manifest JSON ---------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_KEYS = ["format_version", "name", "version", "created_at", "model", "target", "inputs", "outputs",
         "preprocessing", "labels", "files", "reference_stats", "smoke_tests", "metrics", "lineage", "state",
         "stateful_variables"]


@pytest.fixture(scope="module")
def base_manifest(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict:
    bundle, _ = pack(model_dir / "digits.onnx", tmp_path_factory.mktemp("hb") / "b", name="digits", version="1.0.0",
                     labels=[str(i) for i in range(10)])
    return json.loads((bundle.path / "manifest.json").read_bytes())


def _parse_raw(tmp: Path, raw: bytes) -> Manifest | None:
    (tmp / "manifest.json").write_bytes(raw)
    try:
        m, _ = read_manifest(tmp)
    except BundleFormatError:
        return None
    return m


def _consume(m: Manifest) -> None:
    """What inspect and the agent do with a parsed manifest must not raise anything else."""
    from edgefleet.commands import _manifest_summary

    _manifest_summary(m)
    assert len(m.version_tuple) == 4
    parse_version(m.target.min_agent_version)
    m.to_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(_KEYS), value=_json, path=st.lists(st.integers(0, 5), max_size=3))
def test_hypothesis_mutated_manifest_is_valid_or_named_error(base_manifest: dict, tmp_path: Path, key: str,
                                                               value: Any, path: list[int]) -> None:
    data = json.loads(json.dumps(base_manifest))
    target: Any = data
    k: Any = key
    for step in path:  # descend into the chosen field, replace something inside it
        nxt = target.get(k) if isinstance(target, dict) else (target[k] if isinstance(target, list) and
                                                               -len(target) <= k < len(target) else None)
        if isinstance(nxt, dict) and nxt:
            target, k = nxt, sorted(nxt)[step % len(nxt)]
        elif isinstance(nxt, list) and nxt:
            target, k = nxt, step % len(nxt)
        else:
            break
    target[k] = value
    raw = json.dumps(data).encode()
    m = _parse_raw(tmp_path, raw)
    if m is not None:
        _consume(m)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_hypothesis_arbitrary_bytes_are_named_errors(tmp_path: Path, raw: bytes) -> None:
    m = _parse_raw(tmp_path, raw)
    if m is not None:
        _consume(m)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 3000), opener=st.sampled_from([b"[", b'{"k":', b'[{"k":']))
def test_hypothesis_nesting_depth(tmp_path: Path, depth: int, opener: bytes) -> None:
    closer = {b"[": b"]", b'{"k":': b"}", b'[{"k":': b"}]"}[opener]
    raw = b'{"format_version":1,"deep":' + opener * depth + b"0" + closer * depth + b"}"
    try:
        _parse_raw(tmp_path, raw)
    except EdgefleetError as exc:  # pragma: no cover - _parse_raw already takes BundleFormatError
        pytest.fail(f"not a format error: {exc!r}")

