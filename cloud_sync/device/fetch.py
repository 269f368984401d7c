"""A device's HTTP(S) download of an announced file from an origin (standard library only: ``http.client``).

:func:`fetch` downloads ``url`` into a partial file, resuming with a ``Range: bytes=N-`` request from the bytes
already there (after a cut connection, or a restart of the device: the partial file is the resume point), and checks
what it got against the job's announcement before anyone uses it:

* **Length.** A ``Content-Length`` or ``Content-Range`` that disagrees with the announced size is refused before a
  byte is read; a body is never read past the announced size (one byte more is read to tell an endless or longer
  body, ``origin_too_long``).
* **Time.** Every connect and read has a timeout (``read_timeout``): a stalled origin fails the attempt
  (``origin_timeout``), it never hangs the device.
* **Content.** Once the file is complete its sha256 must be the announced one (``origin_sha256_mismatch``; the file
  is deleted).
* **TLS.** An https origin is verified against the system's CAs (``SSL_CERT_FILE`` names a private CA's file); a
  certificate that does not verify is ``origin_tls_error``, not retried.

* **Redirects.** A 301, 302, 303, 307 or 308 answer (a CDN, an S3-style origin) is followed to its ``Location``
  (absolute, or relative to the URL that answered), at most 5 hops a request, http to http(s) and https to https
  only: https to http, another scheme or no Location is ``origin_redirect_refused``, a URL asked before in the chain
  ``origin_redirect_loop``, a sixth hop ``origin_too_many_redirects`` (none retried). A resume starts at the job's URL
  again and follows its redirects anew, the ``Range`` on every hop; the checks above apply to the final answer.

A server that ignores Range (200 instead of 206) is read from the start again. Transient failures (connection
refused or cut, timeouts, 5xx, 429) are retried with backoff, without limit while each attempt makes progress and at
most ``attempts`` times in a row without any; other failures (4xx, a wrong length) end the fetch at once. The result
names its reason; the caller (:class:`~.driver.DeviceSync`, told by :class:`~.machine.DeviceMachine`) falls back to
MQTT chunks on any failure.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

from edgefleet._version import __version__ as AGENT_VERSION

DEFAULT_READ_TIMEOUT = 30.0  # seconds a connect or a read may wait for the origin
DEFAULT_ATTEMPTS = 4  # attempts in a row without progress before the origin is given up
BLOCK = 64 * 1024
_SYNC_EVERY = 4 << 20  # fsync the partial file every this many bytes (the resume point survives a power cut)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
MAX_REDIRECTS = 5  # redirects followed by one request before the origin is refused
_REDIRECTS = (301, 302, 303, 307, 308)
_BAD_URL_CHAR = re.compile(r"[\x00-\x20\x7f]")  # what http.client would refuse in a request line

#: reasons a fetch ends without the file (each is a device's job-update reason when it falls back to MQTT)
REASONS = ("origin_unreachable", "origin_timeout", "origin_http_error", "origin_too_long", "origin_too_short",
           "origin_bad_range", "origin_sha256_mismatch", "origin_tls_error", "origin_io_error",
           "origin_redirect_loop", "origin_too_many_redirects", "origin_redirect_refused", "canceled")


@dataclass(frozen=True)
class FetchResult:
    """How a fetch ended: ``ok`` (the file is complete and verified at ``path``) or a named ``reason``."""

    ok: bool
    reason: str = ""
    message: str = ""
    received: int = 0  # body bytes read over HTTP, every attempt together
    resumes: int = 0  # requests that continued a partial file with a Range
    attempts: int = 0  # requests made
    restarts: int = 0  # times the server ignored a Range and the file was read from its start again
    redirects: int = 0  # redirects followed, every attempt together


class _Refused(Exception):
    """The origin's answer cannot be the announced file: no retry."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Transient(Exception):
    """The attempt failed in a way another attempt may not (a cut, a timeout, a 5xx)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Download:
    """One file's download, cancellable from another thread (:meth:`cancel` also closes the open connection, so a
    blocked read returns at once)."""

    def __init__(self, url: str, dest: str | os.PathLike[str], size: int, sha256: str, *,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, attempts: int = DEFAULT_ATTEMPTS, backoff: float = 0.25,
                 max_backoff: float = 5.0, ssl_context: ssl.SSLContext | None = None,
                 max_redirects: int = MAX_REDIRECTS) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url[:80]!r}")
        self.url = url
        self.dest = Path(dest)
        self.size = int(size)
        self.sha256 = sha256
        self.read_timeout = read_timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.ssl_context = ssl_context
        self.max_redirects = max(0, max_redirects)
        self._at = url  # the URL being asked now (the job's, or where it redirected to)
        self.final_url = ""  # the URL that answered with the file last
        self._canceled = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self.received = 0
        self.resumes = 0
        self.requests = 0
        self.restarts = 0
        self.redirects = 0

    # -- control --------------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._canceled.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def canceled(self) -> bool:
        return self._canceled.is_set()

    def _result(self, ok: bool, reason: str = "", message: str = "") -> FetchResult:
        return FetchResult(ok, reason, message, self.received, self.resumes, self.requests, self.restarts,
                           self.redirects)

    # -- the download -----------------------------------------------------------------------------------------------
    def run(self) -> FetchResult:
        """Download (resuming what ``dest`` holds), verify, and say how it ended. Never raises for the origin's
        faults; the partial file is kept after a transient failure (the next fetch resumes it) and deleted when its
        content is refused."""
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            offset = self.dest.stat().st_size if self.dest.exists() else 0
            if offset > self.size:  # not ours to resume
                self.dest.unlink()
                offset = 0
        except OSError as exc:
            return self._result(False, "origin_io_error", f"cannot prepare {self.dest}: {exc}")
        idle = 0  # attempts in a row without progress
        last = ("origin_unreachable", "no attempt made")
        while offset < self.size:
            if self.canceled:
                return self._result(False, "canceled", "canceled")
            before = offset
            try:
                offset = self._attempt(offset)
                continue
            except _Refused as exc:
                self.dest.unlink(missing_ok=True)
                return self._result(False, exc.reason, str(exc))
            except _Transient as exc:
                last = (exc.reason, str(exc))
            except OSError as exc:  # the partial file itself
                return self._result(False, "origin_io_error", f"{self.dest}: {exc}")
            finally:
                self._close()
            offset = self._on_disk()
            if self.canceled:
                return self._result(False, "canceled", "canceled")
            idle = 0 if offset > before else idle + 1
            if idle >= self.attempts:
                return self._result(False, last[0], f"{last[1]} ({idle} attempt(s) in a row without progress)")
            if self._canceled.wait(min(self.backoff * 2 ** max(idle - 1, 0), self.max_backoff)):
                return self._result(False, "canceled", "canceled")
        return self._verify()

    def _on_disk(self) -> int:
        try:
            return min(self.dest.stat().st_size, self.size)
        except OSError:
            return 0

    def _connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self._at)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            ctx = self.ssl_context or ssl.create_default_context()  # the system's CAs (SSL_CERT_FILE honoured)
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=self.read_timeout,
                                               context=ctx)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.read_timeout)
        with self._lock:
            self._conn = conn
        return conn

    def _close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _attempt(self, offset: int) -> int:
        """One request: from ``offset`` to the end of the file. Returns the new offset (the size when complete).

        It starts at the job's URL and follows redirects (at most ``max_redirects``), each hop with the same
        ``Range``; every attempt, a resume included, starts at the job's URL again (see :meth:`_redirect`)."""
        headers = {"User-Agent": f"edgefleet-device/{AGENT_VERSION}", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        self._at = self.url
        seen = {urldefrag(self.url)[0]}
        while True:
            resp = self._request(headers)
            if resp.status not in _REDIRECTS:
                break
            nxt = self._redirect(resp, seen)
            self._close()
            if self.canceled:
                raise _Transient("canceled", "canceled")
            self.redirects += 1
            self._at = nxt
        self.final_url = self._at
        start = self._check_answer(resp, offset)
        if offset and start == offset:
            self.resumes += 1
        return self._read_body(resp, start)

    def _request(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET ``self._at``: its answer (status and headers read, not the body)."""
        parts = urlsplit(self._at)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn = self._connect()
            self.requests += 1
            conn.request("GET", path, headers=headers)
            return conn.getresponse()
        except TimeoutError as exc:
            raise _Transient("origin_timeout", f"{self._where()}: no answer within {self.read_timeout:g}s") from exc
        except ssl.SSLCertVerificationError as exc:  # not the origin we were sent to (or a CA this device lacks)
            raise _Refused("origin_tls_error", f"{self._where()}: {exc.verify_message or exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient("origin_unreachable", f"{self._where()}: {exc or type(exc).__name__}") from exc

    def _redirect(self, resp: http.client.HTTPResponse, seen: set[str]) -> str:
        """Where a 301/302/303/307/308 answer of ``self._at`` sends the request: its ``Location`` (absolute, or
        relative to ``self._at``), or a :class:`_Refused` - no or a malformed Location, another scheme than http(s)
        or https to http (``origin_redirect_refused``), a URL already asked in this attempt (``origin_redirect_loop``)
        or one more than ``max_redirects`` (``origin_too_many_redirects``).

        A resume does not go to the last URL of the previous attempt: it asks the job's URL again and follows its
        redirects anew. A temporary redirect (302/307, a CDN's edge, an S3 URL presigned for a while) may send it
        elsewhere by then, and the job's URL (the one TUF signs) stays the one the device trusts; the Range goes with
        every hop, and the answer at the end of the chain is checked as any (206 and its Content-Range, the length,
        the whole file's sha256)."""
        where, status = self._where(), resp.status
        location = (resp.getheader("Location") or "").strip()
        if not location:
            raise _Refused("origin_redirect_refused", f"{where} answered {status} without a Location")
        try:
            nxt = urldefrag(urljoin(self._at, location))[0]
            parts = urlsplit(nxt)
            parts.port  # noqa: B018 - a port that is not a number raises ValueError
        except ValueError:
            raise _Refused("origin_redirect_refused",
                           f"{where} answered {status} with a Location that is not a URL: {location[:200]!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or _BAD_URL_CHAR.search(nxt) \
                or not nxt.isascii():
            raise _Refused("origin_redirect_refused",
                           f"{where} answered {status} with a Location that is not an http(s) URL: {location[:200]!r}")
        if urlsplit(self._at).scheme == "https" and parts.scheme != "https":
            raise _Refused("origin_redirect_refused", f"{where} answered {status}: a redirect from https to "
                                                      f"{parts.scheme}://{parts.netloc} is never followed")
        if nxt in seen:
            raise _Refused("origin_redirect_loop", f"{where} answered {status}: a redirect loop back to "
                                                   f"{nxt[:200]} (after {len(seen) - 1} redirect(s))")
        if len(seen) > self.max_redirects:
            raise _Refused("origin_too_many_redirects", f"{where} answered {status}: more than "
                                                        f"{self.max_redirects} redirects from {self.url[:200]}")
        seen.add(nxt)
        return nxt

    def _where(self) -> str:
        parts = urlsplit(self._at)
        return f"{parts.scheme}://{parts.netloc}"

    def _check_answer(self, resp: http.client.HTTPResponse, offset: int) -> int:
        """Where the body starts in the file (``offset``, or 0 when the server ignored the Range); refuses an answer
        that cannot be the announced file before a byte of the body is read."""
        status = resp.status
        if status == 206:
            m = _CONTENT_RANGE.match(resp.getheader("Content-Range", "") or "")
            if not m:
                raise _Refused("origin_bad_range", f"206 with Content-Range {resp.getheader('Content-Range')!r}")
            first, last, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if total != "*" and int(total) != self.size:
                raise (_Refused("origin_too_long", f"the origin's file is {total} bytes, {self.size} announced")
                       if int(total) > self.size else
                       _Refused("origin_too_short", f"the origin's file is {total} bytes, {self.size} announced"))
            if first != offset or last > self.size - 1:
                raise _Refused("origin_bad_range", f"asked for bytes {offset}-, got {first}-{last}/{total}")
            start = offset
        elif status == 200:
            start = 0
            if offset:
                self.restarts += 1  # the server ignores Range: the whole file again
        elif status == 416:
            raise _Refused("origin_too_short", f"the origin has fewer than {offset} bytes (416 for bytes={offset}-)")
        elif status >= 500 or status in (408, 429):
            raise _Transient("origin_http_error", f"{self._where()} answered {status} {resp.reason}")
        else:
            raise _Refused("origin_http_error", f"{self._where()} answered {status} {resp.reason}")
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit():
            n = int(length)
            if start + n > self.size:
                raise _Refused("origin_too_long", f"the origin sends {start + n} bytes, {self.size} announced")
            if status == 200 and n < self.size:
                raise _Refused("origin_too_short", f"the origin's file is {n} bytes, {self.size} announced")
        return start

    def _read_body(self, resp: http.client.HTTPResponse, start: int) -> int:
        """Append the body at ``start``, never past the announced size; returns the offset reached. Network faults
        are :class:`_Transient` (what arrived before is kept), the partial file's own are ``OSError``."""
        pos = start
        unsynced = 0
        with open(self.dest, "r+b" if self.dest.exists() else "wb") as fh:
            fh.truncate(start)
            fh.seek(start)
            try:
                while pos < self.size and not self.canceled:
                    cut: _Transient | None = None
                    try:
                        block = resp.read(min(BLOCK, self.size - pos))
                        if not block:
                            cut = _Transient("origin_unreachable",
                                             f"{self._where()}: connection closed at byte {pos} of {self.size}")
                    except http.client.IncompleteRead as exc:  # the connection was cut mid-body
                        block = exc.partial[: self.size - pos]
                        cut = _Transient("origin_unreachable", f"{self._where()}: connection cut at byte "
                                                               f"{pos + len(block)} of {self.size}")
                    except TimeoutError:
                        raise _Transient("origin_timeout", f"{self._where()}: read stalled for "
                                                           f"{self.read_timeout:g}s at byte {pos} of {self.size}") from None
                    except (OSError, http.client.HTTPException) as exc:
                        raise _Transient("origin_unreachable", f"{self._where()}: {exc or type(exc).__name__} at "
                                                               f"byte {pos} of {self.size}") from None
                    fh.write(block)
                    pos += len(block)
                    self.received += len(block)
                    unsynced += len(block)
                    if cut is not None:
                        raise cut
                    if unsynced >= _SYNC_EVERY:
                        fh.flush()
                        os.fsync(fh.fileno())
                        unsynced = 0
                if pos >= self.size and not self.canceled:
                    try:
                        extra = resp.read(1)  # a body longer than announced (no or a wrong Content-Length)
                    except (OSError, http.client.HTTPException):
                        extra = b""
                    if extra:
                        raise _Refused("origin_too_long", f"the origin sends more than the {self.size} bytes announced")
            finally:
                fh.flush()
                os.fsync(fh.fileno())
        return pos

    def _verify(self) -> FetchResult:
        h = hashlib.sha256()
        try:
            with open(self.dest, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            return self._result(False, "origin_io_error", f"{self.dest}: {exc}")
        if h.hexdigest() != self.sha256:
            self.dest.unlink(missing_ok=True)
            return self._result(False, "origin_sha256_mismatch",
                                f"the file at {self.url[:200]} is not the announced one: sha256 {h.hexdigest()[:16]}..."
                                f", {self.sha256[:16]}... announced")
        return self._result(True)


def fetch(url: str, dest: str | os.PathLike[str], size: int, sha256: str, **kw: object) -> FetchResult:
    """Download ``url`` into ``dest`` (resuming what is there) and verify it: :class:`Download` ``.run()``."""
    return Download(url, dest, size, sha256, **kw).run()  # type: ignore[arg-type]


__all__ = ["Download", "FetchResult", "fetch", "REASONS", "DEFAULT_READ_TIMEOUT", "DEFAULT_ATTEMPTS"]
