"""Signed rollback orders: the only way an older version may be installed.

An order names one exact bundle (the sha256 of its manifest), optionally one
device and an expiry, and is signed with a fleet key (the same Ed25519
signature document as bundles, over the canonical JSON of the order)::

    {"order": {"type": "edgefleet.rollback", "manifest_sha256": "...", "name": "m",
               "version": "3", "device_id": "", "expires_at": 0},
     "signature": {"algorithm": "ed25519", "key_id": "...", "signature": "..."}}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgefleet.canonical import canonical_json, sha256_bytes
from edgefleet.errors import SignatureError, UpdateRejectedError
from edgefleet.keys import PrivateKey, PublicKey, sign_payload, verify_payload
from edgefleet.manifest import MANIFEST_NAME

ORDER_TYPE = "edgefleet.rollback"


def make_rollback_order(
    private_key: PrivateKey,
    bundle_dir: str | os.PathLike,
    device_id: str = "",
    expires_in: float | None = None,
) -> dict[str, Any]:
    """Sign an order allowing ``bundle_dir`` (typically an older version) to be installed."""
    raw = (Path(bundle_dir) / MANIFEST_NAME).read_bytes()
    doc = json.loads(raw)
    order = {
        "type": ORDER_TYPE,
        "manifest_sha256": sha256_bytes(raw),
        "name": doc.get("name", ""),
        "version": doc.get("version", ""),
        "device_id": device_id,
        "expires_at": time.time() + expires_in if expires_in else 0,
    }
    return {"order": order, "signature": sign_payload(private_key, canonical_json(order))}


def check_rollback_order(
    doc: Mapping[str, Any], manifest_id: str, trusted: Sequence[PublicKey], device_id: str = "", now: float | None = None
) -> None:
    """Raise ``UpdateRejectedError(reason="bad_rollback_order")`` unless the order allows exactly this bundle."""
    def refuse(msg: str) -> UpdateRejectedError:
        return UpdateRejectedError(f"rollback order refused: {msg}", reason="bad_rollback_order")

    if not isinstance(doc, Mapping) or not isinstance(doc.get("order"), Mapping):
        raise refuse("not an order document")
    order = dict(doc["order"])
    try:
        verify_payload(dict(doc.get("signature") or {}), canonical_json(order), list(trusted))
    except SignatureError as exc:
        raise refuse(str(exc)) from None
    if order.get("type") != ORDER_TYPE:
        raise refuse(f"type is {order.get('type')!r}")
    if order.get("manifest_sha256") != manifest_id:
        raise refuse("it names a different bundle")
    if order.get("device_id") and order["device_id"] != device_id:
        raise refuse(f"it is addressed to device {order['device_id']!r}")
    expires = float(order.get("expires_at") or 0)
    if expires and (time.time() if now is None else now) > expires:
        raise refuse("it has expired")
