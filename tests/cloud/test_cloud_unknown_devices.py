"""Unknown devices with an allow-list (issue 13): their telemetry is counted as refused, not silently dropped."""

from __future__ import annotations

from pathlib import Path

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.cloud_sync.wire import protocol as P


def test_telemetry_of_a_device_outside_the_allow_list_is_counted(tmp_path: Path) -> None:
    reg = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    coord = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f", allow_list={"d1"})
    coord.transport.connect()
    try:
        rec = P.TelemetryRecord(1, 1.0, "health", {"version": "1"})
        coord._telemetry_many([("intruder", P.TelemetryBatch("intruder", "b1", (rec,))),
                               ("d1", P.TelemetryBatch("d1", "b2", (rec,)))], linger=0)
        assert coord.counters["refused_devices"] == 1 and coord.refused["intruder"] == 1
        assert coord.counters["telemetry_records"] == 1 and reg.device("f", "intruder") is None
        coord.handle("intruder", P.Status("intruder", True, 1))
        assert coord.counters["refused_devices"] == 2 and coord.refused["intruder"] == 2
    finally:
        coord.transport.close()
        reg.close()
