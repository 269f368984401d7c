"""The fleet coordinator: registry, staged rollouts, telemetry ingest, HTTP API (loaded lazily)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Registry": ("edgefleet.cloud_sync.coordinator.registry", "Registry"),
    "Coordinator": ("edgefleet.cloud_sync.coordinator.service", "Coordinator"),
    "RolloutPlan": ("edgefleet.cloud_sync.coordinator.rollout", "RolloutPlan"),
    "create_app": ("edgefleet.cloud_sync.coordinator.api", "create_app"),
    "write_acl": ("edgefleet.cloud_sync.coordinator.acl", "write_acl"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(name)


__all__ = list(_LAZY)
