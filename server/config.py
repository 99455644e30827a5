"""Typed configuration of ``unseen serve`` (pydantic-settings).

Sources of settings, strongest first: command-line flags (``--host``/``--port``),
environment variables (prefix ``UNSEEN_``, nested with ``__``, e.g.
``UNSEEN_LIMITS__MAX_STREAMS=2`` or ``UNSEEN_SOURCES='[{"name":"cam","uri":"rtsp://..."}]'``),
the config file (TOML or JSON, read with the standard library), then the defaults.
``unseen config default`` prints :data:`DEFAULT_TOML`, a commented file equal to the defaults.
"""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from unseen.engine.effects import Effect

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEMO_URI = "synthetic://demo"


class ConfigError(ValueError):
    """The configuration cannot be read or is invalid (one line with the fix)."""


class SourceConfig(BaseModel):
    """A stream's source: anything PyAV opens (file, http, rtsp://), or ``synthetic://NAME``."""

    name: str
    uri: str
    loop: bool = False  # files: start again at the end
    effect: str = "remove"  # effect of new objects: remove | blur | pixelate | fill | overlay
    open_timeout: float = 10.0  # seconds to open the source
    read_timeout: float = 5.0  # seconds without a frame before the source counts as stalled
    width: int = 432  # synthetic:// sources only
    height: int = 240
    fps: float = 15.0  # synthetic:// sources only (files and cameras keep their own rate)

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

    publish: str | None = None  # RTSP URL to push to (a RECORD mount / MediaMTX path)
    record: str | None = None  # file to record to (.mp4 / .mkv), finished when the stream closes


class BackendsConfig(BaseModel):
    segmenter: str = "auto"  # auto | classical | sam:vit_b|vit_l|vit_h
    propagator: str = "auto"  # auto | classical | aot:<variant>
    inpainter: str = "auto"  # auto | classical | e2fgvi:hq | e2fgvi:e2fgvi


class LimitsConfig(BaseModel):
    max_streams: int = Field(4, ge=1)
    max_viewers: int = Field(8, ge=1)  # per stream
    max_message_bytes: int = Field(65536, ge=256)  # WebSocket messages and HTTP bodies
    origins: list[str] = Field(default_factory=list)  # allowed Origins besides the server's own; "*" = any
    token: str | None = None  # when set: control and publish need "Authorization: Bearer TOKEN" or ?token=
    # decoded frames waiting for the worker (drop-oldest beyond): room for a click's catch-up (about
    # 2 s at 15 fps), which hurried (cheap) steps then drain, so frames are not dropped
    queue_frames: int = Field(32, ge=1)


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
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
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
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        return tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid {'JSON' if p.suffix == '.json' else 'TOML'} "
                          f"({exc}); fix the syntax") from None


def load(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file (optional), the environment and ``overrides`` (CLI flags, strongest)."""
    data = read_file(path) if path else {}
    try:
        settings = Settings(**data)
        for k, v in overrides.items():  # flags win over the environment and the file
            if v is not None:
                setattr(settings, k, v)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"config setting {where!r}: {first['msg']}; fix it in the file or the UNSEEN_ "
                          f"environment variable") from None
    names = [s.name for s in settings.sources]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"stream name(s) {', '.join(sorted(dup))} used twice in sources; give each stream its "
                          f"own name")
    return settings


DEFAULT_TOML = '''\
# unseen serve configuration (TOML; JSON with the same keys works too).
# Every setting can be overridden by an environment variable: prefix UNSEEN_, nested keys
# joined by "__", e.g. UNSEEN_PORT=9000, UNSEEN_LIMITS__MAX_STREAMS=2,
# UNSEEN_BACKENDS__INPAINTER=classical, UNSEEN_SOURCES='[{"name":"cam","uri":"rtsp://host/cam"}]'.

host = "127.0.0.1"        # listen address ("0.0.0.0" for every interface)
port = 8080               # one port: browser client, WebRTC signalling, /ws, /api, /metrics, /healthz
# delay = 5               # output delay in frames (fixed); unset = what the inpainter needs
device = "cpu"            # cpu or cuda[:N] for the neural backends
demo = true               # with no [[sources]], serve the synthetic scene looped as stream "demo"

[backends]                # per stage: auto | classical | sam:vit_b | aot:r50_deaotl | e2fgvi:hq ...
segmenter = "auto"
propagator = "auto"
inpainter = "auto"

[limits]
max_streams = 4           # the next stream is refused
max_viewers = 8           # per stream; the next viewer is refused
max_message_bytes = 65536 # WebSocket messages and request bodies
origins = []              # allowed browser Origins besides this server's own; ["*"] = any
# token = "secret"        # control and publish then need "Authorization: Bearer secret" (or ?token=)
queue_frames = 32         # decoded frames waiting for processing (a click's catch-up); beyond, the oldest is dropped (and counted)

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
