"""The shipped Mosquitto configuration: a real mosquitto starts with it, TLS works, anonymous clients and
devices acting for each other are refused; bad input gets a clear error."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MOSQUITTO, free_port, wait_for
from helpers import mqtt

from edgefleet.cloud_sync.broker import BrokerConfig, write_broker_config
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.errors import ConfigError

pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed")


def _pki(d: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test CA")])
    ca = cert("edgefleet test CA", ca_key, ca_name, ca_key, True)
    srv = cert("127.0.0.1", srv_key, ca_name, ca_key, False)
    pem = serialization.Encoding.PEM
    out = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key", "other_key": d / "other.key"}
    out["ca"].write_bytes(ca.public_bytes(pem))
    out["cert"].write_bytes(srv.public_bytes(pem))
    keys = [("key", srv_key), ("other_key", ca_key)]
    for device in ("d1", "coord"):  # client certificates: CN = MQTT username
        k = ec.generate_private_key(ec.SECP256R1())
        out[f"{device}_cert"], out[f"{device}_key"] = d / f"{device}.pem", d / f"{device}.key"
        out[f"{device}_cert"].write_bytes(cert(device, k, ca_name, ca_key, False).public_bytes(pem))
        keys.append((f"{device}_key", k))
    for name, k in keys:
        out[name].write_bytes(k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _pki(tmp_path_factory.mktemp("pki"))


def _passwords(path: Path, users: dict[str, str]) -> Path:
    path.write_text("")
    for u, p in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), u, p], check=True, capture_output=True)
    return path


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_generated_config_runs_tls_auth_and_acl(tmp_path: Path, pki: dict[str, Path]) -> None:
    users = {"coord": "cpw", "d1": "p1", "d2": "p2"}
    port = free_port()
    files = write_broker_config(BrokerConfig(
        tmp_path / "broker", port=port, bind="127.0.0.1", tls_cert=str(pki["cert"]), tls_key=str(pki["key"]),
        cafile=str(pki["ca"]), fleet="f1", coordinators=("coord",),
        password_file=str(_passwords(tmp_path / "passwd", users)), max_devices=2000,
        run_as="root" if os.geteuid() == 0 else None))
    text = files.conf.read_text()
    for line in ("per_listener_settings true", "allow_anonymous false", "max_queued_messages 100000",
                 "persistence true", f"acl_file {files.acl}", f"listener {port} 127.0.0.1"):
        assert line in text.splitlines()
    assert "silently drops" in text.lower()
    proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        url = f"mqtts://127.0.0.1:{port}"
        # anonymous: refused (the TLS handshake succeeds, the CONNECT does not)
        anon = mqtt(url, "anon", ca_file=str(pki["ca"]))
        with pytest.raises(Exception, match="could not connect"):
            anon.connect(timeout=2)
        anon.close()
        # a client that does not trust the broker's CA never gets as far as MQTT
        with pytest.raises(ssl.SSLError):
            ctx = ssl.create_default_context()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
        seen: list[str] = []
        coord = mqtt(url, "coord", username="coord", password="cpw", ca_file=str(pki["ca"]))
        coord.on_message(lambda t, p: seen.append(t))
        coord.subscribe(P.up_filter("f1", None))
        coord.connect(timeout=10)
        d1 = mqtt(url, "d1", username="d1", password="p1", ca_file=str(pki["ca"]))
        d1.connect(timeout=10)
        d1.publish_wait(P.up_topic("f1", "d2", P.Up.STATUS), P.Status("d2", True, 9).to_bytes())  # denied
        time.sleep(0.3)  # paho drops the connection on the "not authorized" PUBACK; it reconnects
        wait_for(lambda: d1.connected, 10)
        d1.publish_wait(P.up_topic("f1", "d1", P.Up.STATUS), P.Status("d1", True, 1).to_bytes())
        wait_for(lambda: P.up_topic("f1", "d1", P.Up.STATUS) in seen, 10)
        time.sleep(0.3)
        assert P.up_topic("f1", "d2", P.Up.STATUS) not in seen
        d1.close()
        coord.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    log = err.decode(errors="replace")
    assert "disconnected, not authorised" in log  # the broker itself refused the anonymous client
    assert "unknown ca" in log  # and the client that did not trust its certificate


def test_client_certificates_are_the_identity(tmp_path: Path, pki: dict[str, Path]) -> None:
    """--require-certificate: no certificate, no connection; the certificate's CN is the username the ACL uses."""
    port = free_port()
    files = write_broker_config(BrokerConfig(
        tmp_path / "broker", port=port, bind="127.0.0.1", tls_cert=str(pki["cert"]), tls_key=str(pki["key"]),
        cafile=str(pki["ca"]), require_certificate=True, fleet="f1", coordinators=("coord",),
        run_as="root" if os.geteuid() == 0 else None))
    assert "use_identity_as_username true" in files.conf.read_text().splitlines()
    proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        url = f"mqtts://127.0.0.1:{port}"
        bare = mqtt(url, "d1", ca_file=str(pki["ca"]))  # trusts the broker but brings no certificate
        with pytest.raises(Exception, match="could not connect"):
            bare.connect(timeout=2)
        bare.close()
        seen: list[str] = []
        coord = mqtt(url, "coord", ca_file=str(pki["ca"]), cert_file=str(pki["coord_cert"]),
                     key_file=str(pki["coord_key"]))
        coord.on_message(lambda t, p: seen.append(t))
        coord.subscribe(P.up_filter("f1", None))
        coord.connect(timeout=10)
        d1 = mqtt(url, "d1", ca_file=str(pki["ca"]), cert_file=str(pki["d1_cert"]), key_file=str(pki["d1_key"]))
        d1.connect(timeout=10)
        d1.publish_wait(P.up_topic("f1", "d2", P.Up.STATUS), P.Status("d2", True, 9).to_bytes())  # not its id
        time.sleep(0.3)
        wait_for(lambda: d1.connected, 10)
        d1.publish_wait(P.up_topic("f1", "d1", P.Up.STATUS), P.Status("d1", True, 1).to_bytes())
        wait_for(lambda: P.up_topic("f1", "d1", P.Up.STATUS) in seen, 10)
        time.sleep(0.3)
        assert P.up_topic("f1", "d2", P.Up.STATUS) not in seen
        d1.close()
        coord.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("mosquitto did not listen")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tls_cert": "missing.pem", "tls_key": "k"}, "--tls-cert missing.pem: no such file"),
    ({}, "needs --tls-cert and --tls-key"),
    ({"tls_cert": "{cert}", "tls_key": "{other_key}"}, "does not belong to the certificate"),
    ({"tls_cert": "{key}", "tls_key": "{key}"}, "is not a PEM certificate"),
    ({"tls_cert": "{cert}", "tls_key": "{key}", "require_certificate": True}, "needs --cafile"),
    ({"tls_cert": "{cert}", "tls_key": "{key}", "password_file": None}, "no way for clients to authenticate"),
    ({"tls_cert": "{cert}", "tls_key": "{key}", "fleet": None}, "an ACL is required"),
    ({"insecure": True, "tls_cert": "{cert}"}, "--insecure writes a listener without TLS"),
    ({"port": 0}, "is not a TCP port"),
    # anonymous and plain without an ACL: only a loopback test bench may do without one
    ({"insecure": True, "allow_anonymous": True, "fleet": None, "password_file": None}, "an ACL is required"),
    ({"insecure": True, "allow_anonymous": True, "fleet": None, "bind": "0.0.0.0"}, "an ACL is required"),
    ({"queue_limit": -1}, "queue limit -1"),
])
def test_bad_input_is_named(tmp_path: Path, pki: dict[str, Path], kwargs: dict[str, Any], message: str) -> None:
    pw = tmp_path / "passwd"
    pw.write_text("")
    base: dict[str, Any] = {"fleet": "f1", "password_file": str(pw)}
    for k, v in kwargs.items():
        base[k] = v.format(**{n: str(p) for n, p in pki.items()}) if isinstance(v, str) and "{" in v else v
    with pytest.raises(ConfigError, match=message):
        write_broker_config(BrokerConfig(tmp_path / "out", **base))
    assert not (tmp_path / "out" / "mosquitto.conf").exists()


