"""Personal heads: a device's own fine-tuned copy of a version's trainable head (FedPer style).

A federated head run started with ``--personalize`` ends, on each device, by fine-tuning the
run's final global head on the device's own training samples and scoring both heads on its
held-back samples (:func:`edgefleet.cloud_sync.federated.head_trainer.personalize`). When the
local head wins, the ClientApp keeps it here, under the agent's state directory::

    personal/<global head sha256>.npz    the head file (edgefleet.head's deterministic npz)
    personal/<global head sha256>.json   what it personalises and how it scored

The global head the run produced is the head of the version the coordinator then compiles,
signs and rolls out (its ``manifest.head.sha256``), so the agent finds the personal head when
that version is installed and serves it instead of the global one (:meth:`PersonalHeads.for_manifest`;
``[federated] personal_heads = false`` turns that off). Nothing here is signed: the head was
made on this device from this device's data. A file that is damaged, of another backbone or of
other layers is ignored with a warning: the device serves the signed global head.

Pure file logic; the only I/O is reading and atomically writing these files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edgefleet.atomic import write_atomic
from edgefleet.errors import EdgefleetError, StoreError
from edgefleet.head import Head, backbone_digest
from edgefleet.manifest import Manifest

log = logging.getLogger("edgefleet.agent.personal")

PERSONAL_DIR = "personal"
#: personal heads kept (the newest; each belongs to one version's global head)
KEEP = 4
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
#: a temporary file of an interrupted write older than this is removed by prune
STALE_SECONDS = 600.0
_MAX_META = 64 * 1024


@dataclass(frozen=True)
class PersonalHead:
    """A kept personal head and what it was measured against on this device's held-back samples."""

    base: str  # the global head's sha256: manifest.head.sha256 of the version it personalises
    backbone: str  # backbone_digest of that version
    head: Head
    global_accuracy: float
    personal_accuracy: float
    holdout: int
    run: str  # the federated run that made it
    created: float

    def summary(self) -> dict[str, Any]:
        """What the agent reports (status, telemetry): which head it serves and both accuracies."""
        return {"base": self.base, "run": self.run, "holdout": self.holdout,
                "global_accuracy": self.global_accuracy, "personal_accuracy": self.personal_accuracy,
                "created": self.created}


