"""The server is safe by default: one class per defect a security review found (cross-site requests and what
they could open or write, DNS rebinding, reads without the token), each refused; plus the bind rule."""
from __future__ import annotations

import json
import os

import pytest
from support.app_client import SYNTH, client, run, settings, wait_frames

from unseen.server import config as cfg

pytestmark = pytest.mark.timeout(120)

EVIL = "http://evil.example"


async def status_and_error(response) -> tuple[int, str]:
    text = await response.text()
    error = (json.loads(text).get("error") or "") if text.startswith("{") else ""
    assert "\n" not in error and "Traceback" not in text
    return response.status, error


class TestCrossSite:
    """Defect 1: any page the user visits could create streams reading local files, URLs and ports, and
    recordings written anywhere: now browsers' cross-site requests and disallowed sources are refused."""

    @pytest.mark.parametrize("headers, body, status, fragment", [
        # the reviewer's request: a cross-site text/plain POST naming a local file and a record path
        ({"Origin": EVIL, "Content-Type": "text/plain"},
         {"name": "x1", "uri": "/etc/hosts", "record": "/tmp/x.mp4"}, 403, "origin"),
        ({"Content-Type": "text/plain"}, dict(SYNTH, name="x2"), 415, "application/json"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, dict(SYNTH, name="x3"), 415, "application/json"),
        ({"Origin": EVIL, "Content-Type": "application/json"}, dict(SYNTH, name="x4"), 403, "origin"),
        ({"Origin": "null", "Content-Type": "application/json"}, dict(SYNTH, name="x5"), 403, "origin"),
    ])
    def test_cross_site_requests_are_refused(self, headers, body, status, fragment):
        async def body_():
            async with client(settings(sources=[SYNTH])) as c:
                r = await c.post("/api/streams", data=json.dumps(body), headers=headers)
                got, error = await status_and_error(r)
                assert (got, fragment in error) == (status, True), error
                names = [s["name"] for s in await (await c.get("/api/streams")).json()]
                assert names == ["cam"]  # nothing was created
        run(body_())

    @pytest.mark.parametrize("extra", [
        {"uri": "/etc/hosts"},
        {"uri": "file:///etc/hosts"},
        {"uri": "concat:/etc/hosts|/etc/hosts"},
        {"uri": "http://127.0.0.1:1/x"},
        {"uri": "tcp://127.0.0.1:22"},
        {"uri": "rtsp://10.0.0.1:554/cam"},
        {"uri": "synthetic://x", "record": "/tmp/anywhere.mp4"},
        {"uri": "synthetic://x", "publish": "rtsp://203.0.113.9:8554/out"},
    ])
    def test_sources_and_outputs_off_the_allow_list_are_refused(self, extra, tmp_path):
        async def body():
            async with client(settings()) as c:
                r = await c.post("/api/streams", json=dict(SYNTH, name="probe", **extra))
                status, error = await status_and_error(r)
                assert status == 403 and "not allowed" in error
                for telling in ("does not exist", "Invalid data", "refused", "No such file"):
                    assert telling not in error  # says nothing of what exists
                assert await (await c.get("/api/streams")).json() == []
        run(body())

    def test_the_allow_list_admits_what_it_names(self, tmp_path, clip_video):
        allowed = tmp_path / "media"
        allowed.mkdir()
        inside = allowed / "clip.mp4"
        inside.write_bytes(clip_video.read_bytes())
        escape = allowed / "escape.mp4"
        os.symlink(clip_video, escape)  # a link out of the folder is judged by where it points
        s = settings()
        s.security.allow = cfg.AllowConfig(schemes=["synthetic", "file", "rtsp"], hosts=["127.0.0.0/8", "cam.local"],
                                           folders=[str(allowed)])

        async def body():
            async with client(s) as c:
                cases = [
                    ({"uri": str(inside), "record": str(allowed / "rec.mp4")}, 201),
                    ({"uri": str(escape)}, 403),
                    ({"uri": str(allowed / ".." / "elsewhere.mp4")}, 403),
                    ({"uri": "rtsp://127.0.0.1:1/in"}, 201),  # a CIDR the operator allowed
                    ({"uri": "rtsp://cam.local/in"}, 201),
                    ({"uri": "rtsp://cam.local.evil.example/in"}, 403),  # names match whole, never resolved
                    ({"uri": "synthetic://x", "record": str(allowed / "notes.txt")}, 400),
                    ({"uri": "http://127.0.0.1:1/x"}, 403),  # http is not among the schemes
                ]
                for i, (extra, status) in enumerate(cases):
                    r = await c.post("/api/streams", json=dict(SYNTH, name=f"s{i}", **extra))
                    got, error = await status_and_error(r)
                    assert got == status, (extra, error)
                    if got == 201:
                        assert (await c.delete(f"/api/streams/s{i}")).status == 200
        s.limits.max_streams = 8
        run(body())


