"""Bundles over HTTP(S) from an origin (issue 16): the coordinator publishes content-addressed files to a directory a
real nginx serves (started on a free loopback port, like mosquitto), install jobs carry URL, length and sha256, and
real agents download with Range requests, resume after a cut, verify, and fall back to MQTT chunks when the origin
is down or serves something else. Until now every byte of every bundle went through the broker and the coordinator:
with an origin, MQTT carries the control messages only."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import wait_for
from helpers import coordinator, device, free_port

from edgefleet.cloud_sync.coordinator.rollout import RolloutPlan
from edgefleet.cloud_sync.device import machine as M
from edgefleet.cloud_sync.device.fetch import Download, fetch
from edgefleet.cloud_sync.origin import DirectoryOrigin, LocalNginx, S3Origin, make_origin
from edgefleet.cloud_sync.wire import protocol as P
from edgefleet.cloud_sync.wire.transfer import file_info
from edgefleet.errors import ConfigError, MissingDependencyError, ProtocolError

ALL = RolloutPlan(0.0, (1.0,), 0.0)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture()
def make_nginx(tmp_path: Path) -> Iterator[Callable[..., LocalNginx]]:
    """Real nginx processes serving ``tmp_path/origin`` (each its own config, pid, logs and temp paths)."""
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed (scripts/setup.sh installs it)")
    made: list[LocalNginx] = []

    def make(**kw: Any) -> LocalNginx:
        n = LocalNginx(tmp_path / f"nginx{len(made)}", tmp_path / "origin", binary=NGINX, **kw).start()
        made.append(n)
        return n

    yield make
    for n in made:
        n.stop()


def _hits(nginx: LocalNginx, file_id: str) -> list[tuple[int, str, int, str]]:
    return [a for a in nginx.access() if a[3] == "/" + file_id]


# -- the wire: a file's URL ------------------------------------------------------------------------------------------
def test_install_job_carries_url_length_and_sha256() -> None:
    data = b"x" * 5000
    info = dataclasses.replace(file_info(data, 1024), url="https://cdn.example/bundles/" + "a" * 64)
    d = P.Desired("j1", "install", "dep", "2", info, ts=1.0)
    back = P.Desired.parse(d.to_bytes())
    assert back.file == info and back.file.url.startswith("https://cdn.example/") and back.file.size == 5000
    # without an origin the message is byte for byte what it was before URLs existed
    plain = P.Desired("j1", "install", "dep", "2", file_info(data, 1024), ts=1.0)
    assert b"url" not in plain.to_bytes()
    for bad in ("ftp://cdn.example/x", "https://cdn.example/a b", "https://" + "a" * 3000, "javascript:alert(1)"):
        with pytest.raises(ProtocolError):
            P.FileInfo(info.file_id, info.size, 1024, bad)
        raw = d.to_dict()
        raw["file"]["url"] = bad
        with pytest.raises(ProtocolError):
            P.Desired.from_dict(raw)


# -- the device's decisions (pure machine) ---------------------------------------------------------------------------
class _Device:
    def __init__(self, base: str | None = None) -> None:
        self.base = base

    def active_version(self) -> str:
        return "1"

    def previous_version(self) -> str | None:
        return None

    def delta_base(self) -> str | None:
        return self.base

    def check_before_download(self, desired: P.Desired) -> Path | None:
        return None

    def check_order(self, desired: P.Desired) -> tuple[Any, bool]:
        return None, False


DATA = bytes(range(256)) * 40
INFO = dataclasses.replace(file_info(DATA, 1024), url="http://origin.test/" + hashlib.sha256(DATA).hexdigest())


def _of(actions: list[Any], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_machine_fetches_from_the_origin_and_falls_back_to_chunks_with_the_reason() -> None:
    m = M.DeviceMachine(_Device(), max_bundle_bytes=1 << 20, window=4, fetch=True)
    out = m.handle(M.DesiredIn(P.Desired("j1", "install", "dep", "2", INFO)))
    assert [f.info for f in _of(out, M.Fetch)] == [INFO]
    assert not _of(out, M.OpenFile) and not _of(out, M.RequestChunks)  # not a byte over MQTT
    assert m.handle(M.Fetched("other-job", INFO.file_id, True)) == []  # a stale answer changes nothing
    out = m.handle(M.Fetched("j1", INFO.file_id, False, "origin_sha256_mismatch", "tampered", received=10240))
    reps = [a.update for a in _of(out, M.Report)]
    assert [(u.status, u.reason) for u in reps] == [("DOWNLOADING", "origin_sha256_mismatch")]
    assert "MQTT chunks" in reps[0].message
    assert _of(out, M.DiscardFile) and [o.info for o in _of(out, M.OpenFile)] == [INFO]
    assert not _of(out, M.Fetch)  # the same file, in chunks now
    out = m.handle(M.Opened())
    assert _of(out, M.RequestChunks)
    assert m.stats["origin_fallbacks"] == 1 and m.stats["http_bytes"] == 10240 and m.stats["http_files"] == 0

    # fetched and verified: installed from the downloaded file
    m = M.DeviceMachine(_Device(), max_bundle_bytes=1 << 20, window=4, fetch=True)
    m.handle(M.DesiredIn(P.Desired("j2", "install", "dep", "2", INFO)))
    out = m.handle(M.Fetched("j2", INFO.file_id, True, received=len(DATA), resumes=1))
    assert _of(out, M.PrepareInstall) == [M.PrepareInstall(INFO, False, over_http=True)]
    assert m.stats["http_files"] == 1 and m.stats["http_resumes"] == 1

    # a canceled job stops its download (DiscardFile); a driver that cannot fetch gets chunks
    out = m.handle(M.DesiredIn(P.Desired("j3", "install", "dep", "3", INFO)))
    out = m.handle(M.DesiredIn(P.Desired("j3", "none", "dep")))
    assert [(a.update.status, a.update.reason) for a in _of(out, M.Report)] == [("CANCELED", "canceled")]
    assert _of(out, M.DiscardFile)
    plain = M.DeviceMachine(_Device(), max_bundle_bytes=1 << 20, window=4)
    out = plain.handle(M.DesiredIn(P.Desired("j4", "install", "dep", "2", INFO)))
    assert _of(out, M.OpenFile) and not _of(out, M.Fetch)


def test_machine_fetches_a_delta_from_the_origin() -> None:
    base = "b" * 64
    delta = dataclasses.replace(file_info(b"patch" * 100, 1024), url="http://origin.test/" + "d" * 64)
    m = M.DeviceMachine(_Device(base=base), max_bundle_bytes=1 << 20, window=4, fetch=True)
    out = m.handle(M.DesiredIn(P.Desired("j1", "install", "dep", "2", INFO, delta, base)))
    assert [f.info for f in _of(out, M.Fetch)] == [delta]
    out = m.handle(M.Fetched("j1", delta.file_id, True))
    assert _of(out, M.PrepareInstall) == [M.PrepareInstall(INFO, True, over_http=True)]
    out = m.handle(M.DeltaFailed("does not apply"))  # then the full file, from the origin again
    assert [f.info for f in _of(out, M.Fetch)] == [INFO]


# -- the download against a real nginx -----------------------------------------------------------------------------
def _publish(tmp_path: Path, data: bytes) -> tuple[DirectoryOrigin, str]:
    return DirectoryOrigin(tmp_path / "origin", "http://127.0.0.1:1/"), hashlib.sha256(data).hexdigest()


def test_download_resumes_with_a_range_request_after_nginx_is_killed(tmp_path: Path,
                                                                    make_nginx: Callable[..., LocalNginx]) -> None:
    data = os.urandom(600_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    nginx = make_nginx(limit_rate=200_000)  # a throttled origin: about 3 s for the file
    dest = tmp_path / "dl" / "file.http"
    dl = Download(nginx.url + sha, dest, len(data), sha, read_timeout=5, attempts=20, backoff=0.1, max_backoff=0.3)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(dl.run()))
    t.start()
    wait_for(lambda: dest.exists() and dest.stat().st_size > 150_000, 20, 0.01)
    port = nginx.port
    nginx.kill()  # the download is cut mid-way
    cut = dest.stat().st_size
    time.sleep(0.5)
    nginx.start()
    assert nginx.port == port
    t.join(30)
    res = result[0]
    assert res.ok, res
    assert dest.read_bytes() == data
    assert res.resumes >= 1 and res.received == len(data)  # nothing downloaded twice
    resumed = [a for a in _hits(nginx, sha) if a[0] == 206]
    assert resumed and all(r[1].startswith("bytes=") and int(r[1][6:-1]) >= cut - 65536 for r in resumed)
    assert sum(r[2] for r in resumed) == len(data) - int(resumed[0][1][6:-1])


def test_download_refuses_a_longer_or_tampered_file_and_times_out_a_stalled_read(
        tmp_path: Path, make_nginx: Callable[..., LocalNginx]) -> None:
    data = os.urandom(100_000)
    origin, sha = _publish(tmp_path, data)
    nginx = make_nginx()
    dest = tmp_path / "dl.http"
    (tmp_path / "origin" / sha).write_bytes(data + b"more")  # longer than announced: refused before reading
    res = fetch(nginx.url + sha, dest, len(data), sha)
    assert not res.ok and res.reason == "origin_too_long" and res.received == 0
    tampered = bytearray(data)
    tampered[5000] ^= 1
    (tmp_path / "origin" / sha).write_bytes(bytes(tampered))
    res = fetch(nginx.url + sha, dest, len(data), sha)
    assert not res.ok and res.reason == "origin_sha256_mismatch" and not dest.exists()
    res = fetch(nginx.url + "0" * 64, dest, len(data), "0" * 64)
    assert not res.ok and res.reason == "origin_http_error" and "404" in res.message

    # a server that sends headers and a few bytes, then nothing: the read times out, it never hangs
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def stall() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(4096)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + data[:1000])
            held.append(c)

    threading.Thread(target=stall, daemon=True).start()
    t0 = time.monotonic()
    port = srv.getsockname()[1]
    res = fetch(f"http://127.0.0.1:{port}/{sha}", tmp_path / "stall.http", len(data), sha,
                read_timeout=0.5, attempts=2, backoff=0.05)
    assert not res.ok and res.reason == "origin_timeout" and time.monotonic() - t0 < 10
    srv.close()
    for c in held:
        c.close()
    # nothing listening: unreachable, quickly
    res = fetch(f"http://127.0.0.1:{port}/{sha}", dest, len(data), sha, attempts=2, backoff=0.05)
    assert not res.ok and res.reason == "origin_unreachable"


# -- redirects (issue 16): a CDN or an S3-style origin answers 301/302/307/308 with a Location ---------------------
#: nginx locations in front of the real files: one 302, 307 and relative redirects, a 301 -> 301 -> 308 chain (one of
#: its Locations relative), five and six hops, a loop, and a redirect to another scheme
REDIRECTS = "\n".join([
    r"location ~ ^/r302/(.+)$ { return 302 /$1; }",
    r"location ~ ^/r307/(.+)$ { return 307 /$1; }",
    r"location ~ ^/rel/a/(.+)$ { absolute_redirect off; return 302 ../../$1; }",
    r"location ~ ^/chain1/(.+)$ { return 301 /chain2/$1; }",
    r"location ~ ^/chain2/(.+)$ { absolute_redirect off; return 301 /chain3/$1; }",
    r"location ~ ^/chain3/(.+)$ { return 308 /$1; }",
    *[rf"location ~ ^/h{n}/(.+)$ {{ return 302 /{f'h{n - 1}/' if n > 1 else ''}$1; }}" for n in range(1, 7)],
    r"location ~ ^/loop/(.+)$ { return 302 /loop/$1; }",
    r"location ~ ^/ftp/(.+)$ { return 302 ftp://127.0.0.1/$1; }",
])


@pytest.mark.parametrize("path,hops", [("r302/", 1), ("r307/", 1), ("rel/a/", 1), ("chain1/", 3), ("h5/", 5)])
def test_download_follows_redirects(path: str, hops: int, tmp_path: Path,
                                    make_nginx: Callable[..., LocalNginx]) -> None:
    data = os.urandom(300_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    nginx = make_nginx(extra=REDIRECTS)
    res = fetch(nginx.url + path + sha, tmp_path / "dl.http", len(data), sha)
    assert res.ok, res
    assert (tmp_path / "dl.http").read_bytes() == data and res.redirects == hops and res.attempts == hops + 1
    log = nginx.access()
    assert len(log) == hops + 1 and log[-1][0] == 200 and log[-1][3] == "/" + sha, log
    assert all(a[0] in (301, 302, 307, 308) for a in log[:-1])
    if path == "chain1/":
        assert [a[0] for a in log] == [301, 301, 308, 200]


@pytest.mark.parametrize("path,reason,requests", [("h6/", "origin_too_many_redirects", 6),
                                                  ("loop/", "origin_redirect_loop", 1),
                                                  ("ftp/", "origin_redirect_refused", 1)])
def test_a_redirect_loop_too_many_hops_or_another_scheme_is_refused(path: str, reason: str, requests: int,
                                                                    tmp_path: Path,
                                                                    make_nginx: Callable[..., LocalNginx]) -> None:
    data = os.urandom(50_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    nginx = make_nginx(extra=REDIRECTS)
    res = fetch(nginx.url + path + sha, tmp_path / "dl.http", len(data), sha, attempts=3, backoff=0.05)
    assert not res.ok and res.reason == reason, res
    assert res.received == 0 and res.attempts == requests  # refused at once: not retried
    assert not _hits(nginx, sha) and not (tmp_path / "dl.http").exists()


def test_a_resume_after_a_redirect_starts_again_at_the_jobs_url(tmp_path: Path,
                                                               make_nginx: Callable[..., LocalNginx]) -> None:
    """The download is cut after a redirect; the resume asks the job's URL again (with the Range), follows the
    redirect again and continues the file from the bytes on disk with a 206: nothing fetched twice."""
    data = os.urandom(600_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    nginx = make_nginx(limit_rate=200_000, extra=REDIRECTS)
    dest = tmp_path / "dl" / "file.http"
    dl = Download(nginx.url + "r302/" + sha, dest, len(data), sha, read_timeout=5, attempts=20, backoff=0.1,
                  max_backoff=0.3)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(dl.run()))
    t.start()
    wait_for(lambda: dest.exists() and dest.stat().st_size > 150_000, 20, 0.01)
    nginx.kill()
    cut = dest.stat().st_size
    time.sleep(0.5)
    nginx.start()
    t.join(30)
    res = result[0]
    assert res.ok, res
    assert dest.read_bytes() == data and res.resumes >= 1 and res.received == len(data)
    log = nginx.access()  # the killed nginx logged the first redirect, not the transfer it was cut in
    redirected = [a for a in log if a[0] == 302]
    resumed = [a for a in log if a[0] == 206]
    assert all(a[3] == "/r302/" + sha for a in redirected) and redirected[0][1] == "-"  # the first request
    assert resumed and all(a[3] == "/" + sha and int(a[1][6:-1]) >= cut - 65536 for a in resumed)
    # each resume asked the job's URL again, and the same Range went with every hop
    assert [a[1] for a in redirected[1:]] == [a[1] for a in resumed]
    assert res.redirects == len(redirected) and dl.final_url == nginx.url + sha


def test_an_https_origin_redirecting_to_http_is_refused_and_http_to_https_is_followed(
        tmp_path: Path, make_nginx: Callable[..., LocalNginx]) -> None:
    import ssl

    from test_cloud_api_tls import _make_pki

    pki = _make_pki(tmp_path / "pki")
    data = os.urandom(100_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    plain_port, tls_port = free_port(), free_port()
    plain = make_nginx(port=plain_port,
                       extra=rf"location ~ ^/up/(.+)$ {{ return 302 https://127.0.0.1:{tls_port}/$1; }}")
    secure = make_nginx(port=tls_port, tls=(pki.cert, pki.key),
                        extra=rf"location ~ ^/down/(.+)$ {{ return 302 http://127.0.0.1:{plain_port}/$1; }}")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    res = fetch(secure.url + "down/" + sha, tmp_path / "a.http", len(data), sha, ssl_context=ctx, attempts=3,
                backoff=0.05)
    assert not res.ok and res.reason == "origin_redirect_refused" and "https" in res.message, res
    assert res.attempts == 1 and not plain.access()  # never asked over http
    res = fetch(plain.url + "up/" + sha, tmp_path / "b.http", len(data), sha, ssl_context=ctx)  # an upgrade
    assert res.ok and res.redirects == 1 and (tmp_path / "b.http").read_bytes() == data, res
    assert [a[0] for a in secure.access()] == [302, 200] and secure.access()[-1][3] == "/" + sha


def test_origin_configuration_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--origin-url"):
        make_origin(str(tmp_path / "o"), None)
    with pytest.raises(ConfigError, match="--origin-dir"):
        make_origin(None, "https://cdn.example/b/")
    with pytest.raises(ConfigError):
        make_origin(str(tmp_path / "o"), "ftp://cdn.example/b/")
    o = make_origin(str(tmp_path / "o"), "https://cdn.example/b")
    assert isinstance(o, DirectoryOrigin) and o.url_for("a" * 64, lambda: b"x") == "https://cdn.example/b/" + "a" * 64
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="boto3"):
            make_origin(None, "s3://bucket/prefix")
    else:  # pragma: no cover - boto3 is not a dependency of the test environment
        assert isinstance(make_origin(None, "s3://bucket/prefix"), S3Origin)


def test_cloud_serve_refuses_an_origin_it_cannot_use(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    from edgefleet.cli import main as cli_main

    monkeypatch.setenv("EDGEFLEET_TOKEN", "s3cret")
    db = tmp_path / "never.db"
    code = cli_main(["cloud", "serve", "--fleet", "f1", "--db", f"sqlite:///{db}", "--origin-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--origin-url" in err and "Traceback" not in err
    assert not db.exists()  # refused before anything started


# -- real agents, a real mosquitto, a real nginx ------------------------------------------------------------------
def _fleet(broker: Any, tmp_path: Path, make_agent: Any, archive: Path, nginx: LocalNginx | None, n: int = 2,
           base_url: str | None = None, publish_to: str = "origin", **dev_kw: Any) -> tuple[Any, list[Any]]:
    origin = DirectoryOrigin(tmp_path / publish_to, base_url or (nginx.url if nginx else "http://127.0.0.1:9/"))
    coord = coordinator(broker.url, tmp_path / "reg.db", origin=origin, chunk_size=16 * 1024)
    syncs = [device(broker.url, make_agent(f"d{i}", install=archive), tmp_path, **dev_kw) for i in range(n)]
    wait_for(lambda: sum(d.online for d in coord.registry.devices("f1")) == n)
    return coord, syncs


def _stop(coord: Any, syncs: list[Any]) -> None:
    for s in syncs:
        s.stop()
    coord.stop()


def test_rollout_over_http_mqtt_carries_control_messages_only(broker: Any, tmp_path: Path, make_agent: Any,
                                                              big_archives: dict[str, Path],
                                                              make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx()
    coord, syncs = _fleet(broker, tmp_path, make_agent, big_archives["1"], nginx)
    try:
        v2 = big_archives["2"].read_bytes()
        before = [s.transport.received_bytes for s in syncs]
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert all(s.agent.active_version == "2" for s in syncs)
        sha = hashlib.sha256(v2).hexdigest()
        assert (tmp_path / "origin" / sha).read_bytes() == v2  # published content-addressed
        assert coord.counters["chunks_served"] == 0 and coord.counters["origin_errors"] == 0
        mqtt_in = [s.transport.received_bytes - b for s, b in zip(syncs, before)]
        for s, got in zip(syncs, mqtt_in):
            assert s.stats["http_files"] == 1 and s.stats["http_bytes"] == len(v2)
            assert s.stats["chunks_received"] == 0
            assert got < 16_384, got  # the job and a few acks: control only, for a bundle of 1.2 MB
        assert [a[0] for a in _hits(nginx, sha)] == [200] * len(syncs)
        print(f"\nbundle {len(v2)} B; MQTT bytes received per device during the rollout: {mqtt_in}")
    finally:
        _stop(coord, syncs)


def test_delta_is_fetched_from_the_origin(broker: Any, tmp_path: Path, make_agent: Any,
                                          big_archives: dict[str, Path], make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx()
    coord, syncs = _fleet(broker, tmp_path, make_agent, big_archives["1"], nginx, n=1)
    try:
        coord.add_artifact(big_archives["1"].read_bytes())  # what the device runs: the delta base
        v2 = big_archives["2"].read_bytes()
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        s = syncs[0]
        assert s.agent.active_version == "2" and s.stats["delta_used"] == 1 and s.stats["http_files"] == 1
        assert coord.counters["deltas_built"] == 1 and coord.counters["chunks_served"] == 0
        served = [a for a in nginx.access() if a[0] == 200]
        assert len(served) == 1 and served[0][2] == s.stats["http_bytes"] < len(v2) / 5  # the delta, not the bundle
        assert served[0][3] != "/" + hashlib.sha256(v2).hexdigest()
    finally:
        _stop(coord, syncs)


def test_device_resumes_a_cut_download_from_a_throttled_origin(broker: Any, tmp_path: Path, make_agent: Any,
                                                               big_archives: dict[str, Path],
                                                               make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx(limit_rate=300_000)  # about 4 s for the 1.2 MB bundle
    coord, syncs = _fleet(broker, tmp_path, make_agent, big_archives["1"], nginx, n=1, origin_timeout=5,
                          origin_attempts=30)
    s = syncs[0]
    try:
        v2 = big_archives["2"].read_bytes()
        sha = hashlib.sha256(v2).hexdigest()
        part = s.dir / "transfers" / f"{sha}.http"
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: part.exists() and part.stat().st_size > 300_000, 30, 0.01)
        nginx.kill()  # cut mid-download
        time.sleep(0.7)
        nginx.start()
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert s.agent.active_version == "2"
        assert s.stats["http_resumes"] >= 1 and s.stats["http_bytes"] == len(v2)  # no byte fetched twice
        assert s.stats["origin_fallbacks"] == 0 and coord.counters["chunks_served"] == 0
        ranges = [a for a in _hits(nginx, sha) if a[0] == 206]
        assert ranges and int(ranges[0][1].removeprefix("bytes=").rstrip("-")) > 300_000
    finally:
        _stop(coord, syncs)


def test_tampered_origin_file_is_refused_and_the_device_gets_the_file_over_mqtt(
        broker: Any, tmp_path: Path, make_agent: Any, big_archives: dict[str, Path],
        make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx()  # a CDN in front of the coordinator's directory: its copy is not the coordinator's
    coord, syncs = _fleet(broker, tmp_path, make_agent, big_archives["1"], nginx, publish_to="published")
    seen: list[P.JobUpdate] = []
    from helpers import mqtt

    spy = mqtt(broker.url, "spy")
    spy.on_message(lambda t, p: seen.append(P.JobUpdate.parse(p)) if t.endswith("/up/job") else None)
    spy.subscribe(f"{P.PREFIX}/f1/devices/+/up/job", qos=1)
    spy.connect()
    try:
        v2 = big_archives["2"].read_bytes()
        sha = hashlib.sha256(v2).hexdigest()
        bad = bytearray(v2)
        bad[len(bad) // 2] ^= 0xFF
        (tmp_path / "origin" / sha).write_bytes(bytes(bad))  # the CDN serves something else under the name
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: (tmp_path / "published" / sha).exists())
        assert (tmp_path / "published" / sha).read_bytes() == v2  # what the coordinator published is right
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert all(s.agent.active_version == "2" for s in syncs)  # the real bundle, over MQTT
        for s in syncs:
            assert s.stats["origin_fallbacks"] == 1 and s.stats["http_files"] == 0
            assert s.stats["chunks_received"] > 0
        assert coord.counters["origin_fallbacks"] == len(syncs) and coord.counters["chunks_served"] > 0
        wait_for(lambda: len({u.job_id for u in seen if u.reason == "origin_sha256_mismatch"}) == len(syncs))
        assert not any(p.name.endswith(".http") for s in syncs for p in (s.dir / "transfers").glob("*"))
    finally:
        spy.close()
        _stop(coord, syncs)


def test_origin_down_falls_back_to_mqtt_chunks(broker: Any, tmp_path: Path, make_agent: Any,
                                               archives: dict[str, Path],
                                               make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx()
    url = nginx.url
    nginx.stop()  # the origin is down for the whole rollout
    coord, syncs = _fleet(broker, tmp_path, make_agent, archives["1"], None, base_url=url, origin_attempts=2,
                          origin_timeout=2)
    try:
        dep = coord.create_deployment(archives["2"].read_bytes(), "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert all(s.agent.active_version == "2" for s in syncs)
        for s in syncs:
            assert s.stats["origin_fallbacks"] == 1 and s.stats["chunks_received"] > 0
        assert coord.counters["origin_fallbacks"] == len(syncs)
    finally:
        _stop(coord, syncs)


@pytest.mark.parametrize("path,reason", [("r302/", ""), ("loop/", "origin_redirect_loop"),
                                         ("h6/", "origin_too_many_redirects")])
def test_devices_follow_a_redirecting_origin_or_fall_back_to_mqtt_chunks(
        path: str, reason: str, broker: Any, tmp_path: Path, make_agent: Any, archives: dict[str, Path],
        make_nginx: Callable[..., LocalNginx]) -> None:
    """Real agents: behind a 302 the bundle comes over HTTP; a redirect loop or too many hops is the device's named
    reason and it falls back to MQTT chunks, as for any other origin failure."""
    nginx = make_nginx(extra=REDIRECTS)
    coord, syncs = _fleet(broker, tmp_path, make_agent, archives["1"], nginx, n=1, base_url=nginx.url + path)
    seen: list[P.JobUpdate] = []
    from helpers import mqtt

    spy = mqtt(broker.url, "spy")
    spy.on_message(lambda t, p: seen.append(P.JobUpdate.parse(p)) if t.endswith("/up/job") else None)
    spy.subscribe(f"{P.PREFIX}/f1/devices/+/up/job", qos=1)
    spy.connect()
    s = syncs[0]
    try:
        v2 = archives["2"].read_bytes()
        sha = hashlib.sha256(v2).hexdigest()
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert s.agent.active_version == "2"
        if not reason:
            assert s.stats["http_files"] == 1 and s.stats["origin_fallbacks"] == 0
            assert coord.counters["chunks_served"] == 0 and [a[0] for a in _hits(nginx, sha)] == [200]
        else:
            assert s.stats["origin_fallbacks"] == 1 and s.stats["http_files"] == 0 and s.stats["chunks_received"] > 0
            assert coord.counters["origin_fallbacks"] == 1 and not _hits(nginx, sha)
            wait_for(lambda: any(u.reason == reason for u in seen))
    finally:
        spy.close()
        _stop(coord, syncs)


def test_tuf_targets_carry_the_url_and_a_device_in_tuf_mode_fetches_only_from_it(
        broker: Any, tmp_path: Path, make_agent: Any, keys: dict[str, Any], archives: dict[str, Path],
        make_nginx: Callable[..., LocalNginx]) -> None:
    from edgefleet import trust
    from edgefleet.device_agent import tuf_mode
    from edgefleet.keys import generate_keypair

    nginx = make_nginx()
    kd = tmp_path / "tufkeys"
    for name in ("root", "online"):
        generate_keypair(kd, name=name)
    repo = tmp_path / "repo"
    fleet_key = trust.load_key_arg(Path(keys["pub"]).with_suffix(".key"))
    trust.init_repository(repo, [trust.load_key_arg(kd / "root.key")], 1, trust.load_key_arg(kd / "online.pub"))
    trust.delegate(repo, "dense", [fleet_key], [trust.load_key_arg(kd / "root.key")])
    for v in ("1", "2"):  # what `edgefleet repo add BUNDLE --origin-url URL` does
        trust.add_bundle(repo, archives[v], [fleet_key], trust.load_key_arg(kd / "online.key"), origin_url=nginx.url)
    v2 = archives["2"].read_bytes()
    sha = hashlib.sha256(v2).hexdigest()
    target = trust.Repository(repo).load("dense").signed.targets["dense/2.efb"]
    assert trust.target_url(target) == nginx.url + sha  # signed: URL, with the length and sha256 beside it
    assert (target.length, target.hashes["sha256"]) == (len(v2), sha)

    wrong = DirectoryOrigin(tmp_path / "origin", nginx.url + "elsewhere/")
    coord = coordinator(broker.url, tmp_path / "reg.db", origin=wrong, tuf_repo=repo, chunk_size=16 * 1024)
    agent = make_agent("d0", install=archives["1"])
    tuf_mode.provision_root(agent.root, repo / "metadata" / "1.root.json")
    s = device(broker.url, agent, tmp_path)
    try:
        wait_for(lambda: coord.registry.device("f1", "d0") and coord.registry.device("f1", "d0").online)
        # a job naming another URL than the signed target's: refused before the first byte
        dep = coord.create_deployment(v2, "g", ALL)
        job = wait_for(lambda: next((j for j in coord.registry.jobs(dep.id) if j.status in P.TERMINAL_STATES), None))
        assert (job.status, job.reason) == ("REJECTED", "origin_not_signed")
        assert s.stats["http_bytes"] == 0 and not _hits(nginx, sha) and s.agent.active_version == "1"
        # the URL the signed target names: fetched over HTTP, checked against the signed target, installed
        coord.origin = DirectoryOrigin(tmp_path / "origin", nginx.url)
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert s.agent.active_version == "2" and s.stats["http_files"] == 1
        assert coord.counters["chunks_served"] == 0 and [a[0] for a in _hits(nginx, sha)] == [200]
    finally:
        _stop(coord, [s])


def test_https_origin_is_verified_against_the_ca_the_device_trusts(tmp_path: Path, monkeypatch: Any,
                                                                   make_nginx: Callable[..., LocalNginx]) -> None:
    from test_cloud_api_tls import _make_pki

    pki = _make_pki(tmp_path / "pki")
    data = os.urandom(200_000)
    origin, sha = _publish(tmp_path, data)
    origin.publish(sha, data)
    nginx = make_nginx(tls=(pki.cert, pki.key))
    assert nginx.url.startswith("https://")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.rogue_ca))  # a CA that did not sign the origin's certificate
    res = fetch(nginx.url + sha, tmp_path / "a.http", len(data), sha, attempts=3, backoff=0.05)
    assert not res.ok and res.reason == "origin_tls_error" and res.attempts == 1 and res.received == 0
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))  # the CA the device is given (as documented)
    res = fetch(nginx.url + sha, tmp_path / "b.http", len(data), sha)
    assert res.ok and (tmp_path / "b.http").read_bytes() == data


def test_device_restarted_mid_download_resumes_it_with_a_range_request(
        broker: Any, tmp_path: Path, make_agent: Any, big_archives: dict[str, Path],
        make_nginx: Callable[..., LocalNginx]) -> None:
    nginx = make_nginx(limit_rate=300_000)
    coord, syncs = _fleet(broker, tmp_path, make_agent, big_archives["1"], nginx, n=1)
    s = syncs[0]
    try:
        v2 = big_archives["2"].read_bytes()
        sha = hashlib.sha256(v2).hexdigest()
        part = s.dir / "transfers" / f"{sha}.http"
        dep = coord.create_deployment(v2, "g", ALL)
        wait_for(lambda: part.exists() and part.stat().st_size > 300_000, 30, 0.01)
        s.stop()  # the device goes down mid-download; its partial file stays
        kept = part.stat().st_size
        assert 300_000 < kept < len(v2)
        s = syncs[0] = device(broker.url, s.agent, tmp_path)  # and comes back: the job resumes from its state
        wait_for(lambda: coord.registry.deployment(dep.id).state == "completed", 60)
        assert s.agent.active_version == "2" and s.stats["http_resumes"] == 1
        assert s.stats["http_bytes"] == len(v2) - kept  # only what was missing
        resumed = [a for a in _hits(nginx, sha) if a[0] == 206]
        assert [r[1] for r in resumed] == [f"bytes={kept}-"] and coord.counters["chunks_served"] == 0
    finally:
        _stop(coord, syncs)
