"""The cloud side of quality probation, unit by unit: the wire's QualityPolicy (a deployment's settings in its
install jobs) and QualityRecord (a device's quality telemetry) bounded against hostile values; the policy string of
fleet deploy --quality; the registry keeping the newest record per device and version, a bounded number of versions;
the health gate naming each failed device's reason; the device machine handing the policy to the agent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.cloud_sync.coordinator.registry import MAX_QUALITY_VERSIONS, Registry
from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan, View, evaluate, parse_quality
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.device_agent.config import QualityConfig
from edgefleet.errors import ConfigError, ProtocolError

SHA = "ab" * 32
hostile = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=300), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(), st.integers()))
policy_keys = st.sampled_from(["mode", *P.QUALITY_BOUNDS, "unknown"])
record_keys = st.sampled_from([f for f in P.QualityRecord.__dataclass_fields__] + ["device_id", "window_start"])


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(st.dictionaries(policy_keys, hostile, max_size=6))
def test_a_quality_policy_from_anything_is_bounded_or_refused(d: dict[str, Any]) -> None:
    try:
        p = P.QualityPolicy.from_dict(d)
    except ProtocolError:
        return
    opts = p.options()
    assert set(opts) <= {"mode", *P.QUALITY_BOUNDS}
    for k, v in opts.items():
        if k == "mode":
            assert v in P.QUALITY_MODES
            continue
        typ, lo, hi, lo_open, hi_open = P.QUALITY_BOUNDS[k]
        assert type(v) is typ and math.isfinite(v) and lo <= v <= hi
        assert not (lo_open and v == lo) and not (hi_open and v == hi)
    # the device accepts whatever the wire let through, over its defaults, or refuses it with a ConfigError
    try:
        QualityConfig().overridden(opts)
    except ConfigError:
        pass


@settings(deadline=None)  # (a shared, loaded machine: timing is not what these check)
@given(st.dictionaries(record_keys, hostile, max_size=8))
def test_a_quality_record_from_anything_is_bounded_or_refused(d: dict[str, Any]) -> None:
    try:
        r = P.QualityRecord.from_dict(d)
    except ProtocolError:
        return
    assert 0.0 <= r.confidence <= 1.0 and 0.0 <= r.agreement <= 1.0 and 0.0 <= r.psi <= 1000.0
    assert -1.0 <= r.confidence_shift <= 1.0 and len(r.version) <= 128 and len(r.reference) <= 128
    assert 0 <= r.correct <= r.labelled <= 2**62 and 0 <= r.scored <= 2**62
    assert r.verdict in P.QUALITY_VERDICTS and r.signal in P.QUALITY_SIGNALS and r.head in P.QUALITY_HEADS
    assert r.accuracy is None or 0.0 <= r.accuracy <= 1.0


def test_the_agents_quality_record_parses() -> None:
    from edgefleet.device_agent.telemetry import QualityTotals

    t = QualityTotals("2")
    import numpy as np

    t.score(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    t.labelled, t.correct = 4, 3
    t.comparison = {"reference": "1", "compared": 60, "agreement": 0.95, "confidence_shift": -0.01,
                    "entropy_shift": 0.02, "psi": 0.01, "verdict": "pass", "signal": "agreement"}
    r = P.QualityRecord.from_dict({**t.to_record(), "device_id": "d1", "window_start": 1.0})
    assert (r.version, r.scored, r.reference, r.verdict, r.accuracy) == ("2", 2, "1", "pass", 0.75)
    assert r.confidence == pytest.approx(0.75) and r.head == ""
    # a version serving the device's personal head (a --personalize run) says so, and keeps saying it on restore
    t.head = "personal"
    assert P.QualityRecord.from_dict(t.to_record()).head == "personal"
    again = QualityTotals("2")
    again.restore(t.to_state())
    assert again.to_record() == t.to_record()
    with pytest.raises(ProtocolError, match="unknown head"):
        P.QualityRecord.from_dict({**t.to_record(), "head": "someone-elses"})


def test_desired_carries_the_policy_and_omits_it_when_absent() -> None:
    info = P.FileInfo(SHA, 100)
    plain = P.Desired("j1", "install", "dep", "2", info)
    assert "quality" not in plain.to_dict()
    assert P.Desired.parse(plain.to_bytes()).quality is None
    policy = parse_quality("enforce,agreement_bad=0.25,min_samples=40")
    d = P.Desired("j1", "install", "dep", "2", info, quality=policy)
    wire = d.to_dict()
    assert wire["quality"] == {"mode": "enforce", "agreement_bad": 0.25, "min_samples": 40}
    back = P.Desired.parse(d.to_bytes())
    assert back.quality == policy and back == d
    with pytest.raises(ProtocolError):
        P.Desired.from_dict({**wire, "quality": {"alpha": 0.7}})
    with pytest.raises(ProtocolError):
        P.Desired.from_dict({**wire, "quality": "enforce"})


@pytest.mark.parametrize("text, err", [("always", "mode"), ("alpha=1", "alpha"), ("min_samples=1.5", "number"),
                                       ("mode=enforce,mode=off", "twice"), ("x=1", "unknown"),
                                       ("max_samples=10,min_samples=20", "exceeds")])
def test_parse_quality_refuses_with_a_config_error(text: str, err: str) -> None:
    with pytest.raises(ConfigError, match=err):
        parse_quality(text)
    assert parse_quality("") is None and parse_quality("report") == P.QualityPolicy(mode="report")


def _rec(version: str, verdict: str = "pass", agreement: float = 0.9) -> P.QualityRecord:
    return P.QualityRecord(version=version, scored=10, confidence=0.8, labelled=4, correct=1, reference="1",
                           compared=50, agreement=agreement, verdict=verdict, signal="agreement")


def test_registry_keeps_the_newest_record_per_device_and_version(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    assert reg.put_quality("f", [("d1", "g", 10.0, _rec("2", "undecided", 0.5))]) == 1
    assert reg.put_quality("f", [("d1", "g", 5.0, _rec("2", "fail", 0.1))]) == 0  # older: nothing changes
    reg.put_quality("f", [("d1", "g", 20.0, _rec("2", "pass", 0.93)), ("d1", "g", 15.0, _rec("2", "fail", 0.0)),
                          ("d2", "g", 20.0, _rec("2", "fail", 0.05))])
    rows = {(q.device_id, q.version): q for q in reg.quality("f")}
    assert rows[("d1", "2")].verdict == "pass" and rows[("d1", "2")].agreement == 0.93 and rows[("d1", "2")].ts == 20
    assert rows[("d2", "2")].verdict == "fail" and rows[("d2", "2")].accuracy == 0.25
    assert [q.device_id for q in reg.quality("f", version="2", group="g")] == ["d1", "d2"]
    assert reg.quality("f", device_id="d2")[0].to_dict()["accuracy"] == 0.25
    # which head a version serves on a device is kept with its record (a registry from before has the column added)
    reg.put_quality("f", [("d2", "g", 30.0, P.QualityRecord(version="2", head="personal"))])
    assert {q.device_id: q.head for q in reg.quality("f", version="2")} == {"d1": "", "d2": "personal"}
    # a device naming many versions keeps its newest few
    reg.put_quality("f", [("d3", "g", 100.0 + i, _rec(f"v{i}")) for i in range(MAX_QUALITY_VERSIONS + 5)])
    kept = {q.version for q in reg.quality("f", device_id="d3")}
    assert kept == {f"v{i}" for i in range(5, MAX_QUALITY_VERSIONS + 5)}
    assert reg.quality("f", device_id="nobody") == [] and reg.quality("other") == []


def test_deployment_row_keeps_its_policy(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    dep = reg.create_deployment("f", SHA, "m", "2", "g", 0.1, [1.0], 0.0, ["d1"],
                                quality={"mode": "enforce", "min_samples": 40})
    assert reg.deployment(dep).quality == {"mode": "enforce", "min_samples": 40}  # type: ignore[union-attr]
    other = reg.create_deployment("f", SHA, "m", "3", "g", 0.1, [1.0], 0.0, ["d1"])
    assert reg.deployment(other).quality == {}  # type: ignore[union-attr]


def test_the_gate_names_each_failed_devices_reason() -> None:
    view = View("running", 0, ("a", "b", "c", "d"), {"a": "ROLLED_BACK", "b": "FAILED"}, frozenset("abcd"),
                reasons={"a": "quality", "b": "install_error"})
    dec = evaluate(RolloutPlan(0.5, (1.0,), 0.0), view)
    assert dec.halt.endswith("a (quality), b (install_error)"), dec.halt
    assert evaluate(RolloutPlan(0.5, (1.0,), 0.0), View("running", 0, ("a",), {"a": "ROLLED_BACK"},
                                                         frozenset("a"))).halt.endswith(": a")


class _Device:
    """The machine's view of a device serving v1 (what DeviceMachine asks its checks)."""

    def active_version(self) -> str:
        return "1"

    def previous_version(self) -> str | None:
        return None

    def delta_base(self) -> str | None:
        return None

    def check_before_download(self, desired: P.Desired) -> Path | None:
        return None

    def check_order(self, desired: P.Desired) -> Any:
        return None, False


