"""Job states: one enum for the device's update machine and the MQTT wire.

The device agent's update machine (:mod:`edgefleet.device_agent.updates`, where it is
also named ``JobStatus``) and the cloud protocol (:mod:`edgefleet.cloud_sync.wire.protocol`,
``JobUpdate.status``) share these states, in the style of AWS IoT Jobs. It lives in the
SDK because ``device_agent`` may import only the SDK and ``cloud_sync`` imports both.
The values are the strings on the wire and in the job log: never change one.

An agent job only ever takes QUEUED, IN_PROGRESS and the terminal SUCCEEDED, FAILED,
REJECTED, ROLLED_BACK; DOWNLOADING (the device is fetching the bundle), CANCELED
(superseded or canceled before the install) and TIMED_OUT (ended by the coordinator)
are states of the fleet job around it.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    QUEUED = "QUEUED"
    DOWNLOADING = "DOWNLOADING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    ROLLED_BACK = "ROLLED_BACK"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self not in _RUNNING


_RUNNING = frozenset({JobState.QUEUED, JobState.DOWNLOADING, JobState.IN_PROGRESS})

#: the wire strings of the states a job ends in, and of every state
TERMINAL_STATES: frozenset[str] = frozenset(s.value for s in JobState if s.terminal)
JOB_STATES: frozenset[str] = frozenset(s.value for s in JobState)

__all__ = ["JobState", "TERMINAL_STATES", "JOB_STATES"]
