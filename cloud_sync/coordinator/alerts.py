"""Alerts: a webhook (HTTP POST of JSON) on a rollout halt, a drift alert, a device offline longer than a threshold
and a federated run failure (``cloud serve --alert-webhook URL --offline-after 10m``).

Three parts, kept apart:

- :func:`decide` is pure: from what the registry holds now (:class:`Snapshot`) and what was already seen
  (:class:`WatchState`), which events become alerts. No clock, no I/O.
- :class:`AlertMonitor` reads the registry on its own thread every ``interval`` seconds and hands new alerts to
  the sender; it never touches telemetry ingest or the rollout tick (they only write the rows it reads later).
  Each alert is claimed once in the registry (``Registry.mark_alert``) before it is sent, so coordinators sharing
  a registry send it once.
- :class:`WebhookSender` posts each alert to every URL from a bounded queue on its own thread: ``submit`` never
  blocks (a full queue drops the alert and counts it), a failed attempt (no connection, timeout, 429 or 5xx) is
  retried with exponential backoff (:func:`backoff`), other 4xx answers are final. An https webhook's
  certificate is verified against the default CAs, or the private CA of ``--alert-ca-cert``
  (:func:`webhook_verify`); one that does not verify is a failed attempt like no connection (logged, retried,
  then given up).

What the webhook receives (``Content-Type: application/json``)::

    {"id": "halt:42", "kind": "rollout_halted", "fleet": "plant1", "ts": 1718000000.0,
     "summary": "deployment d1a2b3 (digits 2, group line-1) halted: 1 of 1 dispatched jobs failed (100% > 0%)",
     "details": {"deployment": "d1a2b3", "reason": "...", ...}, "source": "edgefleet"}

``kind`` is one of :data:`KINDS`; ``id`` is the same for every delivery of one alert (a receiver may dedupe on it).
History before the monitor starts is not alerted (rollout events and drift alerts from then on; devices offline
and runs failed that the registry has not marked as sent).
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from edgefleet.errors import ConfigError

from .rows import Alert, Deployment, Device, FailedRun, RolloutEvent

log = logging.getLogger(__name__)

KINDS = ("rollout_halted", "drift", "device_offline", "federated_run_failed")
MAX_QUEUE = 1000  # alerts waiting for the sender; beyond it new ones are dropped (and counted)
ATTEMPTS = 6  # deliveries of one alert to one URL before it is given up
BACKOFF_BASE = 0.5  # seconds before the first retry; doubled each time
BACKOFF_CAP = 30.0
TIMEOUT = 5.0  # seconds per attempt
MAX_OFFLINE_TRACKED = 100_000  # devices remembered as alerted offline


# -- the pure part --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlertEvent:
    """One alert: ``key`` names it (the same alert has the same key on every coordinator), ``kind`` one of
    :data:`KINDS`, a one-line ``summary`` and the ``details`` a receiver can act on."""

    key: str
    kind: str
    fleet: str
    ts: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.key, "kind": self.kind, "fleet": self.fleet, "ts": self.ts, "summary": self.summary,
                "details": self.details, "source": "edgefleet"}


@dataclass(frozen=True)
class Snapshot:
    """What the registry holds now: rollout halts and drift alerts after the cursors, the devices, runs that failed
    since the last look, and the deployments the halts belong to."""

    now: float
    halts: Sequence[RolloutEvent] = ()
    drift: Sequence[Alert] = ()
    devices: Sequence[Device] = ()
    failed_runs: Sequence[FailedRun] = ()
    deployments: dict[str, Deployment] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchState:
    """What was seen: the newest rollout event and device alert ids, since when failed runs are looked for, and the
    devices already alerted offline (device -> the ``last_seen`` the alert was about)."""

    last_event: int = 0
    last_alert: int = 0
    runs_since: float = 0.0
    offline: dict[str, float] = field(default_factory=dict)


def decide(state: WatchState, snap: Snapshot, fleet: str, offline_after: float | None
           ) -> tuple[WatchState, list[AlertEvent]]:
    """The alerts of ``snap`` not raised before, and the state after them.

    - every ``halted`` rollout event after ``state.last_event``;
    - every drift alert after ``state.last_alert``;
    - each device offline for more than ``offline_after`` seconds (None: never), once per disconnection: a device
      that comes back and goes again is alerted again; one that never connected (session 0) is not;
    - each federated run that failed (its key is its id: once, whenever it is seen)."""
    out: list[AlertEvent] = []
    last_event = state.last_event
    for e in snap.halts:
        last_event = max(last_event, e.id)
        if e.kind != "halted":
            continue
        dep = snap.deployments.get(e.deployment_id)
        what = f"{dep.name} {dep.version}, group {dep.group or '(devices)'}" if dep is not None else "?"
        out.append(AlertEvent(
            f"halt:{e.id}", "rollout_halted", fleet, e.ts,
            f"deployment {e.deployment_id} ({what}) halted: {e.detail}"[:500],
            {"deployment": e.deployment_id, "reason": e.detail, "stage": e.stage,
             **({"model": dep.name, "version": dep.version, "group": dep.group} if dep is not None else {})}))
    last_alert = state.last_alert
    for a in snap.drift:
        last_alert = max(last_alert, a.id)
        if a.kind != "drift":
            continue
        psi = a.data.get("psi_max")
        score = f" (PSI {psi:.3g})" if isinstance(psi, (int, float)) and not isinstance(psi, bool) else ""
        out.append(AlertEvent(
            f"drift:{a.id}", "drift", fleet, a.ts, f"drift on device {a.device_id}, version {a.version}{score}"[:500],
            {"device": a.device_id, "version": a.version, "data": a.data}))
    offline = dict(state.offline)
    if offline_after is not None:
        present = set()
        for d in snap.devices:
            present.add(d.device_id)
            if d.online or d.session == 0:
                offline.pop(d.device_id, None)
                continue
            away = snap.now - d.last_seen
            if away <= offline_after or offline.get(d.device_id) == d.last_seen:
                continue
            offline[d.device_id] = d.last_seen
            out.append(AlertEvent(
                f"offline:{d.device_id}:{d.last_seen:.3f}", "device_offline", fleet, snap.now,
                f"device {d.device_id} (group {d.group}) offline for {_span(away)} (threshold {_span(offline_after)})",
                {"device": d.device_id, "group": d.group, "last_seen": d.last_seen, "offline_seconds": away,
                 "threshold_seconds": offline_after, "version": d.active_version}))
        for gone in set(offline) - present:  # decommissioned: forgotten
            del offline[gone]
        while len(offline) > MAX_OFFLINE_TRACKED:
            del offline[next(iter(offline))]
    runs_since = state.runs_since
    for r in snap.failed_runs:
        runs_since = max(runs_since, r.updated)
        why = r.error or r.status.partition(":")[2].strip()
        out.append(AlertEvent(
            f"fedrun:{r.id}", "federated_run_failed", fleet, r.updated,
            f"federated run {r.id} (group {r.group}) failed{': ' + why if why else ''}"[:500],
            {"run": r.id, "group": r.group, "status": r.status, "error": why}))
    return WatchState(last_event, last_alert, runs_since, offline), out


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): ``base`` doubled each time, at most ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def retryable(status: int | None) -> bool:
    """Whether a delivery that got ``status`` (None: no answer) is tried again: no answer, 408, 429 and 5xx."""
    return status is None or status in (408, 429) or status >= 500


def check_webhooks(urls: Iterable[str]) -> list[str]:
    """The webhook URLs, each http(s)://HOST...; a ConfigError naming a bad one."""
    from urllib.parse import urlsplit

    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--alert-webhook {url!r}: give an http(s)://HOST[:PORT]/PATH URL")
        out.append(url)
    return out


