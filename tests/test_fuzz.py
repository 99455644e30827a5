"""Fuzz corpus of hostile input, table-driven, for REST, WebSocket, offers and config: every case is refused with
a 4xx and a one-line error (no 5xx, no traceback), and no message kills the WebSocket.  The named cases are the
ones a security review sent; a seeded mutator adds a few hundred more, the same on every run."""
from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from support.app_client import SYNTH, client, run, settings, wait_frames

from unseen.server import config as cfg
from unseen.server import protocol

pytestmark = pytest.mark.timeout(180)

BIG = 10**400
DEEP = "[" * 30000
NESTED_WS = '{"id": 1, "op": "state", "stream": "cam", "x": ' + "[" * 3000 + "]" * 3000 + "}"
CLICK = {"x": 50, "y": 50}
BOX = [40, 30, 90, 80]

# (method, path, raw body or None, expected status). Bodies are sent as application/json.
REST = [
    ("post", "/api/streams", DEEP, 400),
    ("post", "/api/streams", '{"name": "a", "uri": "synthetic://a", "fps": NaN}', 400),
    ("post", "/api/streams", '{"name": "a", "uri": "synthetic://a", "fps": Infinity}', 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", fps=0)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", fps=1000)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", width=-10)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", width=0)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", width=10**6)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", height=BIG)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", uri="synthetic://" + "u" * 65000)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", uri="synthetic://" + "u" * 70000)), 413),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", uri="synthetic://" + "u" * 5000)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", loop="yes")), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", surprise=1)), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="../a")), 400),
    ("post", "/api/streams", json.dumps(dict(SYNTH, name="a", read_timeout=-1)), 400),
    ("post", "/api/streams", json.dumps([SYNTH]), 400),
    ("post", "/api/streams", "null", 400),
    ("post", "/api/streams", "\xff\xfe", 400),
    ("post", "/api/streams", "", 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": BIG, "y": 5}), 400),
    ("post", "/api/streams/cam/objects", '{"x": 1e999, "y": 5}', 400),
    ("post", "/api/streams/cam/objects", '{"x": NaN, "y": 5}', 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": -1, "y": 5}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": 5000, "y": 5}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": True, "y": 5}), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, positive="false")), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, positive=0)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, object=10**20)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, object=0)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, object=21)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, pts=-1)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, pts=10**30)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, frame=10**12)), 400),
    ("post", "/api/streams/cam/objects", json.dumps(dict(CLICK, stream="other")), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": "1", "y": "1"}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"x": "a" * 5000, "y": 1}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"y": 1}), 400),
    # box prompts: exactly 4 finite numbers, x0 < x1, y0 < y1, overlapping the frame; a click or a box at all
    ("post", "/api/streams/cam/objects", json.dumps({"box": [1, 2, 3]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [1, 2, 3, 4, 5]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": []}), 400),
    ("post", "/api/streams/cam/objects", '{"box": [1, 2, NaN, 4]}', 400),
    ("post", "/api/streams/cam/objects", '{"box": [1, 2, 1e999, 4]}', 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [1, 2, BIG, 4]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [90, 30, 40, 80]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [40, 80, 90, 30]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [40, 30, 40, 80]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": "40,30,90,80"}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": {"x0": 40}}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [40, 30, 90, True]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": ["40", 30, 90, 80]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [[40, 30], [90, 80]]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": None}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": [500, 300, 900, 400]}), 400),  # wholly outside
    ("post", "/api/streams/cam/objects", json.dumps({"box": [-90, -80, -40, -30]}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": BOX, "x": 50}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": BOX, "positive": False}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": BOX, "object": 0}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"box": BOX, "frame": 10**12}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({"object": 1}), 400),
    ("post", "/api/streams/cam/objects", json.dumps({}), 400),
    ("delete", "/api/streams/cam/objects/100000000000000000000", None, 400),
    ("delete", "/api/streams/cam/objects/-1", None, 400),
    ("delete", "/api/streams/cam/objects/1e3", None, 400),
    ("delete", "/api/streams/cam/objects/%00", None, 400),
    ("patch", "/api/streams/cam/objects/1", json.dumps({"effect": "melt"}), 400),
    ("patch", "/api/streams/cam/objects/1", json.dumps({"effect": ["blur"]}), 400),
    ("patch", "/api/streams/cam/objects/1", json.dumps({"effect": "blur"}), 400),  # no object 1 yet
    ("post", "/api/streams/cam/offer", json.dumps({"sdp": None, "type": None}), 400),
    ("post", "/api/streams/cam/offer", json.dumps({"sdp": "v=0", "type": "answer"}), 400),
    ("post", "/api/streams/cam/offer", json.dumps({"sdp": "garbage", "type": "offer"}), 400),
    ("post", "/api/streams/cam/offer", json.dumps({"sdp": 5, "type": "offer"}), 400),
    ("post", "/api/streams/cam/offer", json.dumps({"sdp": "v=0", "type": "offer", "publish": "true"}), 400),
    ("post", "/api/streams/" + "n" * 100 + "/offer", json.dumps({"sdp": "v=0", "type": "offer"}), 400),
    ("post", "/api/streams/x%20y/offer", json.dumps({"sdp": "v=0", "type": "offer", "publish": True}), 400),
    ("get", "/api/streams/" + "n" * 3000, None, 400),
    ("get", "/api/streams/nope", None, 404),
    ("put", "/api/streams", json.dumps(SYNTH), 405),
    ("get", "/no/such/path", None, 404),
]

WS = [  # (message text, expected status)
    ("not json", 400),
    ("[1, 2]", 400),
    ("null", 400),
    (NESTED_WS, 400),
    ('{"id": 1, "op": "click", "stream": "cam", "x": NaN, "y": 1}', 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "x": BIG, "y": 1}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "x": 5, "y": 5, "positive": "false"}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "x": 5, "y": 5, "object": 10**20}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "x": 5, "y": 5, "pts": 10**30}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "x": 5, "y": 5, "frame": 10**12}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam"}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": [1, 2, 3]}), 400),
    ('{"id": 1, "op": "click", "stream": "cam", "box": [1, 2, 3, Infinity]}', 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": [9, 2, 3, 4]}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": "1,2,3,4"}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": [1, 2, 3, False]}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": [500, 300, 900, 400]}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": BOX, "y": 5}), 400),
    (json.dumps({"id": 1, "op": "click", "stream": "cam", "box": BOX, "object": 10**20}), 400),
    (json.dumps({"id": 1, "op": "subscribe", "stream": "cam", "every": "abc"}), 400),
    (json.dumps({"id": 1, "op": "subscribe", "stream": "cam", "every": 0}), 400),
    (json.dumps({"id": 1, "op": "effect", "stream": "cam", "object": 1, "effect": None}), 400),
    (json.dumps({"id": 1, "op": ["click"]}), 400),
    (json.dumps({"id": 1, "op": "x" * 5000}), 400),
    (json.dumps({"id": {"a": 1}, "op": "streams"}), 400),
    (json.dumps({"id": 1, "op": "streams", "extra": 1}), 400),
    (json.dumps({"id": 1, "op": "state", "stream": "../etc"}), 400),
    (json.dumps({"id": 1, "op": "state", "stream": "nope"}), 404),
    ("x" * 70000, 413),
]


