"""All broker I/O behind one small interface.

``Transport`` is what the device client and the coordinator use. ``MemoryBroker``
+ ``MemoryTransport`` implement it in-process (retained messages, wildcards,
shared subscriptions, last wills, persistent sessions that queue while a client
is away) for unit tests; ``MqttTransport`` is paho-mqtt 2.x speaking MQTT 5 with
a persistent session and reconnect with backoff. TLS and credentials are
configuration (:class:`MqttConfig`), never code changes.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

from edgefleet.errors import ConfigError, SyncError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
DisconnectHandler = Callable[[str], None]  # called with the reason ("closed" for our own clean close)
AckHandler = Callable[[str, bytes, Callable[[], None]], None]  # (topic, payload, ack): MqttTransport.on_message_ack


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Transport(Protocol):
    """A connection to a broker. Handlers run on the transport's thread and must be quick."""

    def connect(self) -> None: ...

    def close(self) -> None: ...

    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def on_message(self, handler: Handler) -> None: ...

    def on_connect(self, callback: Callable[[], None]) -> None: ...

    # Optional (both transports here have it; owners look it up with getattr):
    # def on_disconnect(self, callback: DisconnectHandler) -> None: ...


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$``-topics never match wildcards at the root."""
    if filter_.startswith("$share/"):
        filter_ = filter_.split("/", 2)[2]
    f, t = filter_.split("/"), topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t):
            return False
        if part != "+" and part != t[i]:
            return False
    return len(f) == len(t)


# -- in-memory broker ----------------------------------------------------------------------------------
class MemoryBroker:
    """An in-process MQTT-like broker. Delivery is synchronous on the publisher's thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.retained: dict[str, bytes] = {}
        self.sessions: dict[str, _Session] = {}
        self._rr = itertools.count()
        self.published = 0

    def _session(self, client_id: str) -> _Session:
        s = self.sessions.get(client_id)
        if s is None:
            s = self.sessions[client_id] = _Session()
        return s

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        with self._lock:
            self.published += 1
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            deliveries: list[tuple[_Session, str]] = []
            groups: dict[str, list[_Session]] = defaultdict(list)
            for s in self.sessions.values():
                for f in s.filters:
                    if not topic_matches(f, topic):
                        continue
                    if f.startswith("$share/"):
                        groups[f.split("/")[1] + "|" + f.split("/", 2)[2]].append(s)
                    else:
                        deliveries.append((s, topic))
                    break
            for members in groups.values():
                online = [m for m in members if m.transport is not None] or members
                deliveries.append((online[next(self._rr) % len(online)], topic))
        for s, t in deliveries:
            s.deliver(t, payload)

    def kill(self, client_id: str) -> None:
        """Drop a client without a clean disconnect: its will fires."""
        with self._lock:
            s = self.sessions.get(client_id)
            t = s.transport if s else None
        if t is not None:
            t._drop(send_will=True)


class _Session:
    def __init__(self) -> None:
        self.filters: list[str] = []
        self.transport: MemoryTransport | None = None
        self.pending: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def deliver(self, topic: str, payload: bytes) -> None:
        with self.lock:
            t = self.transport
            if t is None:
                self.pending.append((topic, payload))
                return
        t._dispatch(topic, payload)


