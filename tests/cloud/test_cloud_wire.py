"""The wire layer (issue 14): one job-state enum for the wire and the device, one telemetry conversion."""

from __future__ import annotations

from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.device_agent.telemetry import Record
from edgefleet.device_agent.updates import JobStatus
from edgefleet.jobstate import JobState


def test_one_job_state_enum_with_the_wire_strings() -> None:
    assert JobStatus is JobState is P.JobState
    assert P.JOB_STATES == {"QUEUED", "DOWNLOADING", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "ROLLED_BACK",
                            "CANCELED", "TIMED_OUT"}
    assert P.TERMINAL_STATES == P.JOB_STATES - {"QUEUED", "DOWNLOADING", "IN_PROGRESS"}
    assert {s.value for s in JobState if s.terminal} == P.TERMINAL_STATES
    for s in JobState:  # a job update carrying the enum parses back to the same wire string
        upd = P.JobUpdate.parse(P.JobUpdate("j1", s, 1).to_bytes())
        assert upd.status == s.value and JobState(upd.status) is s


def test_a_queue_record_converts_to_the_wire_record_in_one_place() -> None:
    rec = Record(7, 1.5, "metrics", {"x": 1})
    wire = P.TelemetryRecord.of(rec)
    assert (wire.seq, wire.ts, wire.kind, wire.data) == (rec.seq, rec.ts, rec.kind, rec.data)
    batch = P.TelemetryBatch.parse(P.TelemetryBatch("d1", "b1", (wire,)).to_bytes())
    assert batch.records == (wire,)