CA_ENV = "EDGEFLEET_ALERT_CA_CERT"


def webhook_verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    """What an https webhook's certificate is verified with (httpx's ``verify``): the CA certificate(s) of
    ``--alert-ca-cert`` / ``EDGEFLEET_ALERT_CA_CERT`` (a PEM file: a private CA), else True (httpx's default CAs, as
    before). Always verifying (chain and host name). A file that is missing, unreadable or holds no PEM certificate
    is a ConfigError naming the option."""
    if not ca_cert:
        return True
    what = f"--alert-ca-cert {ca_cert} (or {CA_ENV})"
    try:
        with open(ca_cert, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"{what}: not a PEM CA certificate (no '-----BEGIN CERTIFICATE-----' in it)")
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{what}: not a PEM CA certificate ({reason})") from None


def _span(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f}{unit}"
    return f"{seconds:.0f}s"


# -- the sender -----------------------------------------------------------------------------------------------------
class WebhookSender:
    """Posts alerts to ``urls`` from a bounded queue on its own thread (see the module). ``counters`` (shared with
    the coordinator's, for ``/v1/telemetry``) counts ``alerts_sent``, ``alerts_retried``, ``alerts_failed`` and
    ``alerts_dropped`` (queue full)."""

    def __init__(self, urls: Sequence[str], *, queue_size: int = MAX_QUEUE, attempts: int = ATTEMPTS,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP, timeout: float = TIMEOUT,
                 ca_cert: str | None = None, counters: Counter[str] | None = None) -> None:
        self.urls = check_webhooks(urls)
        self.attempts = max(1, attempts)
        self.backoff_base, self.backoff_cap, self.timeout = backoff_base, backoff_cap, timeout
        self._verify: Any = webhook_verify(ca_cert)  # a bad CA file: a ConfigError now
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self._q: queue.Queue[AlertEvent | None] = queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: list[tuple[str, str, int]] = []  # (alert key, url, attempts it took): the latest 100

    def start(self) -> WebhookSender:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgefleet-alerts-sender", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self._q.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, alert: AlertEvent) -> bool:
        """Queue ``alert`` for every URL without waiting; False (and counted) when the queue is full."""
        try:
            self._q.put_nowait(alert)
        except queue.Full:
            self.counters["alerts_dropped"] += 1
            log.error("alert %s dropped: %d alerts are waiting for the webhook already", alert.key, self._q.qsize())
            return False
        return True

    def pending(self) -> int:
        return self._q.qsize()

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout, verify=self._verify,
                          headers={"User-Agent": "edgefleet-alerts", "Content-Type": "application/json"}) as http:
            while not self._stop.is_set():
                alert = self._q.get()
                if alert is None:
                    break
                body = json.dumps(alert.to_json(), allow_nan=False, default=str).encode()
                for url in self.urls:
                    self._deliver(http, url, alert, body)

    def _deliver(self, http: Any, url: str, alert: AlertEvent, body: bytes) -> bool:
        import httpx

        for attempt in range(1, self.attempts + 1):
            status: int | None = None
            try:
                status = http.post(url, content=body).status_code
                why = f"HTTP {status}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            if status is not None and 200 <= status < 300:
                self.counters["alerts_sent"] += 1
                self.delivered = (self.delivered + [(alert.key, url, attempt)])[-100:]
                log.info("alert %s (%s) sent to %s%s", alert.key, alert.kind, url,
                         f" after {attempt} attempts" if attempt > 1 else "",
                         extra={"event": "alert_sent", "alert": alert.key, "kind": alert.kind})
                return True
            if not retryable(status) or attempt == self.attempts:
                break
            self.counters["alerts_retried"] += 1
            delay = backoff(attempt, self.backoff_base, self.backoff_cap)
            log.warning("alert %s to %s: %s; retrying in %gs", alert.key, url, why, delay)
            if self._stop.wait(delay):
                return False
        self.counters["alerts_failed"] += 1
        log.error("alert %s (%s) not delivered to %s: %s", alert.key, alert.kind, url, why,
                  extra={"event": "alert_failed", "alert": alert.key, "kind": alert.kind})
        return False


