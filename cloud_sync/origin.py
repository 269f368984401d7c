"""Where bundles are fetched over HTTP(S): an *origin* the coordinator publishes content-addressed files to.

MQTT keeps the control traffic (jobs, reports, telemetry); the bytes of a bundle or a delta can come from any web
server or CDN instead of through the broker and the coordinator. The coordinator (``cloud serve --origin-dir DIR
--origin-url URL``, or ``--origin-url s3://BUCKET/PREFIX``) publishes each file it sends once, named by its sha256,
and every install job then carries the file's URL beside its length and sha256 (:class:`~.wire.protocol.FileInfo`).
A device downloads it with Range requests (:mod:`.device.fetch`), checks length and sha256, and falls back to MQTT
chunks when the job has no URL or the origin fails. Nothing at the origin is trusted: a file that is not exactly the
announced one is refused, so a stale or tampered CDN costs MQTT bytes, never a wrong install.

Two origins:

* :class:`DirectoryOrigin` -- a directory any web server serves as ``URL/<sha256>`` (nginx, a CDN's origin, a
  bucket synced from it). Files are written atomically (``edgefleet.atomic``); a file already there is checked
  (once per coordinator process) and replaced if its bytes are not its name's.
* :class:`S3Origin` -- an S3-compatible bucket through boto3 (an optional dependency: ``pip install
  'edgefleet[s3]'``; without it :class:`~edgefleet.errors.MissingDependencyError`). Jobs carry presigned GET URLs
  (``expires`` seconds); a device whose URL has expired falls back to MQTT.

:class:`LocalNginx` is a real nginx of our own on a free loopback port serving a directory (tests and benchmarks,
like :class:`~.broker.LocalBroker` for Mosquitto): generated config with every path (pid, logs, temp files) under
its own directory, an access log that records the status, the Range asked and the bytes sent of each request, an
optional ``limit_rate`` (a throttled origin) and optional TLS (``tls=(cert, key)``: https).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

from edgefleet.atomic import write_atomic
from edgefleet.errors import ConfigError, MissingDependencyError, SyncError
from edgefleet.supervisor import ChildProcess

from .broker import free_port, start_listening

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_PRESIGN_SECONDS = 7 * 86400  # the longest an S3 SigV4 presigned URL lives
NGINX_FALLBACKS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


class Origin(Protocol):
    """Where the coordinator publishes files for devices to fetch over HTTP(S)."""

    def url_for(self, file_id: str, data: Callable[[], bytes]) -> str:
        """The URL devices fetch the file ``file_id`` (its sha256) from, publishing it first if it is not there yet
        (``data`` gives its bytes). Raises :class:`SyncError` (or ``OSError``) when it cannot be published."""


def check_base_url(url: str, what: str = "--origin-url") -> str:
    """An http(s) base URL with a host, without a query or fragment (file names are appended to it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r}: give http(s)://HOST[:PORT]/PATH/")
    if parts.query or parts.fragment:
        raise ConfigError(f"{what} {url!r}: no query or fragment (the file's sha256 is appended to it)")
    if any(c <= " " or c > "~" for c in url):
        raise ConfigError(f"{what} {url!r}: printable ASCII without spaces only")
    return url.rstrip("/") + "/"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file_id(file_id: str) -> str:
    if not _SHA256.match(file_id):
        raise SyncError(f"not a sha256 file id: {file_id[:80]!r}")
    return file_id


class DirectoryOrigin:
    """A directory served at ``base_url`` by any web server: files are published there as ``<sha256>``."""

    def __init__(self, directory: str | os.PathLike[str], base_url: str) -> None:
        self.dir = Path(directory)
        self.base_url = check_base_url(base_url)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--origin-dir {self.dir}: cannot create it ({exc.strerror or exc})") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise ConfigError(f"--origin-dir {self.dir}: not writable by this process")
        self._published: set[str] = set()

    def path(self, file_id: str) -> Path:
        return self.dir / _check_file_id(file_id)

    def publish(self, file_id: str, data: bytes) -> Path:
        """Write the file as ``<sha256>`` unless it is there already with exactly those bytes (content-addressed:
        the same name is always the same bytes; a damaged or tampered copy is replaced)."""
        path = self.path(file_id)
        try:
            if path.stat().st_size == len(data) and _sha256_file(path) == file_id:
                return path
        except FileNotFoundError:
            pass
        write_atomic(path, data)
        os.chmod(path, 0o644)  # served by another user (the web server's) on most hosts
        return path

    def url_for(self, file_id: str, data: Callable[[], bytes]) -> str:
        if file_id not in self._published:
            self.publish(file_id, data())
            self._published.add(file_id)
        return self.base_url + file_id


