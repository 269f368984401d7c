"""Telemetry: a durable on-disk queue first, a sink when connected.

Records go into SQLite (WAL) before anyone tries to send them, so a device
works offline for weeks and loses nothing across restarts. The queue is
bounded: beyond ``max_events`` the oldest records are dropped and the drop is
counted (and reported in the next metrics record). :func:`drain` hands records
to a :class:`TelemetrySink` in order and deletes only those the sink
acknowledged.

Per-prediction data is aggregated in memory (:class:`Telemetry`) and flushed as
one ``metrics`` record per interval: predictions and errors per version, a
latency histogram, resource use. Quality is flushed beside it as one ``quality``
record per version that had news (:class:`QualityTotals`: mean confidence and
entropy of a sample of its predictions, its accuracy on feedback labels, and its
comparison with the version it replaced while on probation or in shadow); the
totals are kept per version across restarts. Install events and drift events
are queued immediately. Drift follows the manifest's reference statistics with
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


SCORE_INTERVAL = 0.01  # seconds: at most one prediction in this long is scored for quality (about 45 us each)
MAX_QUALITY_VERSIONS = 8  # versions whose quality totals are kept in memory (the most recently used)


class QualityTotals:
    """One version's quality on this device, cumulative: the mean top-1 confidence and entropy of the predictions
    scored (a time-spaced sample of them), its accuracy on feedback labels, and ``comparison``: its latest comparison
    with the version it replaced (``probation.QualityProbe.report``: agreement, shifts, PSI, the verdict)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.scored = 0
        self.conf = 0.0
        self.ent = 0.0
        self.labelled = 0
        self.correct = 0
        self.comparison: dict[str, Any] = {}
        self.head = ""  # which head the version serves here: global, personal ("" unknown or none)
        self.dirty = False

    def score(self, p: np.ndarray) -> None:
        from .quality import entropy

        self.scored += p.shape[0]
        self.conf += float(p.max(axis=1).sum())
        self.ent += float(entropy(p).sum())
        self.dirty = True

    def to_record(self) -> dict[str, Any]:
        """The ``quality`` record (``cloud_sync.wire.protocol.QualityRecord`` on the wire)."""
        out: dict[str, Any] = {
            "version": self.version, "scored": self.scored,
            "confidence": round(self.conf / self.scored, 6) if self.scored else 0.0,
            "entropy": round(self.ent / self.scored, 6) if self.scored else 0.0,
            "labelled": self.labelled, "correct": self.correct,
            "accuracy": round(self.correct / self.labelled, 6) if self.labelled else 0.0,
        }
        if self.head:
            out["head"] = self.head
        c = self.comparison
        if c:
            out.update({"reference": c.get("reference", ""), "compared": c.get("compared", 0),
                        "agreement": c.get("agreement", 0.0), "confidence_shift": c.get("confidence_shift", 0.0),
                        "entropy_shift": c.get("entropy_shift", 0.0), "psi": c.get("psi", 0.0),
                        "verdict": c.get("verdict", ""), "signal": c.get("signal", "")})
        return out

    def to_state(self) -> dict[str, Any]:
        return {"scored": self.scored, "conf": self.conf, "ent": self.ent, "labelled": self.labelled,
                "correct": self.correct, "comparison": self.comparison, "head": self.head}

    def restore(self, d: Mapping[str, Any]) -> None:
        try:
            scored, conf, ent = int(d["scored"]), float(d["conf"]), float(d["ent"])
            labelled, correct = int(d["labelled"]), int(d["correct"])
            comparison = d.get("comparison") or {}
        except (KeyError, TypeError, ValueError):
            return  # starts afresh
        if min(scored, labelled, correct) < 0 or correct > labelled or not isinstance(comparison, dict):
            return
        self.scored, self.conf, self.ent, self.labelled, self.correct = scored, conf, ent, labelled, correct
        self.comparison = comparison
        head = d.get("head", "")
        self.head = head if head in ("", "global", "personal") else ""


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
        self._quality: dict[str, QualityTotals] = {}  # most recently used last
        self._scored_at = 0.0

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

    def record_prediction(self, version: str, latency_ms: float, outcome: str, x: Any = None, out: Any = None
                          ) -> None:
        """``outcome`` is "ok", "error" (the model failed) or "invalid" (the caller's input was bad); ``out``, the
        output of a successful one, is scored for quality now and then (:data:`SCORE_INTERVAL`)."""
        if out is not None and outcome == "ok":
            now = time.monotonic()
            if now - self._scored_at >= SCORE_INTERVAL:
                self._scored_at = now
                self._score(version, out)
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

    def _totals(self, version: str) -> QualityTotals:
        """The quality totals of ``version`` (restored from the queue's state the first time); call holding the
        lock."""
        t = self._quality.pop(version, None)
        if t is None:
            t = QualityTotals(version)
            saved = self.queue.load_state(f"quality:{version}")
            if saved:
                t.restore(saved)
        self._quality[version] = t
        while len(self._quality) > MAX_QUALITY_VERSIONS:
            old = self._quality.pop(next(iter(self._quality)))
            if old.dirty:
                self.queue.save_state(f"quality:{old.version}", old.to_state())
        return t

    def _score(self, version: str, out: Any) -> None:
        from .quality import class_scores

        p = class_scores(out)
        if p is None:
            return
        with self._lock:
            self._totals(version).score(p)

    def record_label(self, version: str, out: Any, labels: Any) -> int | None:
        """A feedback label against ``version``'s output on its input: counted in its labelled accuracy. Returns
        how many of the rows were right (None: the output or the labels are not a classifier's)."""
        from .quality import class_scores, labels_of

        p = class_scores(out)
        if p is None:
            return None
        y = labels_of(labels, p.shape[0], p.shape[1])
        if y is None:
            return None
        right = int((np.argmax(p, axis=1) == y).sum())
        with self._lock:
            t = self._totals(version)
            t.labelled += p.shape[0]
            t.correct += right
            t.dirty = True
        return right

    def set_head(self, version: str, head: str | None) -> None:
        """Which head ``version`` serves on this device (``global``, ``personal`` or None): its quality records say
        so from the next one on (a change alone sends no record)."""
        with self._lock:
            self._totals(version).head = head or ""

    def record_comparison(self, version: str, report: Mapping[str, Any]) -> None:
        """The latest comparison of ``version`` with the version it replaced (a probe's report)."""
        with self._lock:
            t = self._totals(version)
            t.comparison = dict(report)
            t.dirty = True

    def quality(self) -> dict[str, dict[str, Any]]:
        """Each version's quality record as it stands (``agent status``)."""
        with self._lock:
            return {v: t.to_record() for v, t in self._quality.items()}

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
            quality = [t for t in self._quality.values() if t.dirty]
            for t in quality:
                t.dirty = False
                self.queue.save_state(f"quality:{t.version}", t.to_state())
            records = [t.to_record() for t in quality]
        for rec in records:
            self.event("quality", {"window_start": start, **rec})
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
