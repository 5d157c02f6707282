"""EventCodec: round trips, rejections with the right ``kind``, and check_offer."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from streamer.events import (
    BundleOffer,
    ClickEvent,
    DeadLetter,
    EventCodec,
    Evidence,
    InvalidEvent,
    OrderLine,
    PurchaseEvent,
    RewardWindow,
    Variant,
    check_click,
    check_not_ahead,
    check_offer,
    internal_decoder,
    typed_decoder,
)
from streamer.events.codec import DEFAULT_MAX_MESSAGE_BYTES
from streamer.rewards import ImpressionOutcome

CODEC = EventCodec()
TS = 1_700_000_000_000

CLICK = ClickEvent(event_id="e1", ts=TS, user_id="u", session_id="s", item_id="i", kind="view")
OFFER_CLICK = ClickEvent(
    event_id="e2",
    ts=TS,
    user_id="u",
    session_id="s",
    item_id="a",
    kind="offer_click",
    offer_id="of-1",
    variant=1,
    propensity=0.5,
    price=12.5,
)
PURCHASE = PurchaseEvent(
    event_id="p1",
    ts=TS,
    user_id="u",
    session_id="s",
    order_id="o1",
    items=[
        OrderLine(item_id="a", quantity=2, unit_price=3.25),
        OrderLine(item_id="b", quantity=1, unit_price=0.0),
    ],
    offer_id="of-1",
)
EVIDENCE = Evidence(support=4.0, confidence=0.5, lift=2.0)


def variant(items: list[str], probability: float, score: float = 1.0) -> Variant:
    return Variant(
        items=items,
        discount_pct=10.0,
        bundle_price=9.0,
        probability=probability,
        score=score,
        evidence=EVIDENCE,
    )


def offer(*variants: Variant, anchor: str = "a") -> BundleOffer:
    return BundleOffer(
        offer_id="of-1",
        ts=TS,
        anchor_item_id=anchor,
        segment="all",
        policy_version="v1",
        variants=list(variants),
        expires_at=TS + 60_000,
    )


OFFER = offer(variant(["a", "b"], 0.75), variant(["a", "b", "c"], 0.25, score=-2.0))
REWARD = RewardWindow(
    window_start=TS,
    window_end=TS + 60_000,
    policy_version="v1",
    impressions=10,
    offer_clicks=2,
    conversions=1,
    revenue=9.0,
    reward_rate=0.9,
    ci95=[0.0, 2.5],
    segment="all",
)
DEAD = DeadLetter(
    ts=TS,
    source_topic="clicks",
    partition=0,
    offset=42,
    kind="not_json",
    reason="JSON is malformed",
    value_b64="e30=",
)

DECODERS: dict[type[Any], Callable[[bytes], Any]] = {
    ClickEvent: CODEC.decode_click,
    PurchaseEvent: CODEC.decode_purchase,
    BundleOffer: CODEC.decode_offer,
    RewardWindow: CODEC.decode_reward,
    DeadLetter: CODEC.decode_dead_letter,
}
MODELS = [CLICK, OFFER_CLICK, PURCHASE, OFFER, REWARD, DEAD]
VALID_CLICK = CODEC.encode(CLICK)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_decode_of_encode_is_identity(model: Any) -> None:
    decode = DECODERS[type(model)]
    assert decode(CODEC.encode(model)) == model


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_encode_of_decode_is_identity_on_bytes(model: Any) -> None:
    raw = CODEC.encode(model)
    assert CODEC.encode(DECODERS[type(model)](raw)) == raw


@pytest.mark.parametrize("buffer", [bytes, bytearray, memoryview])
def test_decoders_take_any_bytes_like_buffer(buffer: Callable[[bytes], Any]) -> None:
    assert CODEC.decode_click(buffer(VALID_CLICK)) == CLICK


def test_unset_optionals_are_omitted_and_null_decodes_as_unset() -> None:
    assert json.loads(CODEC.encode(CLICK)) == {
        "event_id": "e1",
        "ts": TS,
        "user_id": "u",
        "session_id": "s",
        "item_id": "i",
        "kind": "view",
    }
    with_nulls = {**json.loads(VALID_CLICK), "offer_id": None, "price": None}
    assert CODEC.decode_click(json.dumps(with_nulls).encode()) == CLICK


def test_integer_prices_decode_as_floats() -> None:
    raw = CODEC.encode(PURCHASE).replace(b'"unit_price":0.0', b'"unit_price":0')
    assert b'"unit_price":0}' in raw
    line = CODEC.decode_purchase(raw).items[1]
    assert isinstance(line.unit_price, float)


def reject(decode: Callable[[bytes], Any], raw: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    return info.value


def test_invalid_event_is_a_value_error_with_kind_and_reason() -> None:
    err = reject(CODEC.decode_click, b"{")
    assert isinstance(err, ValueError)
    assert err.kind == "not_json"
    assert str(err) == f"not_json: {err.reason}"


def test_too_large_is_checked_before_decoding() -> None:
    small = EventCodec(max_message_bytes=len(VALID_CLICK))
    assert small.decode_click(VALID_CLICK) == CLICK  # the limit itself is allowed
    # One byte over: rejected for size even though it is valid JSON of a valid event...
    err = reject(small.decode_click, VALID_CLICK + b" ")
    assert err.kind == "too_large"
    assert str(len(VALID_CLICK) + 1) in err.reason
    # ...and a huge message of garbage is never parsed: too_large, not not_json.
    garbage = b"\xff{[" * (DEFAULT_MAX_MESSAGE_BYTES // 3 + 1)
    assert reject(CODEC.decode_offer, garbage).kind == "too_large"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"nul",
        b"NaN",
        b'{"ts": Infinity}',
        VALID_CLICK + b" x",  # a valid event with trailing garbage
        VALID_CLICK[:-1] + b",}",  # trailing comma
        b"{'event_id': 'e1'}",  # Python, not JSON
        b"\xff\xfe{}",  # invalid UTF-8 outside strings
    ],
)
def test_bytes_that_are_not_json_are_not_json(raw: bytes) -> None:
    assert reject(CODEC.decode_click, raw).kind == "not_json"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"\xff","ts":1}',  # invalid UTF-8 inside a string
        b'{"event_id":"\xed\xa0\x80"}',  # a UTF-8-encoded surrogate
        b'{"event_id":"\xc3"}',  # truncated multi-byte sequence
    ],
)
def test_invalid_utf8_in_a_string_is_not_json(raw: bytes) -> None:
    # The codec promises to raise nothing but InvalidEvent; msgspec raises UnicodeDecodeError
    # for these, so a worker that catches InvalidEvent would crash on them.
    assert reject(CODEC.decode_click, raw).kind == "not_json"


def _click(**changes: Any) -> bytes:
    return json.dumps({**json.loads(VALID_CLICK), **changes}).encode()


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{}", "missing required field"),
        (b"[]", "Expected `object`, got `array`"),
        (b'"view"', "Expected `object`"),
        (_click(kind="purchase"), "$.kind"),
        (_click(ts=TS // 1000), "$.ts"),  # seconds, not milliseconds
        (_click(ts=float(TS)), "$.ts"),  # integral float: msgspec is strict about integers
        (_click(item_id=""), "$.item_id"),
        (_click(item_id="x" * 65), "$.item_id"),
        # Control characters: the co-purchase state's own keys use them (ITEM_ID_PATTERN).
        (_click(item_id="\u0000orders"), "$.item_id"),
        (_click(item_id="tea\u001fcup"), "$.item_id"),
        # A final newline too: Python's `$` matched before it, ECMA-262's (JSON Schema's) not.
        (_click(item_id="sku\n"), "$.item_id"),
        (_click(price=-0.01), "$.price"),
        (_click(price="1.0"), "$.price"),
        (_click(propensity=0.0), "$.propensity"),
        (_click(variant=8), "$.variant"),
        (_click(variant=True), "$.variant"),
        (_click(extra=1), "unknown field `extra`"),
        (b'{"ts":1e999}', "out of range"),
    ],
)
def test_schema_violations_are_schema_with_the_failing_path(raw: bytes, fragment: str) -> None:
    err = reject(CODEC.decode_click, raw)
    assert err.kind == "schema"
    assert fragment in err.reason


@pytest.mark.parametrize("decode", list(DECODERS.values()), ids=[m.__name__ for m in DECODERS])
def test_every_decoder_rejects_another_models_document(decode: Callable[[bytes], Any]) -> None:
    others = [CODEC.encode(m) for m in MODELS if DECODERS[type(m)] is not decode]
    for raw in others:
        assert reject(decode, raw).kind == "schema"


def test_an_item_id_with_a_control_character_is_rejected_in_orders_too() -> None:
    from streamer.copurchase.stats import TOTAL_KEY, TRIPLE_SEPARATOR

    doc = json.loads(CODEC.encode(PURCHASE))
    for item_id in (TOTAL_KEY, f"tea{TRIPLE_SEPARATOR}cup", "tea\x7f"):
        doc["items"][0]["item_id"] = item_id
        assert "item_id" in reject(CODEC.decode_purchase, json.dumps(doc).encode()).reason
    doc["items"][0]["item_id"] = "Tee-Kanne 1,5 l (\u00e9dition sp\u00e9ciale)"  # printable: fine
    CODEC.decode_purchase(json.dumps(doc).encode())


def test_the_dearest_bundles_the_engine_builds_pass_its_own_codec() -> None:
    """Every unit price may reach MAX_PRICE, so a bundle costs up to three of them: the
    engine's offer must not be one the codec (and every reader of ``offers``) rejects."""
    from streamer.engine import Engine
    from streamer.events.models import MAX_BUNDLE_PRICE, MAX_PRICE

    engine = Engine.in_memory()
    for n in range(3):
        engine.handle_purchase(PurchaseEvent(
            event_id=f"p{n}", ts=TS + n * 10_000, user_id="u", session_id=f"s{n}",
            order_id=f"o{n}", items=[OrderLine(item_id=i, quantity=1, unit_price=MAX_PRICE)
                                     for i in ("a", "b", "c")]))
    offer = engine.live_offer("a")
    assert offer is not None
    prices = sorted(v.bundle_price for v in offer.variants)
    assert prices[0] > MAX_PRICE and prices[-1] <= MAX_BUNDLE_PRICE
    assert len(max((v.items for v in offer.variants), key=len)) == 3  # a triple among them
    assert CODEC.decode_offer(CODEC.encode(offer)) == offer
    undiscounted = msgspec.structs.replace(
        offer.variants[0], items=["a", "b", "c"], discount_pct=0.0, bundle_price=MAX_BUNDLE_PRICE)
    CODEC.decode_offer(CODEC.encode(msgspec.structs.replace(offer, variants=[
        msgspec.structs.replace(undiscounted, probability=1.0)])))