class S3Origin:
    """An S3-compatible bucket: files are uploaded as ``PREFIX<sha256>`` and devices get presigned GET URLs."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 expires: int = DEFAULT_PRESIGN_SECONDS, client: object | None = None) -> None:
        if not bucket:
            raise ConfigError("an S3 origin needs a bucket: --origin-url s3://BUCKET/PREFIX")
        if not 60 <= expires <= DEFAULT_PRESIGN_SECONDS:
            raise ConfigError(f"presigned URLs live 60s..7d, not {expires}s")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise MissingDependencyError("an S3 origin needs boto3, which is not installed: pip install "
                                             "'edgefleet[s3]' (or serve a directory: --origin-dir DIR "
                                             "--origin-url https://...)") from None
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client: object = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.expires = expires
        self._urls: dict[str, tuple[float, str]] = {}  # file id -> (when presigned, URL)

    def key(self, file_id: str) -> str:
        return self.prefix + _check_file_id(file_id)

    def url_for(self, file_id: str, data: Callable[[], bytes]) -> str:
        hit = self._urls.get(file_id)
        if hit is not None and time.monotonic() - hit[0] < self.expires / 2:
            return hit[1]
        c = self.client
        key = self.key(file_id)
        try:
            c.head_object(Bucket=self.bucket, Key=key)  # type: ignore[attr-defined]
        except Exception:  # not there (or not readable): upload it; a real failure shows in put_object
            try:
                c.put_object(Bucket=self.bucket, Key=key, Body=data(),  # type: ignore[attr-defined]
                             ContentType="application/octet-stream")
            except Exception as exc:
                raise SyncError(f"cannot publish {key} to s3://{self.bucket}: {exc}") from None
        url = str(c.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},  # type: ignore[attr-defined]
                                           ExpiresIn=self.expires))
        self._urls[file_id] = (time.monotonic(), url)
        return url


def make_origin(origin_dir: str | None, origin_url: str | None, *, s3_endpoint: str | None = None) -> Origin | None:
    """The origin ``cloud serve`` was given: ``--origin-dir DIR --origin-url http(s)://...`` (a served directory),
    ``--origin-url s3://BUCKET/PREFIX`` (boto3, presigned URLs), or neither (None: bundles over MQTT only)."""
    if not origin_dir and not origin_url:
        return None
    if not origin_url:
        raise ConfigError("--origin-dir needs --origin-url: the URL devices fetch that directory's files at")
    if origin_url.startswith("s3://"):
        if origin_dir:
            raise ConfigError("--origin-dir is for a served directory; an s3:// origin takes no directory")
        parts = urlsplit(origin_url)
        return S3Origin(parts.netloc, parts.path, endpoint_url=s3_endpoint)
    if not origin_dir:
        raise ConfigError(f"--origin-url {origin_url} needs --origin-dir: the directory the web server serves there")
    return DirectoryOrigin(origin_dir, origin_url)


# -- a real nginx for tests and benchmarks ---------------------------------------------------------------------
def find_nginx() -> str:
    """The nginx binary: ``$EDGEFLEET_NGINX``, else PATH, else the usual sbin locations (Debian's /usr/sbin)."""
    chosen = os.environ.get("EDGEFLEET_NGINX")
    if chosen:
        if os.path.isfile(chosen) and os.access(chosen, os.X_OK):
            return chosen
        raise ConfigError(f"EDGEFLEET_NGINX={chosen} is not an executable nginx")
    found = shutil.which("nginx")
    if found:
        return found
    for p in NGINX_FALLBACKS:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise ConfigError("nginx is not installed: apt-get install nginx (Debian/Ubuntu), or set EDGEFLEET_NGINX")


#: the access log's fields, tab-separated: status, Range header ("-" if none), body bytes sent, request
ACCESS_FORMAT = "$status\\t$http_range\\t$body_bytes_sent\\t$request_uri"


