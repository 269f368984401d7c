"""TLS for the coordinator's HTTP API: the server's certificate files, the clients' CA, and named errors.

- :func:`check_server_files` - ``cloud serve --tls-cert/--tls-key``: both or neither; a missing,
  unreadable, unparseable, encrypted or mismatched pair is a ``ConfigError`` before anything starts;
- :func:`client_verify` - what a client verifies the API with: the CA of ``--ca-cert`` /
  ``EDGEFLEET_CA_CERT``, else the system's CAs (verification is never switched off);
- :func:`connect_error` - a failed connection as a one-line named error: a certificate that does not
  verify, or is for another host (``SyncError``), an ``http://`` client talking to an https API or the
  reverse (``ConfigError``);
- :func:`self_check` - whether a client trusting ``ca`` accepts the server's certificate for ``url``'s
  host (an in-memory handshake: no socket), so ``cloud serve`` can tell at start that the runs it starts
  on drift will not verify it.
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import urlsplit

from edgefleet.errors import ConfigError, EdgefleetError, SyncError

CA_ENV = "EDGEFLEET_CA_CERT"
_HOST_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def _no_password() -> bytes:
    raise ConfigError("encrypted")  # never prompt on the terminal for a key's passphrase


def check_server_files(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server context of ``--tls-cert``/``--tls-key`` (None when neither is given); refusals are
    ``ConfigError`` naming the option and the file."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key go together: give both (PEM certificate and its private key) "
                          "or neither")
    for opt, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise ConfigError(f"{opt} {path}: cannot read it: {exc.strerror or exc}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ConfigError:
        raise ConfigError(f"--tls-key {key} is encrypted: give an unencrypted PEM private key") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--tls-key {key} is not the private key of --tls-cert {cert}") from None
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate and its PEM private key "
                          f"({reason})") from None
    return ctx


def client_verify(ca_cert: str | None = None) -> ssl.SSLContext:
    """What a client verifies the API's certificate with: ``ca_cert`` (else ``EDGEFLEET_CA_CERT``), else the
    system's CAs. Always verifying: certificate chain and host name."""
    ca_cert = ca_cert or os.environ.get(CA_ENV) or None
    if not ca_cert:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(f"--ca-cert {ca_cert} (or {CA_ENV}): not a readable PEM CA certificate ({reason})") from None


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, ssl.SSLError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (a diagnosis only: nothing is sent over it)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, probe.wrap_socket(raw):
            return True
    except (OSError, ValueError):
        return False


def connect_error(api: str, exc: BaseException) -> EdgefleetError:
    """A failed connection to the API at ``api`` as a named, one-line error."""
    parts = urlsplit(api)
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = str(cause.verify_message or cause.reason or cause).rstrip(".")
        if cause.verify_code in _HOST_MISMATCH:
            return SyncError(f"the coordinator's TLS certificate at {api} is not valid for {parts.hostname} "
                             f"({reason}): use the name or address it was issued for")
        return SyncError(f"the coordinator's TLS certificate at {api} does not verify ({reason}): give the CA that "
                         f"signed it with --ca-cert or {CA_ENV}")
    if cause is not None and parts.scheme == "https":
        return ConfigError(f"TLS with the coordinator at {api} failed ({cause.reason or cause}): is its API served "
                           "without TLS? then use http://")
    import httpx

    dropped = isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
    if dropped and parts.scheme == "http" and parts.hostname and speaks_tls(parts.hostname, parts.port or 80):
        https = parts._replace(scheme="https").geturl()
        return ConfigError(f"the coordinator at {api} serves https: use {https} (with --ca-cert or {CA_ENV} "
                           "for its CA)")
    return SyncError(f"cannot reach the coordinator at {api}: {exc}")


def self_check(server: ssl.SSLContext, url: str, ca_cert: str | None) -> str | None:
    """None when a client of ``url`` trusting ``ca_cert`` (else the system's CAs) accepts ``server``'s certificate,
    else why not. An in-memory handshake: no socket."""
    host = urlsplit(url).hostname or ""
    try:
        client = client_verify(ca_cert)
    except ConfigError as exc:
        return str(exc)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = client.wrap_bio(c_in, c_out, server_hostname=host)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    try:
        for _ in range(20):
            done = 0
            for end, out, peer in ((cli, c_out, s_in), (srv, s_out, c_in)):
                try:
                    end.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
                data = out.read()
                if data:
                    peer.write(data)
            if done == 2:
                return None
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or exc.reason or exc)
    except ssl.SSLError as exc:
        return str(exc.reason or exc)
    return "the TLS handshake did not complete"


__all__ = ["CA_ENV", "check_server_files", "client_verify", "connect_error", "speaks_tls", "self_check"]
