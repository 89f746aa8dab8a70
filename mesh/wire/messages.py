"""The messages that travel in frames, and their msgpack form.

Every frame holds one `Envelope`: a link sequence number and one message. Bodies and
header values are bytes, so any body (binary, non-UTF-8) and any header crosses exactly.
Decoding checks every field's type and range: a frame from an authentic sender can still
be malformed, and is then refused with `MessageError`, never half-trusted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeAlias

import msgpack

from ..errors import MessageError
from .bounded import DecodeError, MsgpackBounds, unpack

Headers: TypeAlias = tuple[tuple[bytes, bytes], ...]

_ID = re.compile(r"[0-9a-f]{32}")
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110's token
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # no controls but tab
_OP = re.compile(r"[a-z][a-z0-9-]{0,31}")
MAX_TARGET = 16 * 1024
MAX_HEADERS = 1000
MAX_HEADER_BYTES = 64 * 1024


class Kind(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    FRAGMENT = 3
    CONTROL = 4
    DATAGRAM = 5


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request for the recipient's upstream. `target` is path plus query."""

    id: str
    method: str
    target: str
    headers: Headers
    body: bytes
    deadline: float  # wall-clock seconds after which it must not be forwarded
    body_length: int | None = None  # set when the body comes as fragments (`body` empty)
    body_id: str | None = None  # then: the transfer its fragments name

    @property
    def unsized(self) -> bool:
        """Whether its body comes as fragments of a length not known when it left (the
        caller did not say it): its sender tells it at the end, in an ``ended`` note."""
        return self.body_id is not None and self.body_length is None


@dataclass(frozen=True, slots=True)
class Response:
    """The upstream's answer to request `id`, as it gave it."""

    id: str
    status: int
    headers: Headers
    body: bytes
    body_length: int | None = None  # set when the body comes as fragments (`body` empty)
    body_id: str | None = None  # then: the transfer its fragments name

    @property
    def head(self) -> bool:
        """Whether this is only the head of a response whose body streams: its fragments
        (of `body_id`, their total not known yet) follow it, and then the response
        again, whole (with `body_length`), or an ``abandon`` of the transfer."""
        return self.body_id is not None and self.body_length is None


@dataclass(frozen=True, slots=True)
class Fragment:
    """Bytes `offset .. offset+len(data)` of a body of `total` bytes (None: a body that
    streams, its size not known yet): the body of message `id` (a request or response)
    sent as `transfer`. A transfer id is new for each attempt to send a body, so
    fragments of an abandoned attempt never mix with a later one."""

    id: str
    transfer: str
    index: int
    offset: int
    total: int | None
    data: bytes

    def fits(self, length: int) -> bool:
        """Whether `length` bytes of data at its offset stay within its total."""
        return self.total is None or self.offset + length <= self.total


@dataclass(frozen=True, slots=True)
class Control:
    """A protocol note between peers (e.g. which sequence numbers are missing)."""

    op: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Datagram:
    """Opaque bytes for the recipient's message queue (`/mesh/messages`), no HTTP meaning."""

    id: str
    body: bytes


Message: TypeAlias = Request | Response | Fragment | Control | Datagram


def kind_of(message: Message) -> Kind:
    return _KINDS[type(message)]


@dataclass(frozen=True, slots=True)
class Envelope:
    seq: int
    message: Message


def pack(envelope: Envelope) -> bytes:
    """The msgpack bytes of `envelope`: ``[kind, seq, *fields]``."""
    m = envelope.message
    fields: list[Any]
    if isinstance(m, Request):
        fields = [
            Kind.REQUEST,
            m.id,
            m.method,
            m.target,
            _headers_out(m.headers),
            m.body,
            float(m.deadline),
            m.body_length,
            m.body_id,
        ]
    elif isinstance(m, Response):
        fields = [
            Kind.RESPONSE,
            m.id,
            m.status,
            _headers_out(m.headers),
            m.body,
            m.body_length,
            m.body_id,
        ]
    elif isinstance(m, Fragment):
        fields = [Kind.FRAGMENT, m.id, m.transfer, m.index, m.offset, m.total, m.data]
    elif isinstance(m, Datagram):
        fields = [Kind.DATAGRAM, m.id, m.body]
    else:
        fields = [Kind.CONTROL, m.op, dict(m.args)]
    fields.insert(1, envelope.seq)
    return bytes(msgpack.packb(fields, use_bin_type=True))


_EMPTY_BIN = b"\xc4\x00"
_FRAGMENT_HEAD = 256  # bytes: a fragment's fields before its data fit in this
_BIN_LENGTH_SIZE = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8/16/32: bytes of its length


