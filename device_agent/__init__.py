"""edgefleet.device_agent: the on-device agent (model store, updates, telemetry, samples).

``Agent`` is the library; ``edgefleet agent run`` is the same code as a daemon.
Submodules load lazily so that ``import edgefleet.device_agent`` stays light.
"""

from __future__ import annotations

from edgefleet.lazy import lazy_getattr

_LAZY = {
    "Agent": ("edgefleet.device_agent.agent", "Agent"),
    "read_status": ("edgefleet.device_agent.agent", "read_status"),
    "AgentConfig": ("edgefleet.device_agent.config", "AgentConfig"),
    "load_config": ("edgefleet.device_agent.config", "load_config"),
    "Store": ("edgefleet.device_agent.store", "Store"),
    "Job": ("edgefleet.device_agent.updates", "Job"),
    "JobStatus": ("edgefleet.device_agent.updates", "JobStatus"),
    "UpdateMachine": ("edgefleet.device_agent.updates", "UpdateMachine"),
    "TelemetryQueue": ("edgefleet.device_agent.telemetry", "TelemetryQueue"),
    "TelemetrySink": ("edgefleet.device_agent.telemetry", "TelemetrySink"),
    "MemorySink": ("edgefleet.device_agent.telemetry", "MemorySink"),
    "Record": ("edgefleet.device_agent.telemetry", "Record"),
    "drain": ("edgefleet.device_agent.telemetry", "drain"),
    "SampleStore": ("edgefleet.device_agent.samples", "SampleStore"),
    "make_rollback_order": ("edgefleet.device_agent.orders", "make_rollback_order"),
}


__getattr__ = lazy_getattr("edgefleet.device_agent", _LAZY, globals())

__all__ = list(_LAZY)
