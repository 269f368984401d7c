"""edgefleet.cloud_sync: the MQTT protocol, transports, device sync, coordinator.

Submodules load lazily; nothing here imports paho, SQLAlchemy or FastAPI until used.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DeviceSync": ("edgefleet.cloud_sync.device", "DeviceSync"),
    "MemoryBroker": ("edgefleet.cloud_sync.transport", "MemoryBroker"),
    "MemoryTransport": ("edgefleet.cloud_sync.transport", "MemoryTransport"),
    "MqttTransport": ("edgefleet.cloud_sync.transport", "MqttTransport"),
    "MqttConfig": ("edgefleet.cloud_sync.transport", "MqttConfig"),
    "Coordinator": ("edgefleet.cloud_sync.coordinator.service", "Coordinator"),
    "Registry": ("edgefleet.cloud_sync.coordinator.registry", "Registry"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'edgefleet.cloud_sync' has no attribute {name!r}")


__all__ = list(_LAZY)