def test_the_device_machine_hands_the_policy_to_the_agent() -> None:
    """The install a job ends in carries the deployment's policy as the agent's options (none without one)."""
    from edgefleet.cloud_sync.device import machine as M
    from edgefleet.cloud_sync.wire.transfer import file_info

    data = bytes(range(256)) * 8
    info = file_info(data, 1024)
    for policy, expect in ((parse_quality("enforce,wait_seconds=30"), {"mode": "enforce", "wait_seconds": 30.0}),
                           (None, None)):
        m = M.DeviceMachine(_Device(), max_bundle_bytes=1 << 20, window=4)
        m.handle(M.DesiredIn(P.Desired("j1", "install", "dep", "2", info, quality=policy)))
        m.handle(M.Opened(frozenset()))
        for i in range(info.chunks):
            m.handle(M.ChunkIn(P.Chunk(info.file_id, i, data[i * 1024:(i + 1) * 1024])))
        m.handle(M.FileChecked(True))
        out = m.handle(M.Prepared(Path("/x/incoming.efb")))
        assert [a.quality for a in out if isinstance(a, M.Install)] == [expect]


def test_fleet_status_marks_a_device_serving_its_own_head() -> None:
    from rich.console import Console

    from edgefleet.cloud_sync.cli import _quality_table

    rows = [{**_rec("2").__dict__, "device_id": d, "head": h, "accuracy": 0.25}
            for d, h in (("dev-01", "global"), ("dev-03", "personal"))]
    console = Console(width=200, record=True)
    console.print(_quality_table(rows, "device", "quality of 2 per device"))
    text = console.export_text()
    assert "dev-03 (own head)" in text and "dev-01 (own head)" not in text and "dev-01" in text, text
