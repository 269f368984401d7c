"""Archives the agent refuses get the same named reasons as bundle directories, and the
signature is checked before any data file is written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest

from edgefleet.device_agent.agent import Agent
from edgefleet.device_agent.updates import JobStatus


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _members(bundle_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bundle_dir.iterdir())}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.update({"manifest.json": b'{"format_version": 1, "name": "dense", "version": "1' + b"9" * 5000 + b'"}'}),
         "bad_manifest"),
        (lambda m: m.update({"manifest.json": b"[" * 100_000}), "bad_manifest"),
        (lambda m: m.pop("signature"), "unsigned"),
        (lambda m: m.update({"signature": m["signature"].replace(b'"sig', b'"xsig', 1)}), "bad_signature"),
    ],
)
def test_archive_refusals_are_rejected_with_named_reasons(
    agent_config: Any, make_bundle: Callable[..., Path], tmp_path: Path, change: Callable[[dict], Any], reason: str
) -> None:
    good = make_bundle("1", name="dense", seed=1)
    members = _members(good)
    change(members)
    bad = _tar(tmp_path / "bad.efb", members)
    with Agent(agent_config()) as agent:
        job = agent.install(bad)
        assert job.status is JobStatus.REJECTED and job.reason == reason, (job.status, job.reason, job.message)
        staging = agent.store.staging
        assert not any(p.is_file() and p.name.endswith(".onnx") for p in staging.rglob("*")), "data written before refusal"


def test_archive_signed_by_another_key_writes_no_model_file(
    agent_config: Any, make_bundle: Callable[..., Path], tmp_path: Path, keys: dict
) -> None:
    other = make_bundle("1", name="dense", seed=1, private_key=keys["other_priv"])
    arch = _tar(tmp_path / "other.efb", _members(other))
    with Agent(agent_config()) as agent:
        job = agent.install(arch)
        assert job.status is JobStatus.REJECTED and job.reason == "bad_signature", (job.reason, job.message)
