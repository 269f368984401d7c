"""TLS for the coordinator's HTTP API (issue 13): ``cloud serve --tls-cert/--tls-key``, clients that always verify
(``--ca-cert`` / ``EDGEFLEET_CA_CERT``), named one-line errors with the CLI's exit code, runs started on drift that
call the API back over https with the CA. The PKI (a CA, server certificates for 127.0.0.1 and for another host,
an unrelated CA) is generated at test time; the API is the real one, served by uvicorn."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest
from conftest import free_port
from helpers import serve_api, stop_process

from edgefleet.cloud_sync.coordinator.registry import Registry
from edgefleet.cloud_sync.coordinator.service import Coordinator
from edgefleet.cloud_sync.transport import MemoryBroker, MemoryTransport
from edgefleet.errors import ConfigError, SyncError

BOOT = "tls-admin-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # server certificate for 127.0.0.1 (IP SAN) and localhost, signed by ca
    key: Path
    other_cert: Path  # signed by ca, for coord.example.com only
    other_key: Path
    rogue_ca: Path  # an unrelated CA
    rogue_cert: Path  # 127.0.0.1, signed by rogue_ca
    rogue_key: Path
    encrypted_key: Path  # cert's key, encrypted


def _pem_key(key: Any, password: bytes | None = None) -> bytes:
    from cryptography.hazmat.primitives import serialization

    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _make_pki(root: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn)).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(issuer: tuple[Any, Any], cn: str, sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer[1].subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()),
                               critical=False)
                .sign(issuer[0], hashes.SHA256()))
        return key, cert

    def write(fname: str, data: bytes) -> Path:
        p = root / fname
        p.write_bytes(data)
        return p

    def cert_pem(c: Any) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    root.mkdir(parents=True, exist_ok=True)
    the_ca, rogue = ca("edgefleet test CA"), ca("rogue CA")
    here = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    server = leaf(the_ca, "127.0.0.1", here)
    other = leaf(the_ca, "coord.example.com", [x509.DNSName("coord.example.com")])
    fake = leaf(rogue, "127.0.0.1", here)
    return Pki(ca=write("ca.pem", cert_pem(the_ca[1])), cert=write("server.pem", cert_pem(server[1])),
               key=write("server.key", _pem_key(server[0])), other_cert=write("other.pem", cert_pem(other[1])),
               other_key=write("other.key", _pem_key(other[0])), rogue_ca=write("rogue-ca.pem", cert_pem(rogue[1])),
               rogue_cert=write("rogue.pem", cert_pem(fake[1])), rogue_key=write("rogue.key", _pem_key(fake[0])),
               encrypted_key=write("server-enc.key", _pem_key(server[0], b"passphrase")))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def coord(tmp_path: Path) -> Iterator[Coordinator]:
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    c = Coordinator(reg, MemoryTransport(MemoryBroker(), "coord"), "f")
    c.transport.connect()  # connected to its (in-memory) broker: fleet devices exits 14 while it is not
    yield c
    reg.close()


@pytest.fixture()
def tls_api(coord: Coordinator, pki: Pki) -> Iterator[str]:
    with serve_api(coord, BOOT, ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key)) as url:
        yield url


@pytest.fixture()
def operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's environment: the admin token, no CA, no API."""
    monkeypatch.setenv("EDGEFLEET_TOKEN", BOOT)
    for var in ("EDGEFLEET_CA_CERT", "EDGEFLEET_API", "EDGEFLEET_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgefleet: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_fleet_devices_over_https_with_the_ca(tls_api: str, coord: Coordinator, pki: Pki, operator_env: None,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    coord.provision({"press-7": "line-1"})
    assert tls_api.startswith("https://127.0.0.1:")
    capsys.readouterr()

    assert cli_main(["fleet", "devices", "--api", tls_api, "--ca-cert", str(pki.ca), "--json"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["press-7"]
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(pki.ca))  # the same from the environment
    monkeypatch.setenv("EDGEFLEET_API", tls_api)
    assert cli_main(["fleet", "assign", "press-8", "--group", "line-1", "--json"]) == 0
    assert coord.registry.device("f", "press-8").group == "line-1"


def test_without_the_ca_the_certificate_is_refused_with_a_named_error(tls_api: str, pki: Pki) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFLEET_CA_CERT", "EDGEFLEET_API")}
    env["EDGEFLEET_TOKEN"] = BOOT
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "fleet", "devices", "--api", tls_api],
                          env=env, capture_output=True, text=True, timeout=120)
    line = _one_error_line(proc.stderr)
    assert proc.returncode == SyncError.exit_code, proc.stderr
    assert "does not verify" in line and "--ca-cert" in line and tls_api in line
    assert proc.stdout == ""


