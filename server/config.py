"""Typed configuration of ``unseen serve`` (pydantic-settings).

Sources of settings, strongest first: command-line flags (``--host``/``--port``),
environment variables (prefix ``UNSEEN_``, nested with ``__``, e.g.
``UNSEEN_LIMITS__MAX_STREAMS=2`` or ``UNSEEN_SOURCES='[{"name":"cam","uri":"rtsp://..."}]'``),
the config file (TOML or JSON, read with the standard library), then the defaults.
``unseen config default`` prints :data:`DEFAULT_TOML`, a commented file equal to the defaults.
"""
from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from unseen.engine.effects import Effect

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEMO_URI = "synthetic://demo"
MAX_URI = 4096
MIN_SIDE, MAX_SIDE = 16, 4096
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class ConfigError(ValueError):
    """The configuration cannot be read or is invalid (one line with the fix)."""


class SourceConfig(BaseModel):
    """A stream's source: anything PyAV opens (file, http, rtsp://), or ``synthetic://NAME``."""

    model_config = ConfigDict(allow_inf_nan=False)

    name: str = Field(max_length=64)
    uri: str = Field(min_length=1, max_length=MAX_URI)
    loop: bool = False  # files: start again at the end
    effect: str = Field("remove", max_length=32)  # effect of new objects: remove | blur | pixelate | fill | overlay
    open_timeout: float = Field(10.0, ge=0.1, le=120)  # seconds to open the source
    read_timeout: float = Field(5.0, ge=0.1, le=120)  # seconds without a frame before the source counts as stalled
    width: int = Field(432, ge=MIN_SIDE, le=MAX_SIDE)  # synthetic:// sources only
    height: int = Field(240, ge=MIN_SIDE, le=MAX_SIDE)
    fps: float = Field(15.0, ge=1, le=120)  # synthetic:// sources only (files and cameras keep their own rate)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"stream name {v!r} must be 1-64 letters, digits, '_', '.', '-'")
        return v

    @field_validator("effect")
    @classmethod
    def _effect(cls, v: str) -> str:
        return Effect.parse(v).value


class OutputConfig(BaseModel):
    """Where a stream's processed video goes besides the browser viewers."""

    publish: str | None = Field(None, min_length=1, max_length=MAX_URI)  # RTSP URL to push to (RECORD / MediaMTX path)
    record: str | None = Field(None, min_length=1, max_length=MAX_URI)  # file to record to (.mp4 / .mkv)


class BackendsConfig(BaseModel):
    segmenter: str = "auto"  # auto | classical | sam:vit_b|vit_l|vit_h
    propagator: str = "auto"  # auto | classical | aot:<variant>
    inpainter: str = "auto"  # auto | classical | e2fgvi:hq | e2fgvi:e2fgvi


class LimitsConfig(BaseModel):
    max_streams: int = Field(4, ge=1, le=256)
    max_viewers: int = Field(8, ge=1, le=1024)  # per stream
    max_objects: int = Field(20, ge=1, le=1000)  # per stream; object ids run from 1 to this
    max_message_bytes: int = Field(65536, ge=256, le=2**24)  # WebSocket messages and JSON bodies
    max_offer_bytes: int = Field(65536, ge=4096, le=2**20)  # WebRTC offers (a browser's SDP is 3-10 KB)
    # decoded frames waiting for the worker (drop-oldest beyond): room for a click's catch-up (about
    # 2 s at 15 fps), which hurried (cheap) steps then drain, so frames are not dropped
    queue_frames: int = Field(32, ge=1, le=1024)


class AllowConfig(BaseModel):
    """What API clients may name as sources and outputs (the config file's own sources are trusted)."""

    schemes: list[str] = Field(default_factory=lambda: ["synthetic"])  # source URI schemes: synthetic, file,
    # rtsp, rtsps, http, https, srt, udp, tcp, rtmp
    hosts: list[str] = Field(default_factory=list)  # host names or CIDRs network sources and publish targets may name
    folders: list[str] = Field(default_factory=list)  # folders file sources and recordings must lie in


class SecurityConfig(BaseModel):
    token: str | None = Field(None, min_length=8, max_length=512)  # every request but /healthz/* then needs it
    metrics_token: str | None = Field(None, min_length=8, max_length=512)  # /metrics also takes this one
    hosts: list[str] = Field(default_factory=list)  # Host names besides localhost, 127.0.0.1, [::1] and the
    # listen address ("*" = any: only behind a proxy that checks Host itself)
    origins: list[str] = Field(default_factory=list)  # browser Origins besides this server's own pages; "*" = any
    insecure: bool = False  # listen beyond loopback without a token (never on an untrusted network)
    allow: AllowConfig = Field(default_factory=AllowConfig)


