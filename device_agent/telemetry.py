"""Telemetry: a durable on-disk queue first, a sink when connected.

Records go into SQLite (WAL) before anyone tries to send them, so a device
works offline for weeks and loses nothing across restarts. The queue is
bounded: beyond ``max_events`` the oldest records are dropped and the drop is
counted (and reported in the next metrics record). :func:`drain` hands records
to a :class:`TelemetrySink` in order and deletes only those the sink
acknowledged.

Per-prediction data is aggregated in memory (:class:`Telemetry`) and flushed as
one ``metrics`` record per interval: predictions and errors per version, a
latency histogram, resource use. Install events and drift events are queued
immediately. Drift follows the manifest's reference statistics with
:class:`edgefleet.stats.RunningStats`; a PSI over the threshold queues a
``drift`` event (once per crossing).

``synchronous=NORMAL`` with WAL: a committed record survives a process crash;
a power cut may lose the last few milliseconds of records.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from edgefleet.atomic import write_atomic

from ._sqlite import immediate
from .health import LatencyHistogram

log = logging.getLogger("edgefleet.device_agent.telemetry")


@dataclass(frozen=True)
class Record:
    seq: int
    ts: float
    kind: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "data": self.data}


class TelemetrySink(Protocol):
    """Where drained records go (the MQTT sink lives in cloud_sync).

    ``send`` returns the ``seq`` of every record it durably accepted; only those
    are deleted from the queue. Raising leaves everything queued.
    """

    def send(self, records: Sequence[Record]) -> Iterable[int]: ...


class MemorySink:
    """A sink that keeps what it receives (tests, embedding apps)."""

    def __init__(self, accept: Callable[[Record], bool] | None = None) -> None:
        self.records: list[Record] = []
        self.accept = accept

    def send(self, records: Sequence[Record]) -> Iterable[int]:
        took = [r for r in records if self.accept is None or self.accept(r)]
        self.records.extend(took)
        return [r.seq for r in took]


class TelemetryQueue:
    """A bounded, durable FIFO of telemetry records in SQLite (WAL).

    Telemetry never stops the agent. A queue file that SQLite finds corrupt (not a
    database, malformed pages) is moved aside as ``telemetry.db.corrupt-<time>``, the
    loss counted in ``telemetry.lost.json`` (``stats()``: ``lost_queues``,
    ``quarantined``) and a new queue started; only the owner of the state directory
    (``repair=True``) does that, others fall back to an in-memory queue. When the disk
    is full or failing, records that cannot be written are dropped and counted
    (``write_errors``) and a queue that cannot even be opened is kept in memory
    (``degraded``): predictions, status and everything else go on.
    """

    def __init__(self, path: str | os.PathLike, max_events: int = 100_000, *, repair: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_events = int(max_events)
        self.repair = repair
        self._lock = threading.Lock()
        self.write_errors = 0
        self.degraded = ""
        self._lost_path = self.path.with_name(self.path.name.replace(".db", "") + ".lost.json")
        self._count = 0
        try:
            self._connect(str(self.path))
        except sqlite3.Error as exc:
            self._recover(exc)

    def _connect(self, target: str) -> None:
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            if target != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
                " kind TEXT NOT NULL, data TEXT NOT NULL)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._count = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except BaseException:
            self._db.close()
            raise

    def _recover(self, exc: BaseException) -> None:
        """After an error from SQLite: a corrupt file is moved aside (owner only), anything else degrades to memory."""
        try:
            self._db.close()
        except Exception:
            pass
        if _is_corrupt(exc) and self.repair:
            aside = self._quarantine(exc)
            try:
                self._connect(str(self.path))
                log.warning("telemetry queue %s was corrupt (%s): moved aside to %s, a new queue started",
                            self.path, exc, aside)
                return
            except sqlite3.Error as again:
                exc = again
        self.degraded = f"{'corrupt' if _is_corrupt(exc) else 'unwritable'}: {exc}"
        log.warning("telemetry queue %s cannot be used (%s): telemetry is kept in memory only", self.path, exc)
        self._connect(":memory:")

    def _quarantine(self, exc: BaseException) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        size = 0
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            try:
                size += p.stat().st_size
                os.replace(p, Path(str(aside) + suffix)) if suffix != "-shm" else p.unlink()
            except FileNotFoundError:
                pass
        lost = self._lost()
        lost["lost_queues"] = int(lost.get("lost_queues", 0)) + 1
        lost["lost_bytes"] = int(lost.get("lost_bytes", 0)) + size
        lost["quarantined"] = (list(lost.get("quarantined", [])) + [f"{aside.name}: {exc}"])[-10:]
        for old in sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*"))[:-3]:  # keep the newest three
            old.unlink(missing_ok=True)
        self._lost_cache = lost
        try:
            write_atomic(self._lost_path, json.dumps(lost, sort_keys=True).encode())
        except OSError:
            pass  # (a full disk) the count stays in memory for this process
        return aside.name

    def _lost(self) -> dict[str, Any]:
        cached = getattr(self, "_lost_cache", None)
        if cached is not None:
            return dict(cached)
        try:
            d = json.loads(self._lost_path.read_text("utf-8"))
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _run(self, op: Callable[[], Any], default: Any, records: int = 0) -> Any:
        """Run ``op`` (holding the lock); on a SQLite error repair or degrade, retry once, else ``default``."""
        try:
            return op()
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                self._recover(exc)
                try:
                    return op()
                except sqlite3.Error:
                    pass
            self.write_errors += records
            return default

    def put(self, kind: str, data: Mapping[str, Any], ts: float | None = None) -> int:
        seqs = self.put_many([(kind, data, ts)])
        return seqs[-1] if seqs else 0

    def put_many(self, items: Sequence[tuple[str, Mapping[str, Any], float | None]]) -> list[int]:
        """Append records in one transaction; drop the oldest beyond the bound (counted).

        Records that cannot be written (full disk, I/O error) are dropped, counted in ``write_errors``."""
        if not items:
            return []
        rows = [(time.time() if ts is None else ts, kind, json.dumps(dict(data), default=_jsonable)) for kind, data, ts in items]
        with self._lock:
            return self._run(lambda: self._put_rows(rows), [], len(rows))  # type: ignore[no-any-return]

    def _put_rows(self, rows: list[tuple[float, str, str]]) -> list[int]:
        with immediate(self._db) as cur:
            seqs = []
            for row in rows:
                cur.execute("INSERT INTO events (ts, kind, data) VALUES (?, ?, ?)", row)
                seqs.append(int(cur.lastrowid or 0))
            over = self._count + len(rows) - self.max_events
            if over > 0:
                cur.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (over,))
                dropped = cur.rowcount
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (dropped,),
                )
            else:
                dropped = 0
        self._count += len(rows) - dropped
        return seqs

    def peek(self, limit: int = 500, after: int = 0) -> list[Record]:
        with self._lock:
            rows = self._run(lambda: self._db.execute(
                "SELECT seq, ts, kind, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall(), [])
        out = []
        for s, t, k, d in rows:
            try:
                out.append(Record(int(s), float(t), str(k), json.loads(d)))
            except (TypeError, ValueError):
                continue
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        ids = [(int(s),) for s in seqs]
        if not ids:
            return 0

        def op() -> int:
            with immediate(self._db) as cur:
                cur.executemany("DELETE FROM events WHERE seq = ?", ids)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            return len(ids)

        with self._lock:
            return self._run(op, 0)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self._count

    def save_state(self, key: str, value: Mapping[str, Any]) -> None:
        """Keep a small JSON document (e.g. drift statistics) across restarts."""
        text = json.dumps(dict(value), default=_jsonable)
        with self._lock:
            self._run(lambda: self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, text)),
                      None)

    def load_state(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._run(lambda: self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone(), None)
        try:
            return json.loads(row[0]) if row else None
        except (TypeError, ValueError):
            return None

    @property
    def dropped(self) -> int:
        with self._lock:
            row = self._run(lambda: self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone(), None)
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        lost = self._lost()
        out = {"queued": len(self), "dropped": self.dropped, "max_events": self.max_events,
               "lost_queues": int(lost.get("lost_queues", 0)), "lost_bytes": int(lost.get("lost_bytes", 0)),
               "quarantined": list(lost.get("quarantined", [])), "write_errors": self.write_errors}
        if self.degraded:
            out["degraded"] = self.degraded
        return out

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass


def _is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB (the file is damaged), as opposed to full, busy or I/O errors."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg


def drain(queue: TelemetryQueue, sink: TelemetrySink, batch: int = 500, max_batches: int | None = None) -> int:
    """Send queued records to ``sink`` oldest first; delete what it acknowledged. Returns that count.

    Stops at the first batch the sink acknowledged nothing of (offline, or refusing).
    """
    total = 0
    after = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        records = queue.peek(batch, after)
        if not records:
            break
        batches += 1
        sent = {r.seq for r in records}
        acked = [s for s in sink.send(records) if s in sent]
        if not acked:
            break
        total += queue.ack(acked)
        after = records[-1].seq
    return total


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def resource_usage() -> dict[str, Any]:
    """This process's resident memory, peak memory and CPU seconds."""
    rss = 0
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"rss_bytes": rss, "peak_rss_bytes": ru.ru_maxrss * 1024, "cpu_seconds": ru.ru_utime + ru.ru_stime}