def test_a_window_of_offers_that_lost_money_is_a_valid_reward_window() -> None:
    """With ``rewards.reward=margin`` a discount deeper than the margin loses money: readers of
    ``rewards`` decoded such a window as invalid and dropped it."""
    window = RewardWindow(window_start=TS, window_end=TS + 60_000, policy_version="v2",
                          impressions=1, offer_clicks=1, conversions=1, revenue=14.0,
                          reward_rate=-2.0, ci95=[-2.5, -1.5])
    assert CODEC.decode_reward(CODEC.encode(window)) == window


def test_an_order_of_201_lines_is_rejected() -> None:
    doc = json.loads(CODEC.encode(PURCHASE))
    doc["items"] = [{"item_id": f"i{n}", "quantity": 1, "unit_price": 1.0} for n in range(201)]
    assert reject(CODEC.decode_purchase, json.dumps(doc).encode()).kind == "schema"
    doc["items"] = doc["items"][:200]
    assert len(CODEC.decode_purchase(json.dumps(doc).encode()).items) == 200


@pytest.mark.parametrize(
    "raw",
    [
        _click(**{"k" * 5000: 1}),  # an attacker-chosen unknown field name
        _click(kind="k" * 5000),  # an attacker-chosen enum value
    ],
)
def test_reasons_fit_in_a_dead_letter(raw: bytes) -> None:
    # The codec's contract: a reason is safe to put in a dead letter, whose reason field holds
    # at most 1000 characters; msgspec echoes the offending key or value in full.
    err = reject(CODEC.decode_click, raw)
    letter = DeadLetter(
        ts=TS,
        source_topic="clicks",
        partition=0,
        offset=0,
        kind=err.kind,
        reason=err.reason,
        value_b64="",
    )
    assert CODEC.decode_dead_letter(CODEC.encode(letter)) == letter


