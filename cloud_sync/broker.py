"""A production Mosquitto configuration for an edgefleet fleet: ``edgefleet cloud broker-config``.

:func:`write_broker_config` writes ``mosquitto.conf`` (every setting commented
with the reason for it), the ACL (from :mod:`.coordinator.acl`, unless one is
given) and the persistence directory. What it guards against:

* **Silent loss.** Mosquitto's default ``max_queued_messages 1000`` drops QoS 1
  messages, without telling anyone, for a subscriber that falls behind
  (``benchmarks/fleet_ota.py``, ``queue_limit``: a subscriber that stopped
  reading got 1,020 of 5,000 QoS 1 messages with the defaults, all 5,000 with
  the limit lifted). A fleet's births, job updates and chunk requests reach one
  coordinator in bursts larger than that, so the queue is sized from the fleet.
* **Anyone connecting.** ``allow_anonymous false`` unless asked for; devices
  authenticate with a password file or a client certificate
  (``use_identity_as_username``, so the ACL's ``%u`` is the certificate's CN).
* **Devices acting for each other.** The ACL confines a device to its own
  topics; ``use_username_as_clientid`` makes the client id the username (or the
  certificate's CN), so a device cannot connect as another device's client id
  and disconnect it (session takeover); ``per_listener_settings`` keeps the authentication of this listener
  from leaking to any other listener added later.
* **Plain text on the network.** One TLS listener (``--insecure`` writes a plain
  one, for a loopback test bench only).

Bad input (missing or unreadable certificate files, a key that does not match
its certificate, no way to authenticate) raises :class:`ConfigError` naming the
option and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import ConfigError

from .protocol import DEFAULT_CHUNK_SIZE, MAX_MESSAGE_BYTES

MIN_QUEUED = 1000  # Mosquitto's own default: never go below it
QUEUED_PER_DEVICE = 50  # messages a device may have waiting for the coordinator (about a minute of its traffic)
INFLIGHT = 100  # QoS 1 messages in flight per client: a full 16-chunk window plus control traffic


@dataclass(frozen=True)
class BrokerConfig:
    """What :func:`write_broker_config` needs. Paths may be relative; they are written absolute."""

    out_dir: str | os.PathLike[str]
    port: int = 8883
    bind: str = ""  # "" = every interface
    tls_cert: str | None = None
    tls_key: str | None = None
    cafile: str | None = None
    require_certificate: bool = False
    acl_file: str | None = None  # an existing ACL; otherwise one is written for ``fleet``
    fleet: str | None = None
    coordinators: tuple[str, ...] = ("edgefleet-coordinator",)
    password_file: str | None = None
    allow_anonymous: bool = False
    max_devices: int = 1000
    insecure: bool = False  # a plain (non-TLS) listener: loopback test benches only
    run_as: str | None = None  # the ``user`` mosquitto drops to when started as root
    autosave_interval: int = 30

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (1..65535)")
        if not 1 <= self.max_devices <= 10_000_000:
            raise ConfigError(f"--max-devices {self.max_devices} must be between 1 and 10,000,000")
        if self.autosave_interval < 1:
            raise ConfigError("the autosave interval must be at least 1 second")

    @property
    def max_queued(self) -> int:
        return max(MIN_QUEUED, QUEUED_PER_DEVICE * self.max_devices)

    @property
    def max_connections(self) -> int:
        return self.max_devices + self.max_devices // 10 + 16  # headroom for reconnect overlap and operators


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    acl: Path
    data_dir: Path


def _existing(path: str | None, option: str, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"{option} {path}: no such file ({what})")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path} cannot be read: {exc.strerror}") from None
    return p


def _check_tls(cert: Path, key: Path, cafile: Path | None) -> None:
    """The certificate and key parse, belong together, and the CA file holds certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        crt = x509.load_pem_x509_certificate(cert.read_bytes())
    except ValueError:
        raise ConfigError(f"--tls-cert {cert} is not a PEM certificate") from None
    try:
        priv = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--tls-key {key} is not an unencrypted PEM private key ({exc}); mosquitto cannot "
                          "prompt for a passphrase") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (priv.public_key().public_bytes(serialization.Encoding.PEM, pub)
            != crt.public_key().public_bytes(serialization.Encoding.PEM, pub)):
        raise ConfigError(f"--tls-key {key} does not belong to the certificate --tls-cert {cert}")
    if cafile is not None:
        try:
            x509.load_pem_x509_certificates(cafile.read_bytes())
        except ValueError:
            raise ConfigError(f"--cafile {cafile} holds no PEM certificate") from None