class _VersionCounters:
    __slots__ = ("predictions", "errors", "invalid_inputs", "hist")

    def __init__(self) -> None:
        self.predictions = 0
        self.errors = 0
        self.invalid_inputs = 0
        self.hist = LatencyHistogram()


class DriftMonitor:
    """Live inputs against a manifest's reference statistics, judged per tumbling window.

    Each window of ``window`` inputs is scored on its own (so a shift shows up
    within one window, however long the history) and then folded into the
    running totals kept for reporting.
    """

    def __init__(self, reference: Mapping[str, Any], threshold: float, window: int) -> None:
        from edgefleet.stats import RunningStats

        self._reference = reference
        self._new = RunningStats
        self.total = RunningStats(reference)
        self.current = RunningStats(reference)
        self.shape = self.total.shape
        self.threshold = threshold
        self.window = window
        self.alerting = False
        self.last: dict[str, Any] | None = None

    def update(self, x: Any) -> dict[str, Any] | None:
        """Add inputs; return a drift event payload when a window's PSI first crosses the threshold."""
        arr = np.asarray(x)
        if arr.shape == self.shape:
            arr = arr[np.newaxis]
        try:
            self.current.update(arr)
        except Exception:  # inputs not shaped like the reference: no drift scoring for them
            return None
        if self.current.count < self.window:
            return None
        d = self.current.drift()
        self.total.merge(self.current)
        self.current = self._new(self._reference)
        self.last = {"psi_max": d["psi_max"], "psi_mean": d["psi_mean"], "count": d["count"]}
        over = d["psi_max"] > self.threshold
        if over and not self.alerting:
            self.alerting = True
            scores = d["psi_per_feature"]
            worst = int(np.argmax(scores)) if scores else -1
            return {**self.last, "worst_feature": worst, "threshold": self.threshold,
                    "mean_shift_z": d["mean_shift_z"][worst] if worst >= 0 else 0.0}
        if not over:
            self.alerting = False
        return None

    def to_dict(self) -> dict[str, Any]:
        total, current = self.total.to_dict(), self.current.to_dict()
        total.pop("reference", None)
        current.pop("reference", None)
        return {"total": total, "current": current, "alerting": self.alerting, "last": self.last}

    def restore(self, data: Mapping[str, Any]) -> None:
        """Continue from :meth:`to_dict` output (silently starts afresh if it does not fit)."""
        try:
            total = self._new.from_dict(data["total"], reference=self._reference)
            current = self._new.from_dict(data["current"], reference=self._reference)
        except Exception:
            return
        self.total, self.current = total, current
        self.alerting, self.last = bool(data.get("alerting")), data.get("last")

    def summary(self) -> dict[str, Any]:
        d = self.total.drift()
        return {"psi_max": d["psi_max"], "psi_mean": d["psi_mean"], "count": d["count"],
                "last_window": self.last, "alerting": self.alerting}