class IceConfig(BaseModel):
    loopback: bool = False  # also offer a 127.0.0.1 candidate (aioice skips loopback): tests, same-host use
    stun: list[str] = Field(default_factory=list)  # e.g. ["stun:stun.l.google.com:19302"]; empty = host only


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNSEEN_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    sources: list[SourceConfig] = Field(default_factory=list)
    outputs: dict[str, OutputConfig] = Field(default_factory=dict)  # stream name -> outputs
    delay: int | None = Field(None, ge=0)  # output delay in frames; None = what the inpainter needs
    backends: BackendsConfig = Field(default_factory=BackendsConfig)
    device: str = "cpu"
    runtime: Literal["pipelined", "sequential"] = "pipelined"  # each stage on its own worker, or one thread
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    ice: IceConfig = Field(default_factory=IceConfig)
    demo: bool = True  # with no sources configured, serve the synthetic scene looped as stream "demo"

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource):
        # the environment overrides the file (the file arrives as init kwargs)
        return env_settings, init_settings

    def effective_sources(self) -> list[SourceConfig]:
        if self.sources or not self.demo:
            return list(self.sources)
        return [SourceConfig(name="demo", uri=DEMO_URI, loop=True)]


def read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; check the path or run 'unseen config default'")
    kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSON/TOML errors are ValueErrors
        cause = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {str(p)!r} is not valid {kind} ({cause}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table of settings, not a {type(data).__name__}; "
                          f"see 'unseen config default'")
    return data


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token, unless ``security.insecure`` says so."""
    if is_loopback(settings.host) or settings.security.token or settings.security.insecure:
        return
    raise ConfigError(f"refusing to listen on {settings.host} without an access token (anyone who reaches it could "
                      f"drive the server); set security.token (UNSEEN_SECURITY__TOKEN), or pass --insecure on a "
                      f"trusted network")


def load(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file (optional), the environment and ``overrides`` (CLI flags, strongest)."""
    data = read_file(path) if path else {}
    try:
        settings = Settings(**data)
        for k, v in overrides.items():  # flags win over the environment and the file
            if v is not None:
                if k == "insecure":
                    settings.security.insecure = bool(v)
                else:
                    setattr(settings, k, v)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"config setting {where!r}: {str(first['msg']).splitlines()[0][:200]}; fix it in the "
                          f"file or the UNSEEN_ environment variable") from None
    names = [s.name for s in settings.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"stream name(s) {', '.join(sorted(dup))} used twice in sources; give each stream its "
                          f"own name")
    check_bind(settings)
    return settings


DEFAULT_TOML = '''\
# unseen serve configuration (TOML; JSON with the same keys works too).
# Every setting can be overridden by an environment variable: prefix UNSEEN_, nested keys
# joined by "__", e.g. UNSEEN_PORT=9000, UNSEEN_LIMITS__MAX_STREAMS=2,
# UNSEEN_BACKENDS__INPAINTER=classical, UNSEEN_SOURCES='[{"name":"cam","uri":"rtsp://host/cam"}]'.

host = "127.0.0.1"        # listen address; beyond loopback ("0.0.0.0") a security.token is required
port = 8080               # one port: browser client, WebRTC signalling, /ws, /api, /metrics, /healthz
# delay = 5               # output delay in frames (fixed); unset = what the inpainter needs
device = "cpu"            # cpu or cuda[:N] for the neural backends
runtime = "pipelined"     # pipelined: track and inpaint on their own workers; sequential: one thread
demo = true               # with no [[sources]], serve the synthetic scene looped as stream "demo"

[backends]                # per stage: auto | classical | sam:vit_b | aot:r50_deaotl | e2fgvi:hq ...
segmenter = "auto"
propagator = "auto"
inpainter = "auto"

[limits]
max_streams = 4           # the next stream is refused
max_viewers = 8           # per stream; the next viewer is refused
max_objects = 20          # per stream; object ids run from 1 to this
max_message_bytes = 65536 # WebSocket messages and JSON request bodies
max_offer_bytes = 65536   # WebRTC offers
queue_frames = 32         # decoded frames waiting for processing (a click's catch-up); beyond, the oldest is dropped (and counted)

[security]                # see README, "Security"
# token = "a long random string"   # every request but /healthz/* then needs "Authorization: Bearer TOKEN" (or ?token=)
# metrics_token = "another one"    # /metrics also takes this one (for a Prometheus scraper)
hosts = []                # Host names the server answers besides localhost, 127.0.0.1, [::1] and the listen address
origins = []              # browser Origins allowed besides this server's own pages; ["*"] = any
insecure = false          # true (or --insecure) to listen beyond loopback without a token

[security.allow]          # what API clients may name as a source or output (config-file sources are trusted)
schemes = ["synthetic"]   # source URI schemes: synthetic, file, rtsp, rtsps, http, https, srt, udp, tcp, rtmp
hosts = []                # host names or CIDRs for network sources and publish targets, e.g. ["10.0.0.0/24"]
folders = []              # folders that file sources and recordings must lie in

[ice]
loopback = false          # also offer a 127.0.0.1 ICE candidate (same-host browsers, tests)
stun = []                 # e.g. ["stun:stun.l.google.com:19302"] for viewers behind NAT

# One [[sources]] table per stream.
# [[sources]]
# name = "cam"
# uri = "rtsp://127.0.0.1:8554/cam"   # RTSP (TCP, reconnects), file, http URL, or synthetic://NAME
# loop = false                        # files: loop at the end
# effect = "remove"                   # remove | blur | pixelate | fill | overlay (for new objects)
# open_timeout = 10.0
# read_timeout = 5.0                  # seconds without a frame = stalled -> reconnect

# Outputs per stream name.
# [outputs.cam]
# publish = "rtsp://127.0.0.1:8554/cam-unseen"   # push the processed stream (H.264, no B-frames)
# record = "cam-unseen.mp4"                      # also record it to a file
'''
