"""Whatever arrives on a topic, decoding either yields a model or raises InvalidEvent."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.events import EventCodec, InvalidEvent

codec = EventCodec(max_message_bytes=4096)
DECODERS = [codec.decode_click, codec.decode_purchase, codec.decode_offer]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["event_id", "ts", "items", "kind", "user_id", "x"])
                      | st.text(max_size=8), children, max_size=6),
    max_leaves=20,
)


def decodes_or_rejects(raw: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(raw)
        except InvalidEvent as e:
            assert e.kind in ("too_large", "not_json", "schema")
            assert 0 < len(e.reason) <= 1000


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes(raw: bytes) -> None:
    decodes_or_rejects(raw)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json(value: object) -> None:
    decodes_or_rejects(json.dumps(value).encode())


def test_a_null_value_is_rejected_not_a_crash() -> None:
    # A record with a null value (a tombstone) reaches the agents as None.
    for decode in DECODERS:
        try:
            decode(None)  # type: ignore[arg-type]
        except InvalidEvent as e:
            assert e.kind == "not_json" and "null value" in e.reason
        else:
            raise AssertionError("decoded None")
