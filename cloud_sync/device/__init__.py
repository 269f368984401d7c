"""edgefleet.cloud_sync.device: the device side of cloud sync.

- :mod:`.machine`: every decision (jobs: duplicate, replayed, superseded, canceled, pending while installing;
  chunks; rollback orders; reports) as a machine, ``DeviceMachine.handle(event) -> actions``, without threads,
  broker or files.
- :mod:`.driver`: :class:`DeviceSync`, which connects an agent (typed as the :class:`~.driver.Agent` protocol)
  to the broker and performs the machine's actions; :class:`MqttSink` for telemetry.
"""

from __future__ import annotations

from .driver import Agent, DeviceSync, MqttSink

__all__ = ["Agent", "DeviceSync", "MqttSink"]
