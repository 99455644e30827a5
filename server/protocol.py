"""The one validation layer of ``unseen serve``: every message a client sends (REST bodies, WebSocket
messages, WebRTC offers) is parsed here, once, at the edge, into a typed and bounded object.

Nothing past this module reads raw client JSON.  The rules:

* JSON only as an object, nested at most :data:`MAX_DEPTH` deep, strings (keys too) at most
  :data:`MAX_STRING` characters, no ``NaN``/``Infinity``;
* every model forbids unknown keys and is strict: ``"false"`` is not a boolean, ``"5"`` not a number;
* numbers carry stated bounds: coordinates finite (inside the frame: the stream checks against its
  size), object ids 1 to ``max_objects``, frame indexes and timestamps 0 to 2**62;
* every failure is a :class:`ProtocolError`: one line, cause and fix, a 4xx status, no traceback.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from unseen.engine.effects import Effect

from .config import NAME, SourceConfig

MAX_DEPTH = 32
MAX_STRING = 4096
MAX_SDP = 65536  # characters of an SDP offer (a browser's is 3-10 KB)
MAX_INDEX = 2**62  # frame indexes and timestamps
NAME_PATTERN = NAME.pattern


class ProtocolError(ValueError):
    """A client message that cannot be accepted (one line: cause and fix); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ JSON
def _reject_constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number JSON allows; send finite numbers")


def _check_shape(value: Any, max_string: int) -> None:
    """Depth and string-length bounds, iteratively (a hostile body must not exhaust the stack)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            if len(item) > max_string:
                raise ProtocolError(f"a string of {len(item)} characters is over the {max_string}-character limit; "
                                    f"send shorter values")
        elif isinstance(item, (dict, list)):
            if level > MAX_DEPTH:
                raise ProtocolError(f"the JSON is nested deeper than {MAX_DEPTH} levels; send a flat object")
            children = list(item.keys()) + list(item.values()) if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)


def parse_json(raw: bytes | str, *, limit: int, max_string: int = MAX_STRING) -> dict[str, Any]:
    """A client's JSON text -> a bounded dict, or :class:`ProtocolError` (413 over ``limit`` bytes);
    ``max_string`` is raised only for an SDP offer."""
    size = len(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise ProtocolError(f"message of {size} bytes is over the {limit}-byte limit; send a smaller message", 413)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(f"the JSON is nested deeper than {MAX_DEPTH} levels; send a flat object") from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("the message is not a JSON object (not JSON at all); send {\"op\": ..., ...}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the message is not a JSON object (a JSON {type(value).__name__}); send {{...}}")
    _check_shape(value, max_string)
    return value


# ------------------------------------------------------------------------------ models
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


Coordinate = Annotated[float, Field(ge=-1e9, le=1e9)]
Index = Annotated[int, Field(ge=0, le=MAX_INDEX)]
ObjectId = Annotated[int, Field(ge=1, le=1000)]  # the stream's max_objects bounds it further (check_object)
StreamName = Annotated[str, Field(pattern=NAME_PATTERN)]
MessageId = Union[Annotated[int, Field(ge=-MAX_INDEX, le=MAX_INDEX)], Annotated[str, Field(max_length=64)], None]


class ClickBody(_Strict):
    """A prompt: a click (``x``, ``y`` in pixels of the frame), a ``box`` (x0, y0, x1, y1), or both, on
    ``object`` (None: a new one); ``pts`` (stream clock) or ``frame`` names the frame seen.  The stream
    checks both against its frame size (a box is clipped to it, one wholly outside is refused)."""

    x: Coordinate | None = None
    y: Coordinate | None = None
    positive: bool = True
    box: Annotated[list[Coordinate], Field(min_length=4, max_length=4)] | None = None
    object: ObjectId | None = None
    pts: Index | None = None
    frame: Index | None = None

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError(f"box [{v[0]:g}, {v[1]:g}, {v[2]:g}, {v[3]:g}] is empty or reversed; send "
                             f"[x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        return v

    @model_validator(mode="after")
    def _click_or_box(self) -> "ClickBody":
        if (self.x is None) != (self.y is None):
            raise ValueError("a click needs both x and y; send both, or neither with a box")
        if self.x is None and self.box is None:
            raise ValueError("the message has neither a click nor a box; send x and y, a box [x0, y0, x1, y1], "
                             "or both")
        if self.x is None and not self.positive:
            raise ValueError("'positive' applies to a click and there is none; send x and y with it")
        return self

    @property
    def click(self) -> tuple[float, float] | None:
        return None if self.x is None or self.y is None else (self.x, self.y)


class EffectBody(_Strict):
    effect: str = Field(max_length=32)

    @field_validator("effect")
    @classmethod
    def _known(cls, v: str) -> str:
        return Effect.parse(v).value


class OfferBody(_Strict):
    """A WebRTC offer (``publish``: the offer sends a webcam that becomes the stream)."""

    sdp: str = Field(min_length=1, max_length=MAX_SDP)
    type: Literal["offer"]
    publish: bool = False


class SdpOffer(_Strict):
    """An SDP offer sent as ``application/sdp`` (WHIP, WHEP): its text, bounded and shaped like SDP."""

    sdp: str = Field(min_length=1, max_length=MAX_SDP)


class StreamBody(SourceConfig):
    """``POST /api/streams``: a source and its outputs (the access allow-list checks what they name)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    publish: str | None = Field(None, min_length=1, max_length=MAX_STRING)
    record: str | None = Field(None, min_length=1, max_length=MAX_STRING)

    def source(self, uri: str) -> SourceConfig:
        return SourceConfig(**self.model_dump(exclude={"publish", "record", "uri"}), uri=uri)


