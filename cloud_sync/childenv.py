"""The allow-list for child processes' environments: :mod:`edgefleet.childenv` (in the SDK, so that the device
agent uses it too); kept importable here for the coordinator's modules."""

from __future__ import annotations

from edgefleet.childenv import KEEP, KEEP_PREFIXES, SECRETS, child_env

__all__ = ["child_env", "KEEP", "KEEP_PREFIXES", "SECRETS"]
