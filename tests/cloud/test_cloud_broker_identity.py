"""Issue 13, finding 4: with the configuration `cloud broker-config` writes, a device can only ever be its own
client id (a real mosquitto, password and certificate setups): dev-1's credentials with client id ``d2`` do not
disconnect the real d2. And what the broker does with a subscription outside a device's own topics."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import MOSQUITTO, free_port, wait_for
from helpers import mqtt
from test_cloud_broker_config import _passwords, _pki, _wait_port

from edgefleet.cloud_sync.broker import BrokerConfig, write_broker_config
from edgefleet.cloud_sync.wire import protocol as P

pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed")
ROOT = "root" if os.geteuid() == 0 else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared test PKI plus a certificate for d2 (signed by the same CA, whose key _pki saves as other_key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("pki_identity")
    out = _pki(d)
    ca_key = serialization.load_pem_private_key(out["other_key"].read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(out["ca"].read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    k = ec.generate_private_key(ec.SECP256R1())
    crt = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d2")]))
           .issuer_name(ca.subject).public_key(k.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    out["d2_cert"], out["d2_key"] = d / "d2.pem", d / "d2.key"
    out["d2_cert"].write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    out["d2_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return out


@pytest.fixture
def broker(tmp_path: Path, pki: dict[str, Path]) -> Iterator[Any]:
    """Start a mosquitto from `write_broker_config(...)`; yields a function taking the BrokerConfig options."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**kw: Any) -> str:
        port = free_port()
        files = write_broker_config(BrokerConfig(
            tmp_path / f"broker{len(procs)}", port=port, bind="127.0.0.1", tls_cert=str(pki["cert"]),
            tls_key=str(pki["key"]), cafile=str(pki["ca"]), fleet="f1", coordinators=("coord",), run_as=ROOT,
            **kw))
        proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(proc)
        _wait_port(port, proc)
        return f"mqtts://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def _impostor(url: str, ca: str, **auth: Any) -> Any:
    """A raw paho client (no reconnect) claiming client id d2 with someone else's credentials."""
    import ssl

    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="d2", protocol=paho.MQTTv5)
    ctx = ssl.create_default_context(cafile=ca)
    if "cert" in auth:
        ctx.load_cert_chain(auth["cert"], auth["key"])
    else:
        c.username_pw_set(auth["username"], auth["password"])
    c.tls_set_context(ctx)
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    host, port = url.removeprefix("mqtts://").split(":")
    c.connect(host, int(port))
    c.loop_start()
    assert done.wait(10)
    return c


def _cannot_kick(url: str, ca: str, real_auth: dict[str, Any], impostor_auth: dict[str, Any]) -> None:
    got: list[bytes] = []
    coord = mqtt(url, "coord", ca_file=ca, **({"username": "coord", "password": "cpw"}
                                                if "username" in real_auth else
                                                {"cert_file": real_auth["coord_cert"],
                                                 "key_file": real_auth["coord_key"]}))
    coord.connect(timeout=10)
    real = mqtt(url, "d2", ca_file=ca, **{k: v for k, v in real_auth.items() if not k.startswith("coord")})
    topic = P.down_topic("f1", "d2", P.Down.DESIRED)
    real.on_message(lambda t, p: got.append(p))
    real.subscribe(P.down_filter("f1", "d2"))
    real.connect(timeout=10)
    try:
        for i in range(5):  # dev-1's credentials, client id d2, again and again
            imp = _impostor(url, ca, **impostor_auth)
            time.sleep(0.3)
            imp.disconnect()
            imp.loop_stop()
            coord.publish_wait(topic, f"m{i}".encode())
        time.sleep(0.5)
        assert real.connects == 1, f"the real d2 was disconnected {real.connects - 1} time(s)"
        wait_for(lambda: len(got) == 5, 10)
        assert real.connected and got == [f"m{i}".encode() for i in range(5)]
    finally:
        real.close()
        coord.close()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_password_device_cannot_disconnect_another(broker: Any, tmp_path: Path, pki: dict[str, Path]) -> None:
    url = broker(password_file=str(_passwords(tmp_path / "passwd", {"coord": "cpw", "d1": "p1", "d2": "p2"})))
    _cannot_kick(url, str(pki["ca"]), {"username": "d2", "password": "p2"}, {"username": "d1", "password": "p1"})