def test_cli_writes_the_config(tmp_path: Path, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from edgefleet.cli import main

    acl = tmp_path / "my.acl"
    acl.write_text("user coord\ntopic readwrite edgefleet/v1/f1/#\n")
    pw = tmp_path / "passwd"
    pw.write_text("")
    rc = main(["cloud", "broker-config", "--out", str(tmp_path / "b"), "--tls-cert", str(pki["cert"]),
               "--tls-key", str(pki["key"]), "--cafile", str(pki["ca"]), "--acl", str(acl),
               "--password-file", str(pw), "--max-devices", "10"])
    assert rc == 0
    text = (tmp_path / "b" / "mosquitto.conf").read_text()
    assert f"acl_file {acl.resolve()}" in text and "max_queued_messages 1000" in text and "listener 8883" in text
    assert str(tmp_path / "b" / "mosquitto.conf") in capsys.readouterr().out
    rc = main(["cloud", "broker-config", "--out", str(tmp_path / "c"), "--acl", str(acl)])
    assert rc != 0
    assert "--tls-cert" in capsys.readouterr().err


def test_every_broker_we_start_is_configured_by_the_one_writer(tmp_path: Path) -> None:
    """The test benches, the demo and the benchmarks start Mosquitto through ``LocalBroker``/``local_config``,
    which write with ``write_broker_config``: a plain loopback listener, no ACL, no queue limit unless asked,
    persistence when asked. The broker starts, takes a retained message, and keeps it across a kill -9."""
    import paho.mqtt.client as mqtt

    from edgefleet.cloud_sync.broker import LocalBroker, local_config

    text = local_config(tmp_path / "bench", 1883, queue_limit=1000).conf.read_text()
    assert "listener 1883 127.0.0.1" in text and "max_queued_messages 1000" in text
    assert "persistence false" in text and "acl_file" not in text and "allow_anonymous true" in text
    assert "use_username_as_clientid" not in text  # anonymous clients have no username
    b = LocalBroker(tmp_path / "persist", persistence=True)
    assert "max_queued_messages 0" in b.conf.read_text() and "persistence true" in b.conf.read_text()
    with b:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        c.publish("t/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        time.sleep(1.5)  # autosave_interval 1
        b.kill()
        b.start()
        got: list[bytes] = []
        r = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub", protocol=mqtt.MQTTv5)
        r.on_message = lambda cl, u, m: got.append(m.payload)
        r.connect("127.0.0.1", b.port)
        r.subscribe("t/#", qos=1)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            r.loop(0.1)
        r.disconnect()
    assert got == [b"kept"]