def test_a_certificate_of_another_ca_is_refused(coord: Coordinator, pki: Pki, operator_env: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    # an impostor with a certificate for the right address, from a CA the client does not trust
    with serve_api(coord, BOOT, ssl_certfile=str(pki.rogue_cert), ssl_keyfile=str(pki.rogue_key)) as url:
        capsys.readouterr()
        assert cli_main(["fleet", "devices", "--api", url, "--ca-cert", str(pki.ca)]) == SyncError.exit_code
    assert "does not verify" in _one_error_line(capsys.readouterr().err)


def test_a_certificate_for_another_host_is_refused(coord: Coordinator, pki: Pki, operator_env: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    with serve_api(coord, BOOT, ssl_certfile=str(pki.other_cert), ssl_keyfile=str(pki.other_key)) as url:
        capsys.readouterr()
        assert cli_main(["fleet", "devices", "--api", url, "--ca-cert", str(pki.ca)]) == SyncError.exit_code
    line = _one_error_line(capsys.readouterr().err)
    assert "not valid for 127.0.0.1" in line


def test_an_http_client_of_the_https_api_gets_a_named_error(tls_api: str, pki: Pki, operator_env: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main
    from edgefleet.cloud_sync.coordinator.client import api_call

    plain = tls_api.replace("https://", "http://")
    capsys.readouterr()
    assert cli_main(["fleet", "devices", "--api", plain, "--ca-cert", str(pki.ca)]) == ConfigError.exit_code
    line = _one_error_line(capsys.readouterr().err)
    assert f"serves https: use {tls_api}" in line
    with pytest.raises(ConfigError, match="serves https"):  # the run records and deploy_bundle use this too
        api_call(plain, BOOT, "GET", "/v1/devices")


def test_an_https_client_of_an_http_api_gets_a_named_error(coord: Coordinator, pki: Pki, operator_env: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    with serve_api(coord, BOOT) as url:
        capsys.readouterr()
        code = cli_main(["fleet", "devices", "--api", url.replace("http://", "https://"), "--ca-cert", str(pki.ca)])
    assert code == ConfigError.exit_code
    assert "served without TLS" in _one_error_line(capsys.readouterr().err)


def test_an_unreadable_ca_file_is_a_config_error(tls_api: str, pki: Pki, tmp_path: Path, operator_env: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for ca in (tmp_path / "missing.pem", tmp_path / "junk.pem"):
        capsys.readouterr()
        assert cli_main(["fleet", "devices", "--api", tls_api, "--ca-cert", str(ca)]) == ConfigError.exit_code
        assert f"--ca-cert {ca}" in _one_error_line(capsys.readouterr().err)


def _serve_cmd(tmp_path: Path, *extra: str, broker: str = "mqtt://127.0.0.1:1", port: int = 0) -> list[str]:
    return ["cloud", "serve", "--broker", broker, "--fleet", "f", "--db", f"sqlite:///{tmp_path / 'serve.db'}",
            "--api-port", str(port or free_port()), "--federated-dir", str(tmp_path / "fed"), *extra]


@pytest.mark.parametrize("case", ["cert-only", "key-only", "missing", "directory", "garbage", "mismatched",
                                  "encrypted", "api-url-scheme"])
def test_bad_tls_files_are_refused_before_anything_starts(case: str, pki: Pki, tmp_path: Path, operator_env: None,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main as cli_main

    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cert, key = str(pki.cert), str(pki.key)
    args = {"cert-only": ["--tls-cert", cert], "key-only": ["--tls-key", key],
            "missing": ["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key],
            "directory": ["--tls-cert", cert, "--tls-key", str(tmp_path)],
            "garbage": ["--tls-cert", str(tmp_path / "garbage.pem"), "--tls-key", key],
            "mismatched": ["--tls-cert", cert, "--tls-key", str(pki.other_key)],
            "encrypted": ["--tls-cert", cert, "--tls-key", str(pki.encrypted_key)],
            "api-url-scheme": ["--tls-cert", cert, "--tls-key", key, "--api-url", "http://127.0.0.1:8080"]}[case]
    expect = {"cert-only": "go together", "key-only": "go together", "missing": "nope.pem: cannot read it",
              "directory": "cannot read it", "garbage": "not a PEM certificate", "mismatched": "is not the private key",
              "encrypted": "is encrypted", "api-url-scheme": "must be https://"}[case]
    capsys.readouterr()

    code = cli_main(_serve_cmd(tmp_path, *args))

    assert code == ConfigError.exit_code
    assert expect in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "serve.db").exists() and not (tmp_path / "fed").exists()  # nothing started


def test_bad_tls_files_exit_code_of_the_process(pki: Pki, tmp_path: Path) -> None:
    env = dict(os.environ, EDGEFLEET_TOKEN=BOOT)
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli",
                           *_serve_cmd(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(pki.other_key))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == ConfigError.exit_code
    assert "is not the private key" in _one_error_line(proc.stderr)


def test_cloud_serve_over_tls(broker: Any, pki: Pki, tmp_path: Path, operator_env: None,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """The real ``cloud serve`` with --tls-cert/--tls-key: its start line says https, clients with the CA work,
    the https URL runs on drift would call back verifies against --tls-ca (no warning)."""
    from edgefleet.cli import main as cli_main

    port = free_port()
    cmd = [sys.executable, "-m", "edgefleet.cli",
           *_serve_cmd(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca", str(pki.ca),
                       broker=broker.url, port=port)]
    proc = subprocess.Popen(cmd, env=dict(os.environ, EDGEFLEET_TOKEN=BOOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/healthz", verify=ctx, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, "".join(lines)
        capsys.readouterr()
        assert cli_main(["fleet", "devices", "--api", url, "--ca-cert", str(pki.ca), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert cli_main(["fleet", "devices", "--api", url]) == SyncError.exit_code  # no CA: refused
        assert cli_main(["fleet", "devices", "--api", f"http://127.0.0.1:{port}"]) == ConfigError.exit_code
    finally:
        stop_process(proc)
    out = "".join(lines)
    assert f"API https://127.0.0.1:{port}" in out, out
    assert "warning" not in out and "Traceback" not in out, out


def test_self_check_tells_whether_runs_will_verify_the_api(pki: Pki) -> None:
    from edgefleet.cloud_sync.api_tls import check_server_files, self_check

    good = check_server_files(str(pki.cert), str(pki.key))
    other = check_server_files(str(pki.other_cert), str(pki.other_key))
    assert good is not None and other is not None
    assert self_check(good, "https://127.0.0.1:8443", str(pki.ca)) is None
    assert self_check(good, "https://localhost:8443", str(pki.ca)) is None
    assert "mismatch" in str(self_check(other, "https://127.0.0.1:8443", str(pki.ca)))
    assert self_check(other, "https://coord.example.com:8443", str(pki.ca)) is None
    assert self_check(good, "https://127.0.0.1:8443", str(pki.rogue_ca))  # another CA: not None


def test_drift_started_runs_call_back_over_https_with_the_ca(tls_api: str, coord: Coordinator, pki: Pki,
                                                             tmp_path: Path, operator_env: None) -> None:
    """A run started on drift gets the https URL and the CA (on its command line: not a secret) and records itself
    through the API with them; the CA is a reserved run option."""
    from edgefleet.cloud_sync.federated.autorun import RetrainSettings, start_for_coordinator

    probe = tmp_path / "probe.py"
    probe.write_text(f"#!{sys.executable}\n" + """
import json, os, sys
a = sys.argv
get = lambda opt: a[a.index(opt) + 1] if opt in a else None
from edgefleet.cloud_sync.federated.records import RunRecord
res = {"argv": a}
try:
    RunRecord.open(get("--api"), None, group="g", strategy="fedavg", rounds=1, run_id=get("--record-id"),
                   ca_cert=get("--ca-cert"))
    res["recorded"] = True
except Exception as exc:
    res["recorded"] = str(exc)
json.dump(res, open(os.path.join(get("--out"), "probe.json"), "w"))
""")
    probe.chmod(0o755)
    args = SimpleNamespace(superlink_port=0, api_host="0.0.0.0", api_port=1, api_url=tls_api, tls_ca=str(pki.ca),
                           federated_dir=str(tmp_path / "runs"))
    auto = start_for_coordinator(args, coord)
    auto.python = str(probe)
    coord.registry.set_retrain("f", "g", True, {"min_devices": 1, "cooldown_s": 0, "rounds": 1})
    try:
        run_id = auto.on_drift("d1", "g", {"psi_max": 0.9, "version": "1"})
        assert run_id is not None
        deadline = time.monotonic() + 60
        while auto.children and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        auto.stop()
    res = json.loads((tmp_path / "runs" / run_id / "probe.json").read_text())
    argv = res["argv"]
    assert argv[argv.index("--api") + 1] == tls_api and argv[argv.index("--ca-cert") + 1] == str(pki.ca)
    assert res["recorded"] is True, res
    assert ("fedrun-" + run_id, "PATCH", f"/v1/federated/runs/{run_id}", 200) in [  # the run's own call, over https
        (e.who, e.method, e.path, e.status) for e in coord.registry.audit("f")]
    with pytest.raises(ConfigError, match="--ca-cert is set by the trigger itself"):
        RetrainSettings("g", args=("--ca-cert", "/tmp/attacker-ca.pem"))
