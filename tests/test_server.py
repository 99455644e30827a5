"""``unseen serve``'s HTTP side with aiohttp's test client: REST, WebSocket control, limits, errors, metrics, config."""
from __future__ import annotations

import asyncio
import json
import tomllib

import pytest
from support.app_client import SYNTH, client, run, settings, wait_frames

from unseen.server import config as cfg
from unseen.server.app import SERVER
from unseen.server.live import LIVE_QUEUE_ITEMS

pytestmark = pytest.mark.timeout(120)

# ------------------------------------------------------------------------------ config
def test_default_config_is_the_defaults_and_parses():
    assert cfg.Settings(**tomllib.loads(cfg.DEFAULT_TOML)).model_dump() == cfg.Settings().model_dump()


@pytest.mark.parametrize("env, check", [
    ({"UNSEEN_PORT": "9001"}, lambda s: s.port == 9001),
    ({"UNSEEN_LIMITS__MAX_STREAMS": "2"}, lambda s: s.limits.max_streams == 2),
    ({"UNSEEN_BACKENDS__INPAINTER": "classical"}, lambda s: s.backends.inpainter == "classical"),
    ({"UNSEEN_ICE__LOOPBACK": "true"}, lambda s: s.ice.loopback is True),
    ({"UNSEEN_SOURCES": json.dumps([{"name": "a", "uri": "rtsp://h/a"}])}, lambda s: s.sources[0].name == "a"),
    ({"UNSEEN_OUTPUTS__A__PUBLISH": "rtsp://h/out"}, lambda s: s.outputs["a"].publish == "rtsp://h/out"),
])
def test_env_overrides_file(tmp_path, monkeypatch, env, check):
    path = tmp_path / "unseen.toml"
    path.write_text('port = 7000\n[limits]\nmax_streams = 9\n[backends]\ninpainter = "auto"\n')
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = cfg.load(path)
    assert check(s)
    if "UNSEEN_PORT" not in env:
        assert s.port == 7000
    assert cfg.load(path, port=1234).port == 1234  # a flag beats both


def test_json_config_and_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"sources": [SYNTH], "delay": 2}))
    s = cfg.load(p)
    assert s.sources[0].width == 192 and s.delay == 2 and s.effective_sources() == s.sources
    assert cfg.load(None).effective_sources()[0].uri == cfg.DEMO_URI  # no config at all: the demo stream
    for text, needle in [("{", "not valid JSON"), (json.dumps({"port": "x"}), "'port'"),
                         (json.dumps({"sources": [SYNTH, SYNTH]}), "used twice"),
                         (json.dumps({"sources": [dict(SYNTH, effect="melt")]}), "unknown effect")]:
        p.write_text(text)
        with pytest.raises(cfg.ConfigError, match=needle) as info:
            cfg.load(p)
        assert "\n" not in str(info.value)
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------ metrics/health
def test_metrics_at_zero_and_health():
    async def body():
        async with client(settings()) as c:
            text = await (await c.get("/metrics")).text()
            for line in ("unseen_streams 0.0", "unseen_viewers 0.0", 'unseen_stage_ms_count{stage="inpaint"} 0.0',
                         "# TYPE unseen_stream_frames_in_total counter", "# TYPE unseen_delay_frames gauge",
                         "# TYPE unseen_stream_dropped_total counter", "# TYPE unseen_stream_degraded_total counter"):
                assert line in text
            assert (await c.get("/healthz/live")).status == 200
            assert (await (await c.get("/healthz/ready")).json())["status"] == "ready"
            assert (await c.get("/api/streams")).status == 200
            page = await c.get("/")
            assert page.status == 200 and "<video" in await page.text()
            assert (await c.get("/static/app.js")).status == 200
    run(body())


