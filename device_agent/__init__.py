"""edgefleet.device_agent: the on-device agent (model store, updates, telemetry, samples).

``Agent`` is the library; ``edgefleet agent run`` is the same code as a daemon.
Submodules load lazily so that ``import edgefleet.device_agent`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_attributes

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

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .agent import Agent as Agent
    from .agent import read_status as read_status
    from .config import AgentConfig as AgentConfig
    from .config import load_config as load_config
    from .orders import make_rollback_order as make_rollback_order
    from .samples import SampleStore as SampleStore
    from .store import Store as Store
    from .telemetry import MemorySink as MemorySink
    from .telemetry import Record as Record
    from .telemetry import TelemetryQueue as TelemetryQueue
    from .telemetry import TelemetrySink as TelemetrySink
    from .telemetry import drain as drain
    from .updates import Job as Job
    from .updates import JobStatus as JobStatus
    from .updates import UpdateMachine as UpdateMachine

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = list(_LAZY)