# --- check_offer: what the schema cannot express ---------------------------------------------


def test_check_offer_accepts_a_coherent_offer() -> None:
    check_offer(OFFER)  # raises if incoherent


def test_check_offer_tolerates_rounding_within_tolerance() -> None:
    thirds = offer(*(variant(["a", p], 1 / 3) for p in "bcd"))
    check_offer(thirds)
    check_offer(offer(variant(["a", "b"], 1 - 1e-7)))
    with pytest.raises(InvalidEvent):
        check_offer(offer(variant(["a", "b"], 1 - 1e-7)), tolerance=1e-9)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (offer(variant(["a", "b"], 0.5)), "sum to 0.5"),
        (offer(variant(["a", "b"], 0.75), variant(["a", "c"], 0.75)), "sum to 1.5"),
        (offer(variant(["b", "a"], 1.0)), "anchor"),
        (offer(variant(["a", "b"], 0.5), variant(["c", "a"], 0.5)), "anchor"),
        (offer(variant(["a", "b", "b"], 1.0)), "twice"),
        (offer(variant(["a", "a"], 1.0)), "twice"),
        (offer(variant(["a", "b"], 1.0, score=math.nan)), "non-finite"),
        (offer(variant(["a", "b"], 1.0, score=-math.inf)), "non-finite"),
    ],
)
def test_check_offer_rejects_incoherent_offers_as_semantic(bad: BundleOffer, fragment: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_offer(bad)
    assert info.value.kind == "semantic"
    assert fragment in info.value.reason


def test_check_offer_rejects_nan_probabilities() -> None:
    with pytest.raises(InvalidEvent) as info:
        check_offer(offer(variant(["a", "b"], math.nan)))
    assert info.value.kind == "semantic"


def test_an_event_stamped_too_far_ahead_of_the_readers_clock_is_semantic() -> None:
    now, hour = 1_700_000_000_000, 3_600_000
    check_not_ahead(now + hour, now_ms=now, max_ahead_ms=hour)  # at the bound: accepted
    check_not_ahead(now - 10 * 365 * 86_400_000, now_ms=now, max_ahead_ms=hour)  # history
    with pytest.raises(InvalidEvent) as e:
        check_not_ahead(now + hour + 1, now_ms=now, max_ahead_ms=hour)
    assert e.value.kind == "semantic" and "3600 s" in e.value.reason


@pytest.mark.parametrize(("fields", "missing"), [
    ({"kind": "offer_impression"}, "offer_id, variant, propensity"),
    ({"kind": "offer_impression", "offer_id": "of-1", "propensity": 0.5}, "variant"),
    ({"kind": "offer_click"}, "offer_id"),
])
def test_an_offer_event_without_what_attribution_needs_is_semantic(
        fields: dict[str, Any], missing: str) -> None:
    click = ClickEvent(event_id="e", ts=1_700_000_000_000, user_id="u", session_id="s",
                       item_id="tea", **fields)
    with pytest.raises(InvalidEvent) as e:
        check_click(click)
    assert e.value.kind == "semantic" and e.value.reason.endswith(f"needs {missing}")
    check_click(msgspec.structs.replace(click, offer_id="of-1", variant=0, propensity=0.5))
    check_click(msgspec.structs.replace(click, kind="view", offer_id=None))


NESTED = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(("model", "raw"), [
    (Any, NESTED),
    (list[Any], NESTED),
    (dict[str, Any], b'{"a":' + NESTED + b"}"),
    (ImpressionOutcome, b'{"unknown":' + NESTED + b"}"),  # a field skipped, not decoded
])
def test_nesting_too_deep_for_the_interpreter_is_not_json(model: Any, raw: bytes) -> None:
    # msgspec descends with the recursion limit, also to skip an unknown field: a
    # RecursionError escaping a decoder of an internal topic stopped the agent reading it.
    assert reject(internal_decoder(model), raw).kind == "not_json"


def test_a_typed_decoder_checks_the_size_before_decoding() -> None:
    decode = typed_decoder(dict[str, Any], 64)
    assert decode(b'{"a":1}') == {"a": 1}
    assert reject(decode, b'{"a":"' + b"x" * 64 + b'"}').kind == "too_large"
    assert reject(decode, b'{"a":"\xff"}').kind == "not_json"