class TestDnsRebinding:
    """Defect 2: the Origin check compared with the request's own Host, so a rebound name passed."""

    @pytest.mark.parametrize("host, origin, status", [
        ("evil.example:{port}", "http://evil.example:{port}", 421),
        ("evil.example:{port}", None, 421),
        ("127.0.0.1.evil.example", None, 421),
        ("", None, 421),
        ("127.0.0.1:{port}", "http://evil.example:{port}", 403),
        ("127.0.0.1:{port}", "http://127.0.0.1:{port}", 200),
        ("localhost:{port}", "http://localhost:{port}", 200),
        ("127.0.0.1:{port}", "http://127.0.0.1:1", 403),  # another port is another origin
    ])
    def test_host_and_origin_come_from_allow_lists(self, host, origin, status):
        async def body():
            async with client(settings(sources=[SYNTH])) as c:
                port = c.server.port
                headers = {"Host": host.format(port=port)}
                if origin is not None:
                    headers["Origin"] = origin.format(port=port)
                for path in ("/api/streams", "/ws", "/metrics", "/"):
                    r = await c.get(path, headers=headers)
                    if status == 200:
                        assert r.status < 400 or (path == "/ws" and r.status == 400), (path, r.status)
                    else:
                        got, error = await status_and_error(r)
                        assert got == status, (path, error)
                assert (await c.get("/healthz/live", headers=headers)).status == 200  # probes stay open
        run(body())

    def test_configured_names_are_answered(self):
        s = settings(sources=[SYNTH])
        s.security.hosts = ["unseen.lan"]

        async def body():
            async with client(s) as c:
                port = c.server.port
                r = await c.get("/api/streams", headers={"Host": f"unseen.lan:{port}",
                                                         "Origin": f"http://unseen.lan:{port}"})
                assert r.status == 200
        run(body())


class TestToken:
    """Defect 3: with a token set, reads, /metrics and viewer offers were open."""

    TOKEN = "a-long-test-token"

    @pytest.mark.parametrize("method, path, kwargs", [
        ("get", "/api/streams", {}),
        ("get", "/api/streams/cam", {}),
        ("get", "/api/streams/cam/objects", {}),
        ("get", "/metrics", {}),
        ("get", "/ws", {}),
        ("post", "/api/streams/cam/offer", {"json": {"sdp": "v=0", "type": "offer"}}),
        ("post", "/api/streams/cam/objects", {"json": {"x": 5, "y": 5}}),
        ("delete", "/api/streams/cam", {}),
    ])
    def test_every_request_needs_the_token(self, method, path, kwargs):
        s = settings(sources=[SYNTH])
        s.security.token = self.TOKEN
        s.security.metrics_token = "metrics-only-token"

        async def body():
            async with client(s) as c:
                for auth in (None, "Bearer wrong-token-xx", f"Basic {self.TOKEN}", "Bearer metrics-only-token"):
                    if auth == "Bearer metrics-only-token" and path == "/metrics":
                        continue
                    headers = {"Authorization": auth} if auth else {}
                    got, error = await status_and_error(await getattr(c, method)(path, headers=headers, **kwargs))
                    assert got == 401 and "token" in error, (auth, got, error)
                assert (await c.get("/healthz/live")).status == 200
                assert (await c.get("/healthz/ready")).status == 200
                assert (await c.get("/")).status == 200  # the page holds no data; its API calls carry the token
        run(body())

    @pytest.mark.parametrize("auth, query, path, ok", [
        ("Bearer {t}", "", "/api/streams", True),
        ("bearer {t}", "", "/api/streams", True),  # the scheme is case-insensitive
        ("BEARER  {t} ", "", "/api/streams", True),
        (None, "?token={t}", "/api/streams", True),
        ("Bearer metrics-only-token", "", "/metrics", True),
        ("Bearer metrics-only-token", "", "/api/streams", False),
        ("Bearer {t}x", "", "/api/streams", False),
    ])
    def test_token_forms(self, auth, query, path, ok):
        s = settings(sources=[SYNTH])
        s.security.token = self.TOKEN
        s.security.metrics_token = "metrics-only-token"

        async def body():
            async with client(s) as c:
                headers = {"Authorization": auth.format(t=self.TOKEN)} if auth else {}
                r = await c.get(path + query.format(t=self.TOKEN), headers=headers)
                assert (r.status == 200) is ok, (r.status, await r.text())
        run(body())

    def test_with_the_token_everything_works(self):
        s = settings(sources=[SYNTH])
        s.security.token = self.TOKEN
        auth = {"Authorization": f"Bearer {self.TOKEN}"}

        async def body():
            async with client(s) as c:
                await wait_frames(c, "cam", 5, headers=auth)
                r = await c.post("/api/streams/cam/objects", json={"x": 50, "y": 50}, headers=auth)
                assert r.status == 200, await r.text()
                assert "unseen_streams" in await (await c.get("/metrics", headers=auth)).text()
                async with c.ws_connect(f"/ws?token={self.TOKEN}") as ws:
                    await ws.send_json({"id": 1, "op": "objects", "stream": "cam"})
                    assert (await ws.receive_json(timeout=10))["ok"] is True
        run(body())


@pytest.mark.parametrize("host, token, insecure, refused", [
    ("127.0.0.1", None, False, False),
    ("localhost", None, False, False),
    ("::1", None, False, False),
    ("0.0.0.0", None, False, True),
    ("192.0.2.10", None, False, True),
    ("0.0.0.0", "a-long-test-token", False, False),
    ("0.0.0.0", None, True, False),
])
def test_listening_beyond_loopback_needs_a_token(host, token, insecure, refused, monkeypatch):
    if token:
        monkeypatch.setenv("UNSEEN_SECURITY__TOKEN", token)
    if refused:
        with pytest.raises(cfg.ConfigError, match="without an access token.*--insecure"):
            cfg.load(host=host, insecure=insecure or None)
    else:
        assert cfg.load(host=host, insecure=insecure or None).host == host
