"""WireSchema: the worker's topics hand every message to their agent as the bytes on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.exceptions import KeyDecodeError
from faust.types import Message

from streamer.app.kafka import WireSchema


def app() -> faust.App:
    return faust.App("wire-schema-unit", broker="kafka://127.0.0.1:9", store="memory://")


def message(key: bytes | None, value: bytes | None) -> Message:
    return Message("t", 0, 7, 1_700_000_000.0, 0, [("h", b"1")], key, value, None)


def decode(topic: Any, msg: Message) -> Any:
    return asyncio.run(topic.decode(msg, propagate=True))


@pytest.mark.parametrize("key, value", [
    (b"session-1", b'{"event_id": "p1"}'),
    (None, b"not json at all"),
    (b"k", None),
])
def test_events_are_faust_s_own_for_raw_bytes(key: bytes | None, value: bytes | None) -> None:
    a = app()
    stock = a.topic("t", schema=faust.Schema(key_type=bytes, value_type=bytes,
                                             key_serializer="raw", value_serializer="raw"))
    wire = a.topic("t", schema=WireSchema())
    ours, theirs = decode(wire, message(key, value)), decode(stock, message(key, value))
    assert type(ours) is type(theirs) is a.conf.Event
    assert (ours.key, ours.value, ours.headers) == (theirs.key, theirs.value, theirs.headers)
    assert ours.message is not None and ours.message.offset == 7 and ours.app is a


def test_a_key_that_is_not_utf8_reaches_the_agent() -> None:
    a = app()
    msg = message(b"\xff\xfe\x00", b"{}")
    # What the worker's topics had (key_type=str): faust fails the message before any agent.
    as_str = a.topic("t", key_type=str, value_type=bytes, key_serializer="raw",
                     value_serializer="raw")
    with pytest.raises(KeyDecodeError):
        decode(as_str, msg)
    event = decode(a.topic("t", schema=WireSchema()), msg)
    assert (event.key, event.value) == (b"\xff\xfe\x00", b"{}")


def test_sending_str_keys_still_encodes_them_as_utf8() -> None:
    # The worker sends offer ids and policy versions as keys through these topics.
    a = app()
    key, _ = WireSchema().dumps_key(a, "v0-greedy", headers={})
    assert key == b"v0-greedy"
