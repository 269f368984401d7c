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

Every Mosquitto this project starts is configured here too: :class:`LocalBroker`
(a plain loopback broker of our own on a free port, for test benches, the demo and
the benchmarks) writes its configuration with the same :func:`write_broker_config`,
and :func:`find_mosquitto` finds the binary.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Protocol, Sequence

from edgefleet.errors import ConfigError, SyncError

from .wire.protocol import DEFAULT_CHUNK_SIZE, MAX_MESSAGE_BYTES

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
    persistence: bool = True  # False: sessions and retained messages live in memory only (a test bench)
    log_file: str | None = None  # None: stderr
    #: None: sized from ``max_devices``; 0: no limit (a test bench whose subscribers may fall far behind);
    #: otherwise this many (1000 is Mosquitto's own default, which drops QoS 1 silently)
    queue_limit: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (1..65535)")
        if not 1 <= self.max_devices <= 10_000_000:
            raise ConfigError(f"--max-devices {self.max_devices} must be between 1 and 10,000,000")
        if self.autosave_interval < 1:
            raise ConfigError("the autosave interval must be at least 1 second")
        if self.queue_limit is not None and self.queue_limit < 0:
            raise ConfigError(f"queue limit {self.queue_limit} must be 0 (none) or more")

    @property
    def max_queued(self) -> int:
        if self.queue_limit is not None:
            return self.queue_limit
        return max(MIN_QUEUED, QUEUED_PER_DEVICE * self.max_devices)

    @property
    def max_connections(self) -> int:
        return self.max_devices + self.max_devices // 10 + 16  # headroom for reconnect overlap and operators


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    acl: Path | None  # None: a test bench without an ACL (anonymous, loopback, plain)
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


def broker_config_text(cfg: BrokerConfig, acl: Path | None, data_dir: Path, cert: Path | None = None,
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
    ]
    if cfg.persistence:
        lines += [
            "# Sessions, retained messages (device status, desired jobs) and queued QoS 1 messages survive a",
            "# broker restart: devices resume their transfers instead of starting over, and a device that was",
            "# offline still finds its job when it returns.",
            "persistence true",
            f"persistence_location {data_dir}/",
            f"# Written every {cfg.autosave_interval} s: a crash loses at most that much of the queues (QoS 1 and",
            "# the chunk bitmaps make both sides ask again for what is missing).",
            f"autosave_interval {cfg.autosave_interval}",
            "# Devices set their own session expiry (7 days); this reclaims sessions of devices gone for good.",
            "persistent_client_expiration 14d",
        ]
    else:
        lines += ["# No persistence (a test bench): a broker restart loses sessions and retained messages.",
                  "persistence false"]
    lines += [
        "",
        "# The default max_queued_messages (1000) SILENTLY DROPS QoS 1 messages for a subscriber that falls",
        "# behind: measured (benchmarks/fleet_ota.py, queue_limit), a subscriber that stopped reading got",
        "# 1,020 of 5,000 QoS 1 messages (20 in flight + 1,000 queued); the rest were dropped without a trace.",
        "# A coordinator receives births, job updates and chunk requests from the whole fleet at once. Sized at",
        f"# {QUEUED_PER_DEVICE} messages per device (about a minute of one device's traffic while the",
        "# coordinator restarts); telemetry and chunks are acknowledged end to end, so anything dropped beyond",
        "# this is sent again, but job updates and births are not.",
        *(["# No queue limit at all (a test bench)."] if q == 0 else []),
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
        f"log_dest file {cfg.log_file}" if cfg.log_file else "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    lines += ["", "# Its process id, in the directory it writes anyway: the coordinator (cloud serve --broker-config) sends",
              "# it SIGHUP to reload the ACL and password file after a device is decommissioned.",
              f"pid_file {data_dir}/mosquitto.pid"]
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
    if acl is not None:
        lines += ["# A device may publish only under .../devices/<its id>/up/ and read only .../<its id>/down/;",
                  "# coordinators get the whole fleet (edgefleet.cloud_sync.coordinator.acl).",
                  f"acl_file {acl}"]
    else:
        lines += ["# WARNING: no ACL (a loopback test bench): every client may read and publish every topic."]
    return "\n".join(lines + [""])