# ------------------------------------------------------------------------------ REST + WS
def test_rest_stream_lifecycle_click_and_metrics():
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            state = await wait_frames(c, "cam", 8)
            assert state["delay_frames"] == 3 and state["backends"]["inpainter"].startswith("classical")
            assert state["width"] == 192 and state["delay_seconds"] == pytest.approx(0.2)
            r = await c.post("/api/streams/cam/objects", json={"x": 50, "y": 50})
            assert r.status == 200, await r.text()
            oid = (await r.json())["object"]
            r = await c.patch(f"/api/streams/cam/objects/{oid}", json={"effect": "blur"})
            assert (await r.json())["objects"][0]["effect"] == "blur"
            assert [o["id"] for o in await (await c.get("/api/streams/cam/objects")).json()] == [oid]
            r = await c.delete(f"/api/streams/cam/objects/{oid}")
            assert (await r.json())["objects"] == []
            r = await c.post("/api/streams", json=dict(SYNTH, name="second"))
            assert r.status == 201
            names = [s["name"] for s in await (await c.get("/api/streams")).json()]
            assert names == ["cam", "second"]
            assert (await c.delete("/api/streams/second")).status == 200
            metrics = await (await c.get("/metrics")).text()
            assert 'unseen_stream_frames_in_total{stream="cam"}' in metrics and "unseen_streams 1.0" in metrics
            stream = c.server.app[SERVER].streams["cam"]
            p = stream.pipeline
            # the delay line holds D frames; beyond them (pipelined) one is being tracked (counted in when its
            # step starts, or tracked and waiting to hand its job on), LIVE_QUEUE_ITEMS wait in the hand-off
            # and one is being emitted
            assert p.delay <= p.frames_in - p.frames_out <= p.delay + LIVE_QUEUE_ITEMS + 2
    run(body())


def test_websocket_control_and_errors_keep_serving():
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            await wait_frames(c, "cam", 5)
            async with c.ws_connect("/ws") as ws:
                async def ask(msg):
                    await ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))
                    while True:
                        reply = await asyncio.wait_for(ws.receive_json(), 30)
                        if reply.get("type") != "stats":
                            return reply

                cases = [  # (message, ok, error fragment) - table of malformed and valid control messages
                    ("not json", False, "not a JSON object"),
                    ("[1, 2]", False, "not a JSON object"),
                    ({"id": 1}, False, "no 'op'"),
                    ({"id": 2, "op": "dance", "stream": "cam"}, False, "unknown op"),
                    ({"id": 3, "op": "state", "stream": "nope"}, False, "unknown stream 'nope'"),
                    ({"id": 4, "op": "click", "stream": "cam", "x": 500, "y": 5}, False, "outside the 192x112"),
                    ({"id": 5, "op": "click", "stream": "cam", "x": "a", "y": 5}, False, "'x': Input should be a valid number"),
                    ({"id": 6, "op": "remove", "stream": "cam", "object": 7}, False, "no object 7"),
                    ({"id": 13, "op": "remove", "stream": "cam", "object": 42}, False, "not between 1 and 20"),
                    ({"id": 7, "op": "effect", "stream": "cam", "object": 42, "effect": "melt"}, False,
                     "unknown effect"),
                    ({"id": 8, "op": "click", "stream": "cam", "x": 10, "y": 10, "positive": False}, False,
                     "needs an object"),
                    ("x" * 70000, False, "over the 65536-byte limit"),
                    ({"id": 9, "op": "click", "stream": "cam", "x": 50, "y": 50}, True, None),
                    ({"id": 10, "op": "objects", "stream": "cam"}, True, None),
                    ({"id": 11, "op": "clear", "stream": "cam"}, True, None),
                    ({"id": 12, "op": "subscribe", "stream": "cam"}, True, None),
                ]
                for msg, ok, fragment in cases:
                    reply = await ask(msg)
                    assert reply["ok"] is ok, (msg if isinstance(msg, dict) else msg[:20], reply)
                    if fragment:
                        assert fragment in reply["error"] and "\n" not in reply["error"] and ";" in reply["error"]
                stats = await asyncio.wait_for(ws.receive_json(), 10)
                while stats.get("type") != "stats":
                    stats = await asyncio.wait_for(ws.receive_json(), 10)
                assert stats["state"]["name"] == "cam"
            assert (await c.get("/healthz/live")).status == 200  # still serving
    run(body())