# -- the monitor ----------------------------------------------------------------------------------------------------
class AlertMonitor:
    """Every ``interval`` seconds: read the registry (:meth:`snapshot`), :func:`decide`, claim each new alert in the
    registry and :meth:`WebhookSender.submit` it. ``offline_after`` seconds (None: no offline alerts)."""

    def __init__(self, registry: Any, fleet: str, sender: WebhookSender | Callable[[AlertEvent], Any], *,
                 offline_after: float | None = None, interval: float = 2.0, clock: Callable[[], float] = time.time,
                 keep_marks: float = 30 * 86400.0) -> None:
        self.registry = registry
        self.fleet = fleet
        self.submit = sender.submit if isinstance(sender, WebhookSender) else sender
        self.offline_after = offline_after
        self.interval = interval
        self.clock = clock
        self.keep_marks = keep_marks
        last_event, last_alert = registry.alert_cursors(fleet)
        self.state = WatchState(last_event, last_alert, clock())
        self.raised: Counter[str] = Counter()  # alerts raised, by kind
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = 0.0

    def snapshot(self) -> Snapshot:
        reg, st = self.registry, self.state
        halts = reg.rollout_events_since(self.fleet, st.last_event, ("halted",))
        deployments = {d: dep for d in {e.deployment_id for e in halts} if (dep := reg.deployment(d)) is not None}
        return Snapshot(
            now=self.clock(), halts=halts, drift=reg.alerts_since(self.fleet, st.last_alert),
            devices=reg.devices(self.fleet) if self.offline_after is not None else (),
            failed_runs=reg.failed_runs_since(self.fleet, st.runs_since - 1.0), deployments=deployments)

    def sweep(self) -> list[AlertEvent]:
        """One look: the alerts raised (claimed in the registry and handed to the sender)."""
        snap = self.snapshot()
        self.state, alerts = decide(self.state, snap, self.fleet, self.offline_after)
        raised = []
        for a in alerts:
            if not self.registry.mark_alert(self.fleet, a.key, snap.now):
                continue  # raised already (by another coordinator, or before a restart)
            self.raised[a.kind] += 1
            log.warning("alert: %s", a.summary, extra={"event": "alert", "alert": a.key, "kind": a.kind})
            self.submit(a)
            raised.append(a)
        if snap.now - self._pruned > 3600:
            self._pruned = snap.now
            self.registry.prune_alert_marks(snap.now - self.keep_marks)
        return raised

    def start(self) -> AlertMonitor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgefleet-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # the registry may be away for a moment: the next sweep tries again
                log.exception("alert sweep failed")


def start_alerts(coord: Any, urls: Sequence[str], offline_after: float | None, *, interval: float = 2.0,
                 ca_cert: str | None = None) -> tuple[AlertMonitor, WebhookSender] | None:
    """``cloud serve --alert-webhook URL... --offline-after D [--alert-ca-cert PEM]``: a sender and a monitor for
    ``coord``'s fleet, started (None without URLs)."""
    if not urls:
        return None
    sender = WebhookSender(urls, ca_cert=ca_cert, counters=coord.counters).start()
    monitor = AlertMonitor(coord.registry, coord.fleet, sender, offline_after=offline_after, interval=interval)
    return monitor.start(), sender


__all__ = ["AlertEvent", "AlertMonitor", "KINDS", "Snapshot", "WatchState", "WebhookSender", "backoff",
           "check_webhooks", "decide", "retryable", "start_alerts", "webhook_verify", "CA_ENV"]
