"""WireSchema: the worker's topics hand every message to their agent as the bytes on the wire;
TableSchema: its tables' changelog messages decode as faust decodes them, faster."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.exceptions import KeyDecodeError
from faust.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.app.kafka import SKIPPED_KEY, TableSchema, WireSchema
from streamer.app.tables import encode_key


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


# -- TableSchema: the tables' changelog messages -------------------------------------------------
def tables(a: faust.App) -> tuple[Any, Any]:
    """A table with TableSchema and one as the worker had it (faust's Schema)."""
    ours = a.Table("ours", schema=TableSchema(), key_type=str, value_type=bytes)
    stock = a.Table("stock", schema=faust.Schema(key_type=str, value_type=bytes,
                                                 key_serializer="raw", value_serializer="raw"),
                    key_type=str, value_type=bytes)
    return ours, stock


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=40), value=st.none() | st.binary(max_size=40))
def test_changelog_events_are_the_ones_faust_decodes(key: str, value: bytes | None) -> None:
    ours, stock = tables(app())
    # Keys as the worker's tables write them (BufferedTable.flush: faust's JSON, byte for byte).
    msg = message(encode_key(key), value)
    mine, theirs = decode(ours.changelog_topic, msg), decode(stock.changelog_topic, msg)
    assert type(mine) is type(theirs)
    assert (mine.key, mine.value, mine.headers) == (theirs.key, theirs.value, theirs.headers)
    assert mine.key == key


@pytest.mark.parametrize("key", [
    b"not json",  # faust's KeyDecodeError: skipped by the conductor, unseen by recovery
    b'"\xff"',  # not UTF-8: raised UnicodeDecodeError, past faust's conductor
    b"[" * 5000 + b"]" * 5000,  # raised RecursionError
    b"5", b'["tea"]', b"null",  # JSON, but no key a worker's str-keyed table writes
])
def test_a_changelog_record_whose_key_is_no_json_string_is_a_tombstone_of_no_key(
        key: bytes) -> None:
    # Raised, the record stopped the worker (and every restart, recovering the table); skipped
    # as a KeyDecodeError, recovery never saw its offset and a restart waited for it for good.
    ours, stock = tables(app())
    ours.data["tea"] = b"1.5"
    event = decode(ours.changelog_topic, message(key, b"v"))
    assert (event.key, event.value, event.message.value) == (SKIPPED_KEY, None, None)
    assert event.message.offset == 7  # what recovery counts
    ours.apply_changelog_batch([event])
    assert dict(ours.data) == {"tea": b"1.5"}
    if key == b"not json":
        with pytest.raises(KeyDecodeError):  # what faust's own schema does
            decode(stock.changelog_topic, message(key, b"v"))


def test_other_serializers_take_fausts_path() -> None:
    schema = TableSchema()
    schema.update(key_serializer="raw")
    topic = app().topic("t", schema=schema)
    assert decode(topic, message(b"tea", b"v")).key == "tea"  # raw: faust's str of the bytes