def _check_error(status: int, text: str) -> str:
    assert status < 500, text
    assert "Traceback" not in text
    error = json.loads(text)["error"]
    assert error and "\n" not in error and ";" in error, error
    return error


def test_rest_corpus():
    """One server takes the whole corpus (each case a 4xx and a one-line error), and still serves after it."""
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            await wait_frames(c, "cam", 2)
            for i, (method, path, raw, status) in enumerate(REST):
                kwargs = {} if raw is None else {"data": raw.encode("utf-8", "surrogatepass"),
                                                 "headers": {"Content-Type": "application/json"}}
                r = await getattr(c, method)(path, **kwargs)
                text = await r.text()
                assert r.status == status, (i, method, path[:60], (raw or "")[:80], r.status, text[:200])
                _check_error(r.status, text)
            assert [s["name"] for s in await (await c.get("/api/streams")).json()] == ["cam"]
            # a browser's offer (7-10 KB) is longer than other strings may be, and reaches the SDP parser
            long_offer = {"sdp": "v=0\r\n" + "a=x-padding\r\n" * 800, "type": "offer"}
            r = await c.post("/api/streams/cam/offer", json=long_offer)
            assert r.status == 400 and "character limit" not in _check_error(r.status, await r.text())
            await wait_frames(c, "cam", 10)  # still serving
    run(body())


async def _ask(ws, text: str) -> dict:
    await ws.send_str(text)
    while True:
        reply = await asyncio.wait_for(ws.receive_json(), 30)
        if reply.get("type") != "stats":
            return reply


def test_websocket_corpus_keeps_the_socket():
    """Every hostile message gets a 4xx reply on the same socket, which then still answers and pushes stats."""
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            await wait_frames(c, "cam", 2)
            async with c.ws_connect("/ws") as ws:
                subscribed = await _ask(ws, json.dumps({"id": "s", "op": "subscribe", "stream": "cam",
                                                        "every": 0.2}))
                assert subscribed["ok"] is True
                for text, status in WS:
                    reply = await _ask(ws, text)
                    assert reply["ok"] is False and reply["status"] == status, (text[:60], reply)
                    assert "\n" not in reply["error"] and ";" in reply["error"]
                assert (await _ask(ws, json.dumps({"id": 2, "op": "streams"})))["ok"] is True
                pushes = 0
                while pushes < 5:  # the subscription outlived every hostile message
                    pushed = await asyncio.wait_for(ws.receive_json(), 10)
                    pushes += pushed.get("type") == "stats"
                assert not ws.closed
    run(body())