def fragment_head(packed: bytes, length: int) -> bytes:
    """The start of the frame of a fragment `pack`ed with empty data (`packed`) once
    `length` bytes of data follow it: with the data appended, it unpacks as that
    fragment with the data (msgpack bin 32). So the data can be read straight into the
    frame's buffer, never copied by msgpack."""
    if not packed.endswith(_EMPTY_BIN):
        raise ValueError("not a fragment packed with empty data")
    return packed[: -len(_EMPTY_BIN)] + b"\xc6" + length.to_bytes(4, "big")


def unpack_fragment(frame: bytes | memoryview, max_body: int) -> tuple[Envelope, memoryview] | None:
    """A fragment's envelope (with empty data) and a view of its data in `frame`, the data
    not copied; None when `frame` is not a fragment with its data last (unpack it whole
    with `unpack_envelope`). MessageError for a malformed one."""
    head = bytes(frame[:_FRAGMENT_HEAD])
    if len(head) < 2 or head[0] != 0x98 or head[1] != Kind.FRAGMENT:  # an array of 8
        return None
    unpacker = msgpack.Unpacker(max_buffer_size=len(head), max_bin_len=0, max_ext_len=0)
    unpacker.feed(head)
    try:
        unpacker.read_array_header()
        for _ in range(7):
            unpacker.skip()
    except (ValueError, msgpack.UnpackException):  # OutOfData is one
        return None
    at = unpacker.tell()
    size = _BIN_LENGTH_SIZE.get(head[at]) if at < len(head) else None
    if size is None or at + 1 + size > len(head):
        return None
    start = at + 1 + size
    if start + int.from_bytes(head[at + 1 : start], "big") != len(frame):
        return None
    envelope = unpack_envelope(head[:at] + _EMPTY_BIN, max_body)
    data = memoryview(frame)[start:]
    fragment = envelope.message
    assert isinstance(fragment, Fragment)
    _check(len(data) <= max_body, "fragment data over the limit")
    _check(fragment.fits(len(data)), "fragment past its total")
    return envelope, data


def unpack_envelope(data: bytes | memoryview, max_body: int) -> Envelope:
    """The envelope in `data`; `MessageError` saying what is wrong otherwise."""
    try:
        obj = unpack(data, MsgpackBounds(max_bin=max_body, max_array=2 * MAX_HEADERS + 8))
    except DecodeError as exc:
        raise MessageError(str(exc)) from None
    if not isinstance(obj, list) or len(obj) < 2:
        raise MessageError("a frame must hold [kind, seq, ...]")
    kind, seq, *rest = obj
    _check(type(seq) is int and seq >= 0, "seq must be a whole number >= 0")
    decoder = _DECODERS.get(kind) if type(kind) is int else None
    if decoder is None:
        raise MessageError(f"unknown message kind {kind!r}")
    arity = _ARITY[kind]
    _check(len(rest) == arity, f"{Kind(kind).name.lower()} needs {arity} fields")
    return Envelope(seq, decoder(rest))


UNREADABLE = "unreadable"  # the op of a note standing for a request or response refused


def unreadable(data: bytes | memoryview, problem: str) -> tuple[Kind, Control] | None:
    """For a frame `unpack_envelope` refused with `problem`: when it still reads as a
    request or response with an id, its kind and a note standing for it
    (``Control(UNREADABLE, {"id", "problem"})``), so that the request can be answered (or
    ended) rather than left waiting; None otherwise. Bounded by the frame's own size."""
    try:
        obj = unpack(data, MsgpackBounds(max_bin=len(data), max_array=len(data)))
    except DecodeError:
        return None
    if not (isinstance(obj, list) and len(obj) > 2 and obj[0] in _ANSWERABLE):
        return None
    if type(obj[0]) is not int or not is_id(obj[2]):
        return None
    return Kind(obj[0]), Control(UNREADABLE, {"id": obj[2], "problem": problem[:200]})


def _check(ok: bool, problem: str) -> None:
    if not ok:
        raise MessageError(problem)


_ANSWERABLE = (Kind.REQUEST, Kind.RESPONSE)