def broker_config_text(cfg: BrokerConfig, acl: Path, data_dir: Path, cert: Path | None = None,
                       key: Path | None = None, cafile: Path | None = None, passwords: Path | None = None) -> str:
    """The mosquitto.conf text (pure: paths are already checked)."""
    q = cfg.max_queued
    lines = [
        "# mosquitto.conf for an edgefleet fleet, written by `edgefleet cloud broker-config`.",
        f"# Sized for {cfg.max_devices} devices. Mosquitto 2.0 or later.",
        "",
        "# -- settings that apply to every listener -------------------------------------------------------",
        "# Authentication, ACL and anonymous access are given per listener below, so a listener added",
        "# later (a websocket port, a loopback port for tools) never inherits them by accident.",
        "per_listener_settings true",
        "",
        "# Sessions, retained messages (device status, desired jobs) and queued QoS 1 messages survive a",
        "# broker restart: devices resume their transfers instead of starting over, and a device that was",
        "# offline still finds its job when it returns.",
        "persistence true",
        f"persistence_location {data_dir}/",
        f"# Written every {cfg.autosave_interval} s: a crash loses at most that much of the queues (QoS 1 and the",
        "# chunk bitmaps make both sides ask again for what is missing).",
        f"autosave_interval {cfg.autosave_interval}",
        "# Devices set their own session expiry (7 days); this reclaims sessions of devices gone for good.",
        "persistent_client_expiration 14d",
        "",
        "# The default max_queued_messages (1000) SILENTLY DROPS QoS 1 messages for a subscriber that falls",
        "# behind: measured (benchmarks/fleet_ota.py, queue_limit), a subscriber that stopped reading got",
        "# 1,020 of 5,000 QoS 1 messages (20 in flight + 1,000 queued); the rest were dropped without a trace.",
        "# A coordinator receives births, job updates and chunk requests from the whole fleet at once. Sized at",
        f"# {QUEUED_PER_DEVICE} messages per device (about a minute of one device's traffic while the",
        "# coordinator restarts); telemetry and chunks are acknowledged end to end, so anything dropped beyond",
        "# this is sent again, but job updates and births are not.",
        f"max_queued_messages {q}",
        "# Bounded by message count above, not by bytes (the largest messages are 64 KiB chunks and a",
        "# device never has more than its 16-chunk window outstanding).",
        "max_queued_bytes 0",
        f"# QoS 1 messages in flight per client before queueing: a device's full chunk window ({DEFAULT_CHUNK_SIZE // 1024}",
        "# KiB chunks x 16) plus its control messages go out without waiting for acknowledgements.",
        f"max_inflight_messages {INFLIGHT}",
        "# Nothing edgefleet sends is larger than its protocol limit (4 MiB): refuse bigger packets before",
        "# they are buffered.",
        f"max_packet_size {MAX_MESSAGE_BYTES + 64 * 1024}",
        "# Small control messages (chunk requests, acknowledgements) leave at once instead of waiting for",
        "# Nagle's algorithm.",
        "set_tcp_nodelay true",
        "",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if cfg.run_as:
        lines += ["", "# The account mosquitto drops to when started as root (it must read the files named here).",
                  f"user {cfg.run_as}"]
    lines += ["", "# -- the fleet listener ------------------------------------------------------------------------------"]
    lines.append(f"listener {cfg.port}{' ' + cfg.bind if cfg.bind else ''}")
    lines += [
        f"# At most {cfg.max_connections} connections: the fleet plus 10% for devices whose old connection",
        "# has not timed out yet when they reconnect, and a few coordinators and operator tools.",
        f"max_connections {cfg.max_connections}",
    ]
    if cfg.insecure:
        lines += ["# WARNING: --insecure: no TLS. Credentials and bundles travel in clear text. Loopback test",
                  "# benches only."]
    else:
        assert cert is not None and key is not None
        lines += [
            "# TLS: credentials, jobs and bundle chunks are encrypted (bundles are also signed and verified",
            "# on the device, so a compromised broker can delay an update but never install one).",
            f"certfile {cert}",
            f"keyfile {key}",
            "# The oldest TLS version accepted.",
            "tls_version tlsv1.2",
        ]
        if cafile is not None:
            lines += ["# CA that signed the device certificates (and that clients use to check this broker).",
                      f"cafile {cafile}"]
        if cfg.require_certificate:
            lines += [
                "# Every client must present a certificate signed by the CA above; its CN becomes the MQTT",
                "# username, so the ACL's %u is the device id the certificate was issued to.",
                "require_certificate true",
                "use_identity_as_username true",
            ]
    if cfg.allow_anonymous:
        lines += ["# WARNING: anonymous clients allowed (--allow-anonymous); the ACL's per-device patterns do not",
                  "# apply to them.", "allow_anonymous true"]
    else:
        lines += ["# Nobody connects without credentials (a password or a client certificate).",
                  "allow_anonymous false"]
    if passwords is not None:
        lines += ["# Username/password per device and coordinator (mosquitto_passwd); device username = device id.",
                  f"password_file {passwords}"]
    if cfg.allow_anonymous:
        lines += ["# NOT tying client ids to usernames (--allow-anonymous: anonymous clients have no username and",
                  "# would be refused): any client can take over, and so disconnect, any other client's id."]
    else:
        lines += ["# The client id is replaced by the username (the certificate's CN with --require-certificate),",
                  "# whatever id the client asked for: a device can only ever be its own client id, so one",
                  "# device's credentials cannot take over (and so disconnect) another device's session. Each",
                  "# coordinator therefore needs a username of its own (two sharing one would replace each other).",
                  "use_username_as_clientid true"]
    lines += ["# A device may publish only under .../devices/<its id>/up/ and read only .../<its id>/down/;",
              "# coordinators get the whole fleet (edgefleet.cloud_sync.coordinator.acl).",
              f"acl_file {acl}", ""]
    return "\n".join(lines)


def write_broker_config(cfg: BrokerConfig) -> BrokerFiles:
    """Check the inputs and write ``mosquitto.conf``, the ACL (unless given) and the persistence directory."""
    cert = _existing(cfg.tls_cert, "--tls-cert", "the broker's TLS certificate, PEM")
    key = _existing(cfg.tls_key, "--tls-key", "the private key of --tls-cert, PEM")
    cafile = _existing(cfg.cafile, "--cafile", "the CA certificate(s), PEM")
    passwords = _existing(cfg.password_file, "--password-file", "create it with mosquitto_passwd")
    acl_given = _existing(cfg.acl_file, "--acl", "write one with `edgefleet cloud acl`")
    if not cfg.insecure:
        if cert is None or key is None:
            raise ConfigError("a TLS listener needs --tls-cert and --tls-key (or --insecure for a loopback test "
                              "bench)")
        _check_tls(cert, key, cafile)
    elif cert or key or cafile or cfg.require_certificate:
        raise ConfigError("--insecure writes a listener without TLS: drop --tls-cert/--tls-key/--cafile/"
                          "--require-certificate, or drop --insecure")
    if cfg.require_certificate and cafile is None:
        raise ConfigError("--require-certificate needs --cafile (the CA that signed the device certificates)")
    if not cfg.allow_anonymous and passwords is None and not cfg.require_certificate:
        raise ConfigError("no way for clients to authenticate: give --password-file or --require-certificate "
                          "(or --allow-anonymous, which lets anyone connect)")
    if acl_given is None and not cfg.fleet:
        raise ConfigError("an ACL is required: --acl FILE, or --fleet NAME to write one confining each device to "
                          "its own topics")
    out = Path(cfg.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    if acl_given is not None:
        acl = acl_given
    else:
        from .coordinator.acl import write_acl

        assert cfg.fleet is not None
        acl = write_acl(out / "acl", cfg.fleet, list(cfg.coordinators)).resolve()
    conf = out / "mosquitto.conf"
    conf.write_text(broker_config_text(cfg, acl, data_dir, cert, key, cafile, passwords))
    return BrokerFiles(conf, acl, data_dir)


__all__ = ["BrokerConfig", "BrokerFiles", "broker_config_text", "write_broker_config"]