def nginx_config(root: Path, serve: Path, port: int, *, limit_rate: int = 0, limit_rate_after: int = 0,
                 tls: tuple[Path, Path] | None = None, extra: str = "") -> str:
    """An nginx.conf serving ``serve`` read-only on 127.0.0.1:``port``, every file it writes under ``root``; with
    ``tls`` (certificate, key: PEM) over https; ``extra``: more directives of the server block (tests put
    redirecting ``location``s in front of the files)."""
    user = ""
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # workers would drop to 'nobody', who cannot read a 0700 tmp
        import grp
        import pwd

        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
    temp = {k: root / "tmp" / k for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    rate = f"limit_rate {limit_rate};\n        limit_rate_after {limit_rate_after};" if limit_rate else ""
    ssl = (f" ssl;\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
           "        ssl_protocols TLSv1.2 TLSv1.3") if tls else ""
    return f"""# written by edgefleet.cloud_sync.origin.LocalNginx: a loopback origin for tests and benchmarks
daemon off;
worker_processes 1;
{user}
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format edgefleet "{ACCESS_FORMAT}";
    access_log {root}/access.log edgefleet;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port}{ssl};
        root {serve};
        location / {{
            limit_except GET {{ deny all; }}
        {rate}
        }}
        {extra}
    }}
}}
"""


class LocalNginx:
    """A real nginx serving ``serve`` on a free loopback port, supervised (``edgefleet.supervisor``): ``start()``,
    ``kill()`` (SIGKILL: every open download is cut), ``stop()``, and ``start()`` again on the same port.
    ``access()`` reads the access log: (status, Range header, body bytes sent, path) per request."""

    def __init__(self, root: str | os.PathLike[str], serve: str | os.PathLike[str], *, port: int | None = None,
                 limit_rate: int = 0, limit_rate_after: int = 0, binary: str | None = None,
                 tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None, extra: str = "") -> None:
        self.root = Path(root)
        self.serve = Path(serve)
        self.binary = binary or find_nginx()
        self.port = port or free_port()
        self.limit_rate = limit_rate
        self.limit_rate_after = limit_rate_after
        self.tls = (Path(tls[0]).resolve(), Path(tls[1]).resolve()) if tls else None
        self.extra = extra  # more directives of the server block (nginx_config)
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/"

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    def _write(self) -> None:
        for d in ("tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.serve.mkdir(parents=True, exist_ok=True)
        write_atomic(self.conf, nginx_config(self.root, self.serve.resolve(), self.port, limit_rate=self.limit_rate,
                                             limit_rate_after=self.limit_rate_after, tls=self.tls,
                                             extra=self.extra))

    def start(self, timeout: float = 10.0, attempts: int = 3) -> LocalNginx:
        """Start and wait until the port answers; when the port was taken meanwhile, pick another."""

        def launch() -> Callable[[], bool]:
            self._write()
            child = self.child = ChildProcess([self.binary, "-p", str(self.root), "-e", str(self.root / "error.log"),
                                               "-c", str(self.conf)], name="nginx", restart=False,
                                              log_path=self.root / "nginx.out").start()
            return lambda: child.running

        def repick() -> None:
            self.port = free_port()

        start_listening(self, launch, repick, f"nginx ({self.binary})", timeout=timeout, attempts=attempts)
        return self

    def log_tail(self, chars: int = 800) -> str:
        out = []
        for name in ("error.log", "nginx.out"):
            p = self.root / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-chars:])
        return "\n".join(out)

    def kill(self) -> None:
        """SIGKILL to nginx's process group: connections are cut mid-transfer, nothing is logged for them."""
        if self.child is not None:
            self.child.kill()
            self.child.stop(timeout=5)
            self.child = None
            (self.root / "nginx.pid").unlink(missing_ok=True)

    def stop(self, timeout: float = 10.0) -> None:
        if self.child is not None:
            self.child.stop(timeout=timeout)
            self.child = None

    def access(self) -> list[tuple[int, str, int, str]]:
        """The access log so far: (status, Range header or "-", body bytes sent, request path) per line."""
        p = self.root / "access.log"
        out = []
        for line in (p.read_text(errors="replace").splitlines() if p.exists() else []):
            parts = line.split("\t")
            if len(parts) == 4 and parts[0].isdigit() and parts[2].isdigit():
                out.append((int(parts[0]), parts[1], int(parts[2]), parts[3]))
        return out

    def __enter__(self) -> LocalNginx:
        return self.start() if self.child is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Origin", "DirectoryOrigin", "S3Origin", "make_origin", "check_base_url", "LocalNginx", "find_nginx",
           "nginx_config", "DEFAULT_PRESIGN_SECONDS"]