def mosquitto_account(run_as: str | None) -> tuple[int, int] | None:
    """The uid and gid a mosquitto started as root runs as: the config's ``user`` (``--run-as``), else
    ``mosquitto``, else ``nobody`` (mosquitto's own fallback when the default account does not exist); None
    when it stays root. A ``--run-as`` account that does not exist is a :class:`ConfigError` (mosquitto would
    refuse to start)."""
    import pwd

    for name in [run_as] if run_as else ["mosquitto", "nobody"]:
        if name == "root":
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    if run_as:
        raise ConfigError(f"--run-as {run_as}: no such account on this machine (mosquitto drops to it when "
                          "started as root)")
    return None


def write_broker_config(cfg: BrokerConfig) -> BrokerFiles:
    """Check the inputs and write ``mosquitto.conf``, the ACL (unless given) and the persistence directory.

    Run as root, the persistence directory is given to the account mosquitto drops to when root starts it
    (:func:`mosquitto_account`): it writes its pid file and persistence there, and refuses to start when it
    cannot write the pid file."""
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
    bench = cfg.insecure and cfg.allow_anonymous and cfg.bind in ("127.0.0.1", "::1", "localhost")
    if acl_given is None and not cfg.fleet and not bench:
        raise ConfigError("an ACL is required: --acl FILE, or --fleet NAME to write one confining each device to "
                          "its own topics")
    account = mosquitto_account(cfg.run_as) if os.geteuid() == 0 else None
    out = Path(cfg.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    if account is not None:  # mosquitto writes its pid file and persistence there after dropping root
        os.chown(data_dir, *account)
    acl: Path | None = acl_given
    if acl is None and cfg.fleet:
        from .coordinator.acl import write_acl

        acl = write_acl(out / "acl", cfg.fleet, list(cfg.coordinators)).resolve()
    conf = out / "mosquitto.conf"
    conf.write_text(broker_config_text(cfg, acl, data_dir, cert, key, cafile, passwords))
    return BrokerFiles(conf, acl, data_dir)


# -- a Mosquitto of our own: test benches, the demo, the benchmarks ---------------------------------------------
MOSQUITTO_ENV = "EDGEFLEET_MOSQUITTO"
MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")
INSTALL_MOSQUITTO = (
    "install it (Debian/Ubuntu: sudo apt-get install mosquitto; macOS: brew install mosquitto), "
    f"point {MOSQUITTO_ENV} at the binary, or use a running broker with --broker mqtt://HOST:PORT"
)


def free_port() -> int:
    """A free TCP port on loopback (free when asked: start on it at once, and retry if it was taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_mosquitto(env: Mapping[str, str] | None = None, fallbacks: Sequence[str] = MOSQUITTO_FALLBACKS) -> str:
    """The mosquitto binary: ``$EDGEFLEET_MOSQUITTO`` if set (and then only it), else PATH, else the
    usual sbin locations (Debian installs it in /usr/sbin, off a normal user's PATH)."""
    env = os.environ if env is None else env
    chosen = env.get(MOSQUITTO_ENV)
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        raise ConfigError(f"{MOSQUITTO_ENV}={chosen} is not an executable mosquitto binary: fix it, or unset it "
                          f"to look on PATH; otherwise {INSTALL_MOSQUITTO}")
    found = shutil.which("mosquitto", path=env.get("PATH", os.defpath))
    if found:
        return found
    for p in fallbacks:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    where = f"on PATH nor in {', '.join(fallbacks)}" if fallbacks else "on PATH"
    raise ConfigError(f"mosquitto (the MQTT broker) was not found {where}: {INSTALL_MOSQUITTO}")


def local_config(root: str | os.PathLike[str], port: int, *, persistence: bool = False, log: bool = True,
                 queue_limit: int = 0, acl_file: str | os.PathLike[str] | None = None,
                 password_file: str | os.PathLike[str] | None = None) -> BrokerFiles:
    """The configuration of a plain Mosquitto on ``127.0.0.1:port`` in ``root`` (``mosquitto.conf``, ``data/``,
    ``mosquitto.log`` unless ``log`` is false), written by :func:`write_broker_config`: anonymous unless a
    password file is given, no ACL unless one is given, no queue limit unless asked (``queue_limit=1000`` is
    Mosquitto's own default). As root, mosquitto keeps running as root (the user it would drop to could not
    write a temporary directory of ours)."""
    root = Path(root)
    return write_broker_config(BrokerConfig(
        out_dir=root, port=port, bind="127.0.0.1", insecure=True, allow_anonymous=password_file is None,
        acl_file=None if acl_file is None else str(acl_file),
        password_file=None if password_file is None else str(password_file),
        run_as="root" if os.geteuid() == 0 else None, persistence=persistence, autosave_interval=1,
        max_devices=100_000,  # connections: benchmarks run thousands of simulated devices
        log_file=str(root.resolve() / "mosquitto.log") if log else None, queue_limit=queue_limit))


class _LocalServer(Protocol):
    port: int

    def log_tail(self, chars: int = 600) -> str: ...

    def stop(self) -> None: ...


def start_listening(server: _LocalServer, launch: Callable[[], Callable[[], bool]], repick: Callable[[], None],
                    what: str, *, timeout: float, attempts: int) -> None:
    """Start a local server (Mosquitto, nginx) on ``server.port`` and wait until the port answers: ``launch()``
    starts it and returns whether it still runs. When it stops saying the port is in use (another process took the
    free port meanwhile), ``repick()`` chooses another and it starts again, ``attempts`` times at most; any other
    failure is a SyncError with the end of its log."""
    for attempt in range(attempts):
        alive = launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if port_open("127.0.0.1", server.port, timeout=0.2):
                return
            time.sleep(0.05)
        tail = server.log_tail()
        server.stop()
        if "in use" not in tail.lower() or attempt == attempts - 1:
            raise SyncError(f"{what} did not start on 127.0.0.1:{server.port}: {tail.strip() or 'no output'}")
        repick()


class LocalBroker:
    """A Mosquitto of our own on a free loopback port (:func:`local_config`): start, ``kill()`` (SIGKILL),
    ``stop()``, and start again on the same port with the same persistence. ``output`` receives its stdout
    and stderr (default: discarded)."""

    def __init__(self, root: str | os.PathLike[str], *, binary: str | None = None, port: int | None = None,
                 output: IO[bytes] | None = None, **config: object) -> None:
        self.root = Path(root)
        self.binary = binary or find_mosquitto()
        self.port = port or free_port()
        self._config = config
        self.files = local_config(self.root, self.port, **config)  # type: ignore[arg-type]
        self.conf = self.files.conf
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 600) -> str:
        log = self.root / "mosquitto.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def start(self, timeout: float = 10.0, attempts: int = 3) -> LocalBroker:
        """Start and wait until the port answers; when the port was taken meanwhile (and it was ours to pick),
        pick another."""

        def launch() -> Callable[[], bool]:
            out = self.output if self.output is not None else subprocess.DEVNULL
            proc = self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out, stderr=out,
                                                start_new_session=True)
            return lambda: proc.poll() is None

        def repick() -> None:
            self.port = free_port()
            self.files = local_config(self.root, self.port, **self._config)  # type: ignore[arg-type]

        start_listening(self, launch, repick, f"mosquitto ({self.binary})", timeout=timeout, attempts=attempts)
        return self

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing saved since the last autosave."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
            self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BrokerConfig", "BrokerFiles", "LocalBroker", "broker_config_text", "find_mosquitto", "free_port",
           "local_config", "port_open", "write_broker_config"]