def _finite(meta: Mapping[str, Any], key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise StoreError(f"personal head record: {key} is not a finite number in [{lo}, {hi}]")
    return float(v)


def _count(meta: Mapping[str, Any], key: str) -> int:
    v = meta.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 62:
        raise StoreError(f"personal head record: {key} is not a count")
    return v


def _created(record: Mapping[str, Any]) -> float:
    """When a record was made, for ordering: a record with no usable time sorts as the oldest."""
    v = record.get("created")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else -math.inf


class PersonalHeads:
    """The personal heads under an agent's state directory."""

    def __init__(self, state_dir: str | Path, keep: int = KEEP) -> None:
        self.dir = Path(state_dir) / PERSONAL_DIR
        self.keep = keep

    def _paths(self, base: str) -> tuple[Path, Path]:
        if not _SHA_RE.match(base):
            raise StoreError(f"a personal head is named by its global head's sha256, not {base[:80]!r}")
        return self.dir / f"{base}.npz", self.dir / f"{base}.json"

    def save(self, *, base: str, backbone: str, head: Head, global_accuracy: float, personal_accuracy: float,
             holdout: int, run: str = "") -> Path:
        """Keep ``head`` as this device's personal head for the version whose global head is ``base``
        (head file first, then its record: a record always names a complete head file); older ones beyond
        :attr:`keep` are removed."""
        npz, meta = self._paths(base)
        data = head.to_npz()
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(npz, data)
        doc = {"base": base, "backbone": backbone, "sha256": hashlib.sha256(data).hexdigest(), "run": run,
               "created": time.time(), "global_accuracy": float(global_accuracy),
               "personal_accuracy": float(personal_accuracy), "holdout": int(holdout)}
        write_atomic(meta, json.dumps(doc, indent=1))
        log.info("kept a personal head for global head %s (run %s): holdout accuracy %.3f vs %.3f global",
                 base[:12], run or "-", personal_accuracy, global_accuracy)
        self.prune()
        return npz

    def remove(self, base: str) -> bool:
        """Forget the personal head of ``base`` (a later run's local head lost to the global one)."""
        found = False
        for p in self._paths(base):
            try:
                p.unlink()
                found = True
            except FileNotFoundError:
                pass
        return found

    def records(self) -> list[dict[str, Any]]:
        """The kept heads' records, newest first (unreadable ones left out)."""
        out = []
        for p in self.dir.glob("*.json") if self.dir.is_dir() else ():
            try:
                doc = json.loads(p.read_bytes()[:_MAX_META])
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return sorted(out, key=_created, reverse=True)

    def prune(self) -> None:
        """Keep the newest :attr:`keep` heads; remove older ones and the temporary files of writes cut short
        (a kill -9 in ``save``) once they are :data:`STALE_SECONDS` old."""
        keep = {str(d.get("base")) for d in self.records()[: self.keep]}
        now = time.time()
        for p in list(self.dir.iterdir()) if self.dir.is_dir() else ():
            stem = p.name.split(".")[0]
            if p.suffix in (".npz", ".json") and _SHA_RE.match(stem) and stem not in keep:
                p.unlink(missing_ok=True)
            elif p.name.startswith(".") and ".tmp-" in p.name:
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > STALE_SECONDS:
                        p.unlink()

    def load(self, manifest: Manifest) -> PersonalHead:
        """The personal head for ``manifest``'s version; a ``StoreError`` says why there is none usable."""
        spec = manifest.head
        if spec is None:
            raise StoreError(f"{manifest.name} v{manifest.version} has no trainable head")
        npz, meta = self._paths(spec.sha256)
        try:
            raw = meta.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"no personal head for {manifest.name} v{manifest.version}") from None
        except OSError as exc:
            raise StoreError(f"personal head record {meta.name} is unreadable: {exc.strerror}") from None
        try:
            if len(raw) > _MAX_META:
                raise ValueError("too large")
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise StoreError(f"personal head record {meta.name} is damaged: {exc}") from None
        if doc.get("base") != spec.sha256:
            raise StoreError(f"personal head record {meta.name} names another global head")
        if doc.get("backbone") != backbone_digest(manifest):
            raise StoreError(f"the personal head for global head {spec.sha256[:12]} was trained on another backbone "
                             f"than {manifest.name} v{manifest.version}'s")
        try:
            data = npz.read_bytes()
        except OSError as exc:
            raise StoreError(f"personal head file {npz.name} is unreadable: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != doc.get("sha256"):
            raise StoreError(f"personal head file {npz.name} does not match its record (damaged)")
        try:
            head = Head.from_npz(data, spec.layers, StoreError, what=f"personal head {npz.name}")
            return PersonalHead(spec.sha256, str(doc["backbone"]), head, _finite(doc, "global_accuracy", 0, 1),
                                _finite(doc, "personal_accuracy", 0, 1), _count(doc, "holdout"),
                                str(doc.get("run", ""))[:128], _finite(doc, "created"))
        except EdgefleetError as exc:
            raise StoreError(f"personal head {npz.name} is unusable: {exc}") from None

    def for_manifest(self, manifest: Manifest) -> PersonalHead | None:
        """The usable personal head of ``manifest``'s version, or ``None`` (a damaged one is logged and ignored)."""
        if manifest.head is None or not (self.dir / f"{manifest.head.sha256}.json").exists():
            return None
        try:
            return self.load(manifest)
        except StoreError as exc:
            log.warning("serving the global head of %s v%s: %s", manifest.name, manifest.version, exc)
            return None


__all__ = ["PersonalHead", "PersonalHeads", "PERSONAL_DIR", "KEEP"]