def _mutations(seed: int, n: int) -> list[str]:
    """Deterministic hostile variants of valid messages: wrong types, huge and odd values, cut text."""
    rng = random.Random(seed)
    valid = [{"id": 1, "op": "click", "stream": "cam", "x": 50, "y": 50, "positive": True},
             # valid but outside the 192x112 frame: its variants test the box's checks without segmenting
             {"id": 1, "op": "click", "stream": "cam", "box": [500, 300, 900, 400], "object": 1},
             {"id": 1, "op": "effect", "stream": "cam", "object": 1, "effect": "blur"},
             {"id": 1, "op": "subscribe", "stream": "cam", "every": 1.0},
             {"id": 1, "op": "remove", "stream": "cam", "object": 1}]
    odd = [None, True, -1, 0, 2**63, BIG, -BIG, 1e308, -0.0, "", "x" * 5000, "\u0000", [], {}, [[[]]],
           {"a": {"b": {}}}, "NaN", "1", 3.5]
    out = []
    for _ in range(n):
        msg = dict(rng.choice(valid))
        key = rng.choice(list(msg) + ["junk"])
        if rng.random() < 0.2 and key in msg:
            del msg[key]
        else:
            msg[key] = rng.choice(odd)
        text = json.dumps(msg)
        if rng.random() < 0.1:
            text = text[: rng.randrange(len(text))]
        out.append(text)
    return out


def test_mutated_messages_never_crash_the_socket():
    async def body():
        async with client(settings(sources=[SYNTH])) as c:
            await wait_frames(c, "cam", 2)
            async with c.ws_connect("/ws") as ws:
                statuses = []
                for text in _mutations(seed=13, n=300):
                    reply = await _ask(ws, text)
                    statuses.append(reply.get("status", 200))
                    if not reply["ok"]:
                        assert "\n" not in reply["error"]
                assert max(statuses) < 500 and statuses.count(400) > 100
                assert (await _ask(ws, json.dumps({"id": 2, "op": "streams"})))["ok"] is True
    run(body())


@pytest.mark.parametrize("name, text", [
    ("deep.json", "[" * 30000),
    ("deep.toml", "a = " + "[" * 3000 + "]" * 3000),
    ("list.json", "[1, 2]"),
    ("nan.json", '{"port": NaN}'),
    ("big.json", '{"port": ' + "9" * 500 + "}"),
    ("bad.toml", "port = = 1"),
    ("types.toml", 'port = "eighty"'),
    ("source.toml", '[[sources]]\nname = "a"\nuri = "synthetic://a"\nfps = 0'),
    ("source_nan.json", '{"sources": [{"name": "a", "uri": "synthetic://a", "fps": NaN}]}'),
    ("binary.toml", "\xff\xfe\x00"),
    ("limits.toml", "[limits]\nmax_streams = -1"),
    ("token.toml", '[security]\ntoken = "short"'),
    ("host.toml", 'host = "0.0.0.0"'),
])
def test_config_corpus(tmp_path: Path, name: str, text: str):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape") if not text.startswith("\xff") else b"\xff\xfe\x00")
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(path)
    message = str(info.value)
    assert "\n" not in message and ";" in message and len(message) < 400


def test_parse_json_bounds():
    assert protocol.parse_json(json.dumps({"a": [[1]] * 3}), limit=1000) == {"a": [[1]] * 3}
    ok = {"a": "x" * protocol.MAX_STRING}
    assert protocol.parse_json(json.dumps(ok), limit=10**5) == ok
    deep_ok = json.loads("[" * (protocol.MAX_DEPTH - 1) + "]" * (protocol.MAX_DEPTH - 1))
    assert protocol.parse_json(json.dumps({"a": deep_ok}), limit=10**5)
    for text, fragment in [(json.dumps({"a": "x" * (protocol.MAX_STRING + 1)}), "character limit"),
                           (json.dumps({"x" * (protocol.MAX_STRING + 1): 1}), "character limit"),
                           ('{"a": ' + "[" * protocol.MAX_DEPTH + "]" * protocol.MAX_DEPTH + "}", "nested deeper"),
                           ('{"a": -Infinity}', "not a number JSON allows"),
                           ("x" * 2000, "over the 1000-byte limit")]:
        with pytest.raises(protocol.ProtocolError, match=fragment):
            protocol.parse_json(text, limit=1000 if text.startswith("x") else 10**5)


def test_offers_have_their_own_size_cap():
    """limits.max_message_bytes caps JSON messages, not WebRTC offers (at 1024 every real offer got a 413)."""
    s = settings(sources=[SYNTH])
    s.limits.max_message_bytes = 1024

    async def body():
        async with client(s) as c:
            offer = {"sdp": "v=0\r\n" + "a=x-padding\r\n" * 600, "type": "offer"}  # about 8 KB, like a browser's
            r = await c.post("/api/streams/cam/offer", json=offer)
            error = _check_error(r.status, await r.text())
            assert r.status == 400 and "too large" not in error  # it reached the SDP parser
            r = await c.post("/api/streams/cam/objects", data=json.dumps({"x": 1, "y": 1, "pad": "p" * 2000}),
                             headers={"Content-Type": "application/json"})
            assert r.status == 413  # other bodies keep the message cap
    run(body())