def test_certificate_device_cannot_disconnect_another(broker: Any, pki: dict[str, Path]) -> None:
    url = broker(require_certificate=True)
    _cannot_kick(url, str(pki["ca"]),
                 {"cert_file": str(pki["d2_cert"]), "key_file": str(pki["d2_key"]),
                  "coord_cert": str(pki["coord_cert"]), "coord_key": str(pki["coord_key"])},
                 {"cert": str(pki["d1_cert"]), "key": str(pki["d1_key"])})


def _subscribe_codes(url: str, ca: str, filters: list[str], protocol: int) -> tuple[list[int], list[str]]:
    """Raw paho as d1: the SUBACK reason code of each filter, and the topics then delivered to it."""
    import ssl

    import paho.mqtt.client as paho

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="d1", protocol=protocol)
    c.username_pw_set("d1", "p1")
    c.tls_set_context(ssl.create_default_context(cafile=ca))
    codes: list[int] = []
    seen: list[str] = []
    connected, acked = threading.Event(), threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_subscribe = lambda cl, ud, mid, rcs, props: (codes.extend(int(r.value) for r in rcs), acked.set())
    c.on_message = lambda cl, ud, m: seen.append(m.topic)
    host, port = url.removeprefix("mqtts://").split(":")
    c.connect(host, int(port))
    c.loop_start()
    try:
        assert connected.wait(10)
        c.subscribe([(f, 1) for f in filters])
        assert acked.wait(10)
        coord = mqtt(url, "coord", ca_file=ca, username="coord", password="cpw")
        coord.connect(timeout=10)
        for dev in ("d1", "d2"):
            coord.publish_wait(P.down_topic("f1", dev, P.Down.DESIRED), b"x")
        coord.close()
        time.sleep(0.5)
    finally:
        c.disconnect()
        c.loop_stop()
    return codes, seen


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd is not installed")
def test_subscriptions_outside_own_topics_get_nothing(broker: Any, tmp_path: Path, pki: dict[str, Path]) -> None:
    """What mosquitto does (measured, 2.0.11) when d1 subscribes outside its own topics: with an ``acl_file`` the
    SUBACK GRANTS every filter (reason code 1 = QoS 1, MQTT 5 and 3.1.1 alike: the acl_file never refuses a
    subscription, eclipse-mosquitto/mosquitto#2042; a failure SUBACK needs the dynamic-security plugin), and the
    ACL filters on delivery: no message of d2 reaches d1 under any filter, d1's own still do. A newer broker that
    refuses them (0x80 / 0x87) passes too: what must hold is that nothing of another device is delivered."""
    import paho.mqtt.client as paho

    url = broker(password_file=str(_passwords(tmp_path / "passwd", {"coord": "cpw", "d1": "p1", "d2": "p2"})))
    own = P.down_filter("f1", "d1")
    foreign = [P.down_filter("f1", "d2"), f"{P.PREFIX}/f1/devices/+/down/#", f"{P.PREFIX}/f1/#",
               f"{P.PREFIX}/f1/devices/d2/up/#", "#"]
    for proto in (paho.MQTTv5, paho.MQTTv311):
        codes, seen = _subscribe_codes(url, str(pki["ca"]), [own, *foreign], proto)
        assert codes[0] == 1
        assert all(c in (1, 0x80, 0x87) for c in codes[1:]), codes
        assert P.down_topic("f1", "d1", P.Down.DESIRED) in seen
        assert not [t for t in seen if "/d2/" in t], seen
