"""``unseen click``, ``unseen objects``, ``unseen clear``: scripting a running ``unseen serve``."""
from __future__ import annotations

import argparse
import asyncio
import json
import os


def _run(coro) -> int:
    """Run a request and print its result; a refusal raises ``ControlError`` (one line, a user error)."""
    print(json.dumps(asyncio.run(coro), indent=2))
    return 0


def cmd_click(args) -> int:
    from .control import Control

    async def go():
        async with Control(args.url, token=args.token, timeout=args.timeout) as c:
            return await c.click(args.stream, args.x, args.y, positive=not args.negative, object_id=args.object,
                                 box=args.box, pts=args.pts, frame=args.frame)
    return _run(go())


def parse_box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1`` -> four numbers (the server checks their order and the frame)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"bad box {text!r}; write X0,Y0,X1,Y1 (frame pixels)")
    return values


def cmd_objects(args) -> int:
    from .control import Control

    async def go():
        async with Control(args.url, token=args.token, timeout=args.timeout) as c:
            return await c.objects(args.stream)
    return _run(go())


def cmd_clear(args) -> int:
    from .control import Control

    async def go():
        async with Control(args.url, token=args.token, timeout=args.timeout) as c:
            return await c.clear(args.stream)
    return _run(go())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("stream", help="stream name (see GET /api/streams)")
    p.add_argument("--token", default=os.environ.get("UNSEEN_SECURITY__TOKEN"), help="access token, if the server has one")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the reply")


def add_commands(sub: argparse._SubParsersAction) -> None:
    click = sub.add_parser("click", help="click a live stream or draw a box on it: add (or correct) an object")
    _common(click)
    click.add_argument("x", type=float, nargs="?", help="the click (leave X Y out for a box alone)")
    click.add_argument("y", type=float, nargs="?")
    click.add_argument("--box", type=parse_box, default=None, metavar="X0,Y0,X1,Y1",
                       help="a box around the object, alone or with the click (on --object, or a new object)")
    click.add_argument("--negative", action="store_true", help="negative click (correct an object)")
    click.add_argument("--object", type=int, default=None, help="object id (default: a new object; "
                                                                 "negative clicks: the last one)")
    click.add_argument("--pts", type=int, default=None, help="the frame seen, by its timestamp in the stream's "
                                                            "clock (default: the frame being shown)")
    click.add_argument("--frame", type=int, default=None, help="the frame seen, by its index in the stream")
    click.set_defaults(func=cmd_click)
    objects = sub.add_parser("objects", help="list a live stream's objects")
    _common(objects)
    objects.set_defaults(func=cmd_objects)
    clear = sub.add_parser("clear", help="remove every object of a live stream")
    _common(clear)
    clear.set_defaults(func=cmd_clear)