class Telemetry:
    """Aggregates predictions in memory, flushes them to the durable queue, queues events now."""

    def __init__(self, queue: TelemetryQueue, device_id: str = "") -> None:
        self.queue = queue
        self.device_id = device_id
        self._lock = threading.Lock()
        self._window: dict[str, _VersionCounters] = {}
        self._window_start = time.time()
        self._drift: DriftMonitor | None = None
        self._drift_version = ""
        self._drift_key = ""
        self.hooks: list[Callable[[str, dict[str, Any]], None]] = []
        self._pending_drift: list[dict[str, Any]] = []

    def set_drift(self, monitor: DriftMonitor | None, version: str, key: str = "") -> None:
        """Follow drift for ``version``; with a ``key`` its statistics persist across restarts."""
        if monitor is not None and key:
            saved = self.queue.load_state(f"drift:{key}")
            if saved:
                monitor.restore(saved)
        with self._lock:
            self._save_drift()
            self._drift, self._drift_version, self._drift_key = monitor, version, key

    def _save_drift(self) -> None:
        drift, key = self._drift, self._drift_key
        if drift is not None and key:
            self.queue.save_state(f"drift:{key}", drift.to_dict())

    def record_prediction(self, version: str, latency_ms: float, outcome: str, x: Any = None) -> None:
        """``outcome`` is "ok", "error" (the model failed) or "invalid" (the caller's input was bad)."""
        with self._lock:
            c = self._window.get(version)
            if c is None:
                c = self._window[version] = _VersionCounters()
            c.predictions += 1
            if outcome == "ok":
                c.hist.add(latency_ms)
            elif outcome == "invalid":
                c.invalid_inputs += 1
            else:
                c.errors += 1
            drift = self._drift if outcome == "ok" and x is not None and version == self._drift_version else None
            if drift is not None:
                event = drift.update(x)
                if event is not None:
                    event["version"] = version
                    self._pending_drift.append(event)
        if self._pending_drift:
            with self._lock:
                pending, self._pending_drift = self._pending_drift, []
            for ev in pending:
                self.event("drift", ev)

    def event(self, kind: str, data: Mapping[str, Any]) -> int:
        payload = dict(data)
        if self.device_id:
            payload.setdefault("device_id", self.device_id)
        seq = self.queue.put(kind, payload)
        for hook in list(self.hooks):
            try:
                hook(kind, payload)
            except Exception:  # a hook must never break the agent
                pass
        return seq

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            per = {
                v: {"predictions": c.predictions, "errors": c.errors, "invalid_inputs": c.invalid_inputs,
                    "latency": c.hist.to_dict()}
                for v, c in self._window.items()
            }
            drift = self._drift.summary() if self._drift is not None else None
        return {"window_start": self._window_start, "versions": per, "drift": drift}

    def flush(self, extra: Mapping[str, Any] | None = None) -> int | None:
        """Queue the aggregated window as one ``metrics`` record (if anything happened) and reset it."""
        with self._lock:
            window, self._window = self._window, {}
            start, self._window_start = self._window_start, time.time()
            drift = self._drift.summary() if self._drift is not None else None
            self._save_drift()
        if not window and not extra:
            return None
        data: dict[str, Any] = {
            "window_start": start,
            "window_end": time.time(),
            "versions": {
                v: {"predictions": c.predictions, "errors": c.errors, "invalid_inputs": c.invalid_inputs,
                    "latency": c.hist.to_dict()}
                for v, c in window.items()
            },
            "resources": resource_usage(),
            "queue_dropped_total": self.queue.dropped,
        }
        if drift is not None:
            data["drift"] = {**drift, "version": self._drift_version}
        data.update(extra or {})
        return self.event("metrics", data)
