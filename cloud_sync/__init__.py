"""edgefleet.cloud_sync: the MQTT protocol, transports, device sync, coordinator.

Submodules load lazily; nothing here imports paho, SQLAlchemy or FastAPI until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_attributes

_LAZY = {
    "DeviceSync": ("edgefleet.cloud_sync.device", "DeviceSync"),
    "MemoryBroker": ("edgefleet.cloud_sync.transport", "MemoryBroker"),
    "MemoryTransport": ("edgefleet.cloud_sync.transport", "MemoryTransport"),
    "MqttTransport": ("edgefleet.cloud_sync.transport", "MqttTransport"),
    "MqttConfig": ("edgefleet.cloud_sync.transport", "MqttConfig"),
    "Coordinator": ("edgefleet.cloud_sync.coordinator.service", "Coordinator"),
    "Registry": ("edgefleet.cloud_sync.coordinator.registry", "Registry"),
}

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .coordinator.registry import Registry as Registry
    from .coordinator.service import Coordinator as Coordinator
    from .device import DeviceSync as DeviceSync
    from .transport import MemoryBroker as MemoryBroker
    from .transport import MemoryTransport as MemoryTransport
    from .transport import MqttConfig as MqttConfig
    from .transport import MqttTransport as MqttTransport

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = list(_LAZY)