@pytest.mark.parametrize("method, path, kwargs, status, fragment", [
    ("get", "/api/streams/nope", {}, 404, "unknown stream 'nope'"),
    ("post", "/api/streams/nope/objects", {"json": {"x": 1, "y": 1}}, 404, "unknown stream"),
    ("post", "/api/streams", {"data": "{{", "headers": {"Content-Type": "application/json"}}, 400, "not JSON"),
    ("post", "/api/streams", {"json": {"name": "bad name!", "uri": "x"}}, 400, "stream name"),
    ("post", "/api/streams", {"json": dict(SYNTH, name="cam")}, 409, "exists already"),
    ("post", "/api/streams", {"json": dict(SYNTH, name="third")}, 429, "limit"),
    ("post", "/api/streams", {"data": "x" * 70000, "headers": {"Content-Type": "application/json"}}, 413,
     "too large"),
    ("post", "/api/streams/cam/offer", {"json": {"sdp": "v=0", "type": "offer"},
                                        "headers": {"Origin": "http://evil.example"}}, 403, "not allowed"),
    ("get", "/ws", {"headers": {"Origin": "http://evil.example"}}, 403, "origin"),
    ("post", "/api/streams/cam/offer", {"json": {"type": "offer"}}, 400, "offer 'sdp': Field required"),
    ("get", "/no/such/path", {}, 404, "no such path"),
])
def test_http_errors_are_clear(method, path, kwargs, status, fragment):
    async def body():
        s = settings(sources=[SYNTH, dict(SYNTH, name="cam2")])
        s.limits.max_streams = 2
        async with client(s) as c:
            r = await getattr(c, method)(path, **kwargs)
            text = await r.text()
            assert r.status == status, text
            error = json.loads(text)["error"]
            assert fragment in error and "\n" not in error
            assert (await c.get("/healthz/live")).status == 200
    run(body())


def test_token_and_origins():
    async def body():
        s = settings(sources=[SYNTH])
        s.security.token = "s3cret-token"
        s.security.origins = ["http://allowed.example"]
        async with client(s) as c:
            assert (await c.post("/api/streams/cam/objects", json={"x": 1, "y": 1})).status == 401
            assert (await c.delete("/api/streams/cam")).status == 401
            assert (await c.get("/api/streams")).status == 401  # reading needs the token too
            r = await c.get("/ws", headers={"Origin": "http://allowed.example", "Authorization": "Bearer s3cret-token"})
            assert r.status != 403 and r.status != 401
            async with c.ws_connect("/ws?token=s3cret-token", origin="http://allowed.example") as ws:
                await ws.send_json({"id": 1, "op": "streams"})
                assert (await asyncio.wait_for(ws.receive_json(), 10))["ok"] is True
            r = await c.get("/ws", headers={"Origin": "http://allowed.example"})
            assert r.status == 401
    run(body())


def test_recording_a_live_stream_to_a_file(tmp_path):
    """`[outputs.NAME] record = FILE`: the processed stream is also written to a file, complete on close."""
    from unseen.engine.media import probe

    path = tmp_path / "cam.mp4"

    async def body():
        async with client(settings(sources=[SYNTH], outputs={"cam": {"record": str(path)}})) as c:
            await wait_frames(c, "cam", 20)
            stream = c.server.app[SERVER].streams["cam"]
        return stream.pipeline.frames_out
    frames_out = run(body())
    info = probe(path)
    assert (info["width"], info["height"]) == (192, 112)
    assert frames_out >= 20 and info["frames"] == frames_out  # every output frame was recorded