class MemoryTransport:
    """A client of :class:`MemoryBroker` (persistent session unless ``clean=True``)."""

    def __init__(self, broker: MemoryBroker, client_id: str, will: Will | None = None, clean: bool = False) -> None:
        self.broker = broker
        self.client_id = client_id
        self.will = will
        self.clean = clean
        self._handlers: list[Handler] = []
        self._on_connect: list[Callable[[], None]] = []
        self._on_disconnect: list[DisconnectHandler] = []
        self._connected = False
        self.sent_bytes = 0
        self.received_bytes = 0

    @property
    def connected(self) -> bool:
        return self._connected

    def on_message(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._on_connect.append(callback)

    def on_disconnect(self, callback: DisconnectHandler) -> None:
        self._on_disconnect.append(callback)

    def connect(self) -> None:
        with self.broker._lock:
            s = self.broker._session(self.client_id)
            if self.clean:
                s.filters.clear()
                s.pending.clear()
            with s.lock:
                s.transport = self
                pending, s.pending = s.pending, []
            self._connected = True
        for cb in list(self._on_connect):
            cb()
        for topic, payload in pending:
            self._dispatch(topic, payload)

    def _drop(self, send_will: bool) -> None:
        with self.broker._lock:
            s = self.broker.sessions.get(self.client_id)
            if s is not None and s.transport is self:
                with s.lock:
                    s.transport = None
            was, self._connected = self._connected, False
        if send_will and self.will is not None:
            self.broker.publish(self.will.topic, self.will.payload, self.will.retain)
        if was:
            _call_all(self._on_disconnect, "connection lost" if send_will else "closed")

    def close(self) -> None:
        self._drop(send_will=False)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if not self._connected:
            raise SyncError("not connected")
        self.sent_bytes += len(payload)
        self.broker.publish(topic, bytes(payload), retain)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        with self.broker._lock:
            s = self.broker._session(self.client_id)
            if topic_filter not in s.filters:
                s.filters.append(topic_filter)
            retained = [] if topic_filter.startswith("$share/") else [
                (t, p) for t, p in self.broker.retained.items() if topic_matches(topic_filter, t)]
        for t, p in retained:
            self._dispatch(t, p)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        self.received_bytes += len(payload)
        for h in list(self._handlers):
            try:
                h(topic, payload)
            except Exception:  # a handler must never take the transport down
                log.exception("handler failed on %s", topic)


# -- paho / real MQTT 5 ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MqttConfig:
    """How to reach the broker. ``url`` is ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps our session while we are away
    clean_start: bool = False
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    max_inflight: int = 100

    @property
    def host_port(self) -> tuple[str, int, bool]:
        u = urlparse(self.url)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(f"broker URL {self.url!r} must start with mqtt:// or mqtts://")
        tls = u.scheme in ("mqtts", "ssl")
        return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), tls


class _Ack:
    """A received message's acknowledgement (MqttTransport.on_message_ack): its PUBACK goes out on the ``needed``-th
    call, unless the connection it came on is gone (then the broker sends it again)."""

    __slots__ = ("client", "mid", "qos", "needed", "epoch", "current", "_lock")

    def __init__(self, client: Any, mid: int, qos: int, needed: int, epoch: int, current: Callable[[], int]) -> None:
        self.client, self.mid, self.qos, self.needed, self.epoch, self.current = client, mid, qos, needed, epoch, current
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.needed -= 1
            if self.needed != 0:
                return
        if self.qos > 0 and self.current() == self.epoch:
            self.client.ack(self.mid, self.qos)


class MqttTransport:
    """paho-mqtt 2.x, MQTT 5, persistent session, automatic reconnect with exponential backoff."""

    def __init__(self, config: MqttConfig, will: Will | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if not config.client_id:
            raise ConfigError("an MQTT client id is required for a persistent session")
        self.config = config
        self._mqtt = mqtt
        self._props_cls, self._ptypes = Properties, PacketTypes
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(config.max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(int(max(1, config.reconnect_min)), int(max(1, config.reconnect_max)))
        if config.username is not None:
            self.client.username_pw_set(config.username, config.password)
        host, port, tls = config.host_port
        self._host, self._port = host, port
        if tls or config.ca_file:
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if config.cert_file:
                ctx.load_cert_chain(config.cert_file, config.key_file)
            self.client.tls_set_context(ctx)
        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._handlers: list[Handler] = []
        self._ack_handlers: list[AckHandler] = []
        self._on_connect_cbs: list[Callable[[], None]] = []
        self._on_disconnect_cbs: list[DisconnectHandler] = []
        self._closing = False
        self._subs: dict[str, int] = {}
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._lock = threading.Lock()
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_message = self._handle_message
        self.connects = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self._started = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_message(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def on_message_ack(self, handler: AckHandler) -> None:
        """``handler(topic, payload, ack)``: at least once. The broker gets a message's PUBACK only when ``ack()`` has
        been called (from any thread; by every such handler), so a message received but not yet handled when this
        process died is delivered again when its persistent session resumes. An ``ack()`` after a reconnect sends
        nothing (the broker delivers the message again, and it is handled again: handlers must be idempotent)."""
        self.client.manual_ack_set(True)
        self._ack_handlers.append(handler)

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._on_connect_cbs.append(callback)

    def on_disconnect(self, callback: DisconnectHandler) -> None:
        """``callback(reason)`` runs on the network thread whenever an established connection ends ("closed" when
        :meth:`close` ended it)."""
        self._on_disconnect_cbs.append(callback)

    def connect(self, timeout: float | None = None) -> None:
        """Start the network loop and connect (retrying in the background). With ``timeout`` wait for it."""
        props = self._props_cls(self._ptypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry
        if not self._started:
            self._started = True
            self.client.connect_async(self._host, self._port, keepalive=self.config.keepalive,
                                      clean_start=self.config.clean_start, properties=props)
            self.client.loop_start()
        if timeout is not None and not self._connected.wait(timeout):
            raise SyncError(f"could not connect to the broker at {self.config.url} within {timeout}s")

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _handle_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("broker at %s refused the connection of %s: %s", self.config.url, self.config.client_id,
                        reason, extra={"event": "broker_refused", "broker": self.config.url,
                                       "client_id": self.config.client_id, "reason": str(reason)})
            return
        self.connects += 1
        log.debug("connected to the broker at %s as %s (session present: %s)", self.config.url,
                  self.config.client_id, bool(getattr(flags, "session_present", False)),
                  extra={"event": "broker_connected", "broker": self.config.url, "client_id": self.config.client_id})
        with self._lock:
            subs = dict(self._subs)
        for f, qos in subs.items():  # the session may have been lost (expiry, broker without persistence)
            client.subscribe(f, qos=qos)
        self._connected.set()
        for cb in list(self._on_connect_cbs):
            try:
                cb()
            except Exception:
                log.exception("on_connect callback failed")

    def _handle_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._disconnected.set()
        if not was:  # a failed (re)connection attempt: nothing was established
            return
        why = "closed" if self._closing else str(reason)
        log.debug("disconnected from the broker at %s (%s)", self.config.url, why,
                  extra={"event": "broker_disconnected", "broker": self.config.url, "client_id": self.config.client_id,
                         "reason": why})
        _call_all(self._on_disconnect_cbs, why)

    def _handle_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.received_bytes += len(msg.payload)
        for h in list(self._handlers):
            try:
                h(msg.topic, msg.payload)
            except Exception:
                log.exception("handler failed on %s", msg.topic)
        handlers = list(self._ack_handlers)
        if not handlers:
            return
        ack = _Ack(client, msg.mid, msg.qos, len(handlers), self.connects, lambda: self.connects)
        for ah in handlers:
            try:
                ah(msg.topic, msg.payload, ack)
            except Exception:
                log.exception("handler failed on %s", msg.topic)
                ack()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a publish; paho resends QoS 1 messages after a reconnect until the broker acknowledges them."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            raise SyncError(f"publish to {topic} failed: {self._mqtt.error_string(info.rc)}")
        self.sent_bytes += len(payload)

    def publish_wait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                     timeout: float = 10.0) -> bool:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self.sent_bytes += len(payload)
        deadline = time.monotonic() + timeout
        try:
            while not info.is_published():
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        except (RuntimeError, ValueError):  # not connected / queue full
            return False
        return True

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic_filter] = qos
        if self.connected:
            self.client.subscribe(topic_filter, qos=qos)

    def close(self, timeout: float = 5.0) -> None:
        """A clean disconnect (no last will) that flushes first.

        Waits up to ``timeout`` seconds while connected for every queued or in-flight QoS 1/2 publish to be
        acknowledged by the broker (paho holds back those beyond ``max_inflight``), then sends DISCONNECT and
        waits for it to be written before the network thread stops: stopping the loop straight after
        ``disconnect()`` dropped what was still queued, and the broker published the last will of a client
        that had meant to leave. Publishes still unacknowledged after ``timeout`` (or while disconnected) are
        abandoned; with a persistent session the broker redelivers nothing of them, so log how many.
        """
        deadline = time.monotonic() + timeout
        on_loop = threading.current_thread() is getattr(self.client, "_thread", None)
        if self._started and not on_loop:
            while self.connected and self.client._out_messages and time.monotonic() < deadline:
                time.sleep(0.005)
        self._closing = True
        pending = len(self.client._out_messages)
        if pending:
            log.warning("closing with %d publishes the broker has not acknowledged", pending)
        self._disconnected.clear()
        try:
            if self.client.disconnect() == self._mqtt.MQTT_ERR_SUCCESS and self._started and not on_loop:
                self._disconnected.wait(max(0.0, deadline - time.monotonic()) + 0.5)  # DISCONNECT written
        finally:
            self.client.loop_stop()
            self._connected.clear()


def _call_all(callbacks: list[DisconnectHandler], reason: str) -> None:
    for cb in list(callbacks):
        try:
            cb(reason)
        except Exception:
            log.exception("on_disconnect callback failed")


__all__ = ["AckHandler", "DisconnectHandler", "Transport", "Will", "MemoryBroker", "MemoryTransport", "MqttConfig", "MqttTransport", "topic_matches"]
