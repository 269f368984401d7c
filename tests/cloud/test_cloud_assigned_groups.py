"""Issue 13: groups are assigned by the operator, never claimed. A device's status message names the group it
would like (``Status.group``); the coordinator records that as a claim (counted, per device in ``claims``) and
never applies it: the group comes from the registry's row (``PATCH /v1/devices/{id}``) or the operator's
provisioning (``Coordinator(groups=...)``, ``cloud serve --allow FILE`` lines ``DEVICE GROUP``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.cloud_sync.wire import protocol as P


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Coordinator] = []

    def build(**kw: Any) -> Coordinator:
        reg = Registry(f"sqlite:///{tmp_path / f'r{len(made)}.db'}")
        coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f", **kw)
        coord.transport.connect()
        made.append(coord)
        return coord

    yield build
    for c in made:
        c.transport.close()
        c.registry.close()


def _group(coord: Coordinator, device: str) -> str | None:
    row = coord.registry.device("f", device)
    return None if row is None else row.group


def test_a_device_cannot_put_itself_into_a_group(make: Any) -> None:
    """A device announcing group ``retrain`` (say, one with a drift-triggered retrain) stays in ``default``."""
    coord = make()
    drifts: list[tuple[str, str]] = []
    coord.on_drift = lambda device, group, data: drifts.append((device, group))
    coord.handle("d1", P.Status("d1", True, 1, group="retrain"))
    assert _group(coord, "d1") == "default"
    assert coord.claims == {"d1": "retrain"} and coord.counters["group_claims"] == 1
    assert coord.counters["unassigned_devices"] == 1  # an unknown device registered by itself: counted
    rec = P.TelemetryRecord(1, 1.0, "drift", {"version": "1", "psi": 0.9})
    coord._telemetry_many([("d1", P.TelemetryBatch("d1", "b1", (rec,)))], linger=0)
    assert drifts == [("d1", "default")]


def test_the_operators_assignment_wins_and_claims_stay_claims(make: Any) -> None:
    coord = make(groups={"d1": "line-1", "d2": "line-2"})
    assert _group(coord, "d1") == "line-1" and _group(coord, "d2") == "line-2"  # provisioned before any contact
    coord.handle("d1", P.Status("d1", True, 1, group="retrain"))
    coord.handle("d2", P.Status("d2", True, 1, group="line-2"))  # announcing its own assignment is no claim
    assert _group(coord, "d1") == "line-1" and _group(coord, "d2") == "line-2"
    assert coord.claims == {"d1": "retrain"} and coord.counters["group_claims"] == 1
    assert coord.counters["unassigned_devices"] == 0
    # the operator moves d1 (what PATCH /v1/devices/d1 does); the device's next birth claims again, in vain
    coord.registry.set_device("f", "d1", group_name="line-2")
    coord.handle("d1", P.Status("d1", True, 2, group="retrain"))
    assert _group(coord, "d1") == "line-2" and coord.counters["group_claims"] == 2


def test_allow_file_assigns_groups(tmp_path: Path) -> None:
    """``cloud serve --allow FILE``: ``DEVICE`` or ``DEVICE GROUP`` a line, ``#`` comments; a bad line is named."""
    from edgefleet.cloud_sync.coordinator.service import read_allow_file
    from edgefleet.errors import ConfigError

    f = tmp_path / "allow"
    f.write_text("# provisioning\nd1 line-1\nd2\n\n  d3   line-2  \n")
    assert read_allow_file(f) == ({"d1", "d2", "d3"}, {"d1": "line-1", "d3": "line-2"})
    f.write_text("d1 line-1 extra\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_allow_file(f)
    f.write_text("d/1 g\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_allow_file(f)
