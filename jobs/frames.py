"""The AMQP frames of a Basic.Publish, byte for byte as py-amqp writes them, faster.

A bulk publish spent most of its time in py-amqp's pure-Python serialization of
each message's properties and header table, then in one socket write per message.
Here the frames of a whole chunk of messages are built into one buffer, written
with one call: the method frame is made once per destination, and the properties
of the few types Celery's messages use are packed directly. Any property or header
value of another type goes through py-amqp's own serializer, so the bytes are
always what py-amqp would send (jobs/tests/test_units.py compares them).
"""

from __future__ import annotations

from struct import Struct, pack

import amqp
from amqp import spec
from amqp.exceptions import FrameSyntaxError
from amqp.serialization import _write_item, dumps

_FRAME_HEADER = Struct(">BHI")  # type, channel, payload size
_FRAME_END = b"\xce"
_HEADER_START = Struct(">HHQ")  # class id, weight, body size
assert spec.Basic.Publish[0] == 60
_SHORT_LEN = Struct("B")
LONG_LEN = Struct(">I")
_LONG_STR = Struct(">cI")
_INT = Struct(">ci")

# (name, type) of every Basic property, in the order their flag bits run.
_PROPERTIES = amqp.Message.PROPERTIES
assert len(_PROPERTIES) <= 15, "one flag word holds them all"


def _frame(type_: int, channel: int, payload: bytes) -> bytes:
    return b"".join((_FRAME_HEADER.pack(type_, channel, len(payload)), payload, _FRAME_END))


def shortstr(value) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return _SHORT_LEN.pack(len(value)) + value


def table_items(table: dict) -> bytes:
    """The items of a field table, without the table's length in front."""
    parts = []
    for key, value in table.items():
        parts.append(shortstr(key))
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
            parts.append(_LONG_STR.pack(b"S", len(value)))
            parts.append(value)
        elif isinstance(value, bool):
            parts.append(b"t\x01" if value else b"t\x00")
        elif isinstance(value, int) and -2147483647 <= value <= 2147483647:
            parts.append(_INT.pack(b"I", value))
        else:
            try:
                _write_item(value, parts.append, [])  # any other type, as py-amqp writes it
            except ValueError:
                raise FrameSyntaxError(f"Table type {type(value)!r} for key {key!r} not handled") from None
    return b"".join(parts)


def _table(table: dict) -> bytes:
    data = table_items(table)
    return LONG_LEN.pack(len(data)) + data


def property_flags(names) -> bytes:
    """The flag word of a content header whose properties are exactly `names`."""
    flags = 0
    for shift, (name, _) in zip(range(15, 0, -1), _PROPERTIES, strict=False):
        if name in names:
            flags |= 1 << shift
    return pack(">H", flags)


def properties(message: amqp.Message) -> bytes:
    """The property flags and list of a content header frame."""
    props = message.properties
    flags, parts = 0, []
    for shift, (name, kind) in zip(range(15, 0, -1), _PROPERTIES, strict=False):
        value = props.get(name)
        if value is None:
            continue
        flags |= 1 << shift
        if kind == "s":
            parts.append(shortstr(value or ""))
        elif kind == "o":
            parts.append(_SHORT_LEN.pack(value))
        elif kind == "F":
            parts.append(_table(value or {}))
        else:
            parts.append(dumps(kind, [value]))
    return pack(">H", flags) + b"".join(parts)


class PublishFrames:
    """Builds the frames of Basic.Publish messages for one channel."""

    def __init__(self, channel_id: int, frame_max: int):
        self.channel_id = channel_id
        self.body_max = frame_max - 8  # py-amqp's chunk size for body frames
        self._methods: dict[tuple, bytes] = {}

    def method(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        key = (exchange, routing_key, mandatory)
        frame = self._methods.get(key)
        if frame is None:
            payload = pack(">HH", *spec.Basic.Publish) + dumps(
                "Bssbb", (0, exchange, routing_key, mandatory, False)
            )
            frame = self._methods[key] = _frame(1, self.channel_id, payload)
        return frame

    def publish(self, message: amqp.Message, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        """The method, header and body frames of one message."""
        body = message.body
        if isinstance(body, str):
            body = body.encode(message.properties.setdefault("content_encoding", "utf-8"))
        return self.publish_raw(properties(message), body, exchange, routing_key, mandatory)

    def publish_raw(
        self, properties: bytes, body: bytes, exchange: str, routing_key: str, mandatory: bool
    ) -> bytes:
        """The frames of one message whose property flags and list are `properties`."""
        channel_id = self.channel_id
        header = _HEADER_START.pack(60, 0, len(body)) + properties  # 60: the Basic class
        parts = [
            self.method(exchange, routing_key, mandatory),
            _FRAME_HEADER.pack(2, channel_id, len(header)), header, _FRAME_END,
        ]  # fmt: skip
        if len(body) <= self.body_max:
            if body:
                parts += (_FRAME_HEADER.pack(3, channel_id, len(body)), body, _FRAME_END)
        else:
            for start in range(0, len(body), self.body_max):
                parts.append(_frame(3, channel_id, body[start : start + self.body_max]))
        return b"".join(parts)