# The WebSocket's requests: an envelope (id, op) and the op's fields.
class _Request(_Strict):
    id: MessageId = None


class StreamsRequest(_Request):
    op: Literal["streams"]


class _OnStream(_Request):
    stream: StreamName


class StateRequest(_OnStream):
    op: Literal["state"]


class ObjectsRequest(_OnStream):
    op: Literal["objects"]


class ClickRequest(_OnStream, ClickBody):
    op: Literal["click"]


class RemoveRequest(_OnStream):
    op: Literal["remove"]
    object: ObjectId


class ClearRequest(_OnStream):
    op: Literal["clear"]


class EffectRequest(_OnStream, EffectBody):
    op: Literal["effect"]
    object: ObjectId


class SubscribeRequest(_OnStream):
    op: Literal["subscribe"]
    every: Annotated[float, Field(ge=0.2, le=10.0)] = 1.0


class UnsubscribeRequest(_OnStream):
    op: Literal["unsubscribe"]


Request = Annotated[Union[StreamsRequest, StateRequest, ObjectsRequest, ClickRequest, RemoveRequest, ClearRequest,
                          EffectRequest, SubscribeRequest, UnsubscribeRequest], Field(discriminator="op")]
OPS = ("streams", "state", "objects", "click", "remove", "clear", "effect", "subscribe", "unsubscribe")
_REQUEST: TypeAdapter = TypeAdapter(Request)


# ------------------------------------------------------------------------------ parsing
def one_line(exc: ValidationError, what: str) -> str:
    """The first error of a pydantic validation as one line with the fix."""
    first = exc.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "body"
    message = str(first["msg"]).splitlines()[0][:300]
    if first["type"] == "value_error":  # a validator's own message
        message = message.removeprefix("Value error, ")
    return f"{what} {where!r}: {message}" + ("" if ";" in message else "; fix the message")


def parse(model: type[_Strict], data: dict[str, Any], what: str = "field") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(one_line(exc, what)) from None


def parse_request(data: dict[str, Any]) -> Any:
    """A WebSocket message (already bounded JSON) -> one of the request models."""
    op = data.get("op")
    if "op" not in data:
        raise ProtocolError("the message has no 'op'; send {\"id\": 1, \"op\": ..., ...}")
    if op not in OPS:
        shown = op if isinstance(op, str) and len(op) <= 32 else type(op).__name__
        raise ProtocolError(f"unknown op {shown!r}; use one of: {', '.join(OPS)}")
    try:
        return _REQUEST.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(_skip_tag(one_line(exc, "field"), str(op))) from None


def _skip_tag(line: str, op: str) -> str:
    # a discriminated union names the branch first ('click.x'); the client knows its op
    return line.replace(f"'{op}.", "'", 1).replace(f"'{op}':", "'body':", 1)


def parse_sdp(raw: bytes, *, limit: int) -> SdpOffer:
    """An ``application/sdp`` body -> :class:`SdpOffer`; 413 over ``limit`` bytes, 400 for what is not an
    SDP offer (aiortc judges the rest when it applies it)."""
    if len(raw) > limit:
        raise ProtocolError(f"SDP of {len(raw)} bytes is over the {limit}-byte limit; send a smaller offer", 413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the SDP is not UTF-8 text; send RTCPeerConnection.localDescription.sdp") from None
    if len(text) > MAX_SDP:
        raise ProtocolError(f"SDP of {len(text)} characters is over the {MAX_SDP}-character limit; send a "
                            f"smaller offer", 413)
    if not text.startswith("v=0") or "\x00" in text or "\nm=" not in text:
        raise ProtocolError("the body is not an SDP offer (it must start with 'v=0' and have an 'm=' line); "
                            "send RTCPeerConnection.localDescription.sdp")
    return SdpOffer(sdp=text)


def stream_name(text: str) -> str:
    """A stream name from a URL path segment, checked as every stream name is."""
    if not NAME.fullmatch(text):
        raise ProtocolError(f"stream name {text[:80]!r} must be 1-64 letters, digits, '_', '.', '-'; rename it")
    return text


def check_object(object_id: int | None, max_objects: int) -> None:
    if object_id is not None and not 1 <= object_id <= max_objects:
        raise ProtocolError(f"object id {object_id} is not between 1 and {max_objects}; use an id from the "
                            f"objects list")


def object_id_from_path(text: str, max_objects: int) -> int:
    """An object id from a URL path segment (digits only, 1 to ``max_objects``)."""
    if not text.isdigit() or len(text) > 6:
        raise ProtocolError(f"object id {text[:16]!r} is not a number; use an id from the objects list")
    value = int(text)
    check_object(value, max_objects)
    return value
