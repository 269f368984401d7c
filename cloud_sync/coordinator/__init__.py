"""The fleet coordinator: registry, staged rollouts, telemetry ingest, HTTP API (loaded lazily)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.lazy import lazy_attributes

_LAZY = {
    "Registry": ("edgefleet.cloud_sync.coordinator.registry", "Registry"),
    "Coordinator": ("edgefleet.cloud_sync.coordinator.service", "Coordinator"),
    "RolloutPlan": ("edgefleet.cloud_sync.coordinator.rollout", "RolloutPlan"),
    "create_app": ("edgefleet.cloud_sync.coordinator.api", "create_app"),
    "write_acl": ("edgefleet.cloud_sync.coordinator.acl", "write_acl"),
}

if TYPE_CHECKING:  # the names _LAZY loads, typed for mypy and IDEs (a test keeps both in step)
    from .acl import write_acl as write_acl
    from .api import create_app as create_app
    from .registry import Registry as Registry
    from .rollout import RolloutPlan as RolloutPlan
    from .service import Coordinator as Coordinator

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = list(_LAZY)
