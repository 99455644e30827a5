"""``unseen serve`` and ``unseen config default`` (added to the main CLI by ``add_commands``)."""
from __future__ import annotations

import argparse
import logging

log = logging.getLogger("unseen.serve")


def cmd_serve(args) -> int:
    from aiohttp import web

    from .app import create_app
    from .config import load

    settings = load(args.config, host=args.host, port=args.port)
    if args.ice_loopback:
        settings.ice.loopback = True
    app = create_app(settings)
    names = [s.name for s in settings.effective_sources()]
    print(f"unseen serve: http://{settings.host}:{settings.port}/ (streams: {', '.join(names) or 'none'})",
          flush=True)
    web.run_app(app, host=settings.host, port=settings.port, print=None, handle_signals=True,
                shutdown_timeout=5.0)
    return 0


def cmd_config_default(args) -> int:
    from .config import DEFAULT_TOML

    print(DEFAULT_TOML, end="")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve live streams: browser client, WebRTC, RTSP, control API")
    serve.add_argument("--config", help="config file (.toml or .json; see 'unseen config default')")
    serve.add_argument("--host", default=None, help="listen address (overrides the config)")
    serve.add_argument("--port", type=int, default=None, help="port (overrides the config)")
    serve.add_argument("--ice-loopback", action="store_true",
                       help="offer a 127.0.0.1 ICE candidate (browser on the same host without a LAN address)")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration helpers")
    csub = config.add_subparsers(dest="config_command", required=True)
    default = csub.add_parser("default", help="print the commented default config (TOML)")
    default.set_defaults(func=cmd_config_default)