def is_id(value: object) -> bool:
    """Whether `value` is a message or transfer id: 32 lowercase hex digits."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _id(value: Any) -> str:
    _check(is_id(value), "bad id")
    return str(value)


def _count(value: Any, what: str) -> int:
    _check(type(value) is int and value >= 0, f"{what} must be a whole number >= 0")
    return int(value)


def _bytes(value: Any, what: str) -> bytes:
    _check(isinstance(value, bytes), f"{what} must be bytes")
    return bytes(value)


def _headers_out(headers: Headers) -> list[bytes]:
    return [part for pair in headers for part in pair]


def valid_headers(headers: Headers) -> bool:
    """Whether each name is a token and each value free of control characters (but tab),
    as HTTP/1.1 may carry them."""
    return all(
        _FIELD_NAME.fullmatch(name) and _FIELD_VALUE.fullmatch(value) for name, value in headers
    )


def headers_fit(headers: Headers) -> bool:
    """Whether `headers` are few and small enough to cross (`MAX_HEADERS` pairs of
    `MAX_HEADER_BYTES` in all)."""
    size = sum(len(name) + len(value) for name, value in headers)
    return len(headers) <= MAX_HEADERS and size <= MAX_HEADER_BYTES


def _headers_in(value: Any) -> Headers:
    _check(isinstance(value, list) and len(value) % 2 == 0, "headers must be name/value pairs")
    _check(all(isinstance(v, bytes) for v in value), "header names and values must be bytes")
    _check(sum(len(v) for v in value) <= MAX_HEADER_BYTES, "headers too large")
    pairs = tuple(zip(value[0::2], value[1::2], strict=True))
    _check(valid_headers(pairs), "a header name or value HTTP/1.1 cannot carry")
    return pairs


def _fragmented(length: Any, transfer: Any, body: bytes) -> tuple[int | None, str | None]:
    """(None, None) for an inline body, or the length and transfer id of a body that
    comes as fragments (the length None while it is not known: a response's head,
    `Response.head`; a request whose body's size its caller did not say,
    `Request.unsized`)."""
    if length is None and transfer is None:
        return None, None
    if length is None:
        _check(not body, "a body of a length not known yet is not inline too")
        return None, _id(transfer)
    _check(type(length) is int and length >= 0, "body length must be a whole number >= 0")
    _check(not body, "a body that comes as fragments is not inline too")
    return int(length), _id(transfer)


def valid_method(method: object) -> bool:
    """Whether `method` is an HTTP method a request may carry (a token of 1 to 32)."""
    return isinstance(method, str) and _METHOD.fullmatch(method) is not None


def valid_target(method: str, target: object) -> bool:
    """Whether `target` is one a request of `method` may carry: origin-form
    (``/path?query``), printable ASCII without spaces, of at most `MAX_TARGET`
    characters; or ``*`` for ``OPTIONS`` (the server itself)."""
    if method == "OPTIONS" and target == "*":
        return True
    return (
        isinstance(target, str)
        and target.startswith("/")
        and len(target) <= MAX_TARGET
        and target.isascii()
        and target.isprintable()
        and " " not in target
    )


def _request(f: list[Any]) -> Request:
    id_, method, target, headers, body, deadline, length, transfer = f
    _check(valid_method(method), "bad method")
    _check(valid_target(method, target), "bad target")
    _check(type(deadline) is float and math.isfinite(deadline), "bad deadline")
    body = _bytes(body, "body")
    length, transfer = _fragmented(length, transfer, body)
    return Request(_id(id_), method, target, _headers_in(headers), body, deadline, length, transfer)


def _response(f: list[Any]) -> Response:
    id_, status, headers, body, length, transfer = f
    _check(type(status) is int and 100 <= status <= 599, "bad status")
    body = _bytes(body, "body")
    length, transfer = _fragmented(length, transfer, body)
    return Response(_id(id_), status, _headers_in(headers), body, length, transfer)


def _fragment(f: list[Any]) -> Fragment:
    id_, transfer, index, offset, total, data = f
    fragment = Fragment(
        _id(id_),
        _id(transfer),
        _count(index, "index"),
        _count(offset, "offset"),
        None if total is None else _count(total, "total"),
        _bytes(data, "data"),
    )
    _check(fragment.fits(len(fragment.data)), "fragment past its total")
    return fragment


def _control(f: list[Any]) -> Control:
    op, args = f
    _check(isinstance(op, str) and _OP.fullmatch(op) is not None, "bad control op")
    _check(isinstance(args, dict), "control args must be a map")
    return Control(op, args)


def _datagram(f: list[Any]) -> Datagram:
    id_, body = f
    return Datagram(_id(id_), _bytes(body, "body"))


_KINDS: dict[type, Kind] = {
    Request: Kind.REQUEST,
    Response: Kind.RESPONSE,
    Fragment: Kind.FRAGMENT,
    Control: Kind.CONTROL,
    Datagram: Kind.DATAGRAM,
}
_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    Kind.REQUEST: _request,
    Kind.RESPONSE: _response,
    Kind.FRAGMENT: _fragment,
    Kind.CONTROL: _control,
    Kind.DATAGRAM: _datagram,
}
_ARITY: dict[int, int] = {
    Kind.REQUEST: 8,
    Kind.RESPONSE: 6,
    Kind.FRAGMENT: 6,
    Kind.CONTROL: 2,
    Kind.DATAGRAM: 2,
}
