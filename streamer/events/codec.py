"""Bytes <-> models: size limits first, then JSON decoding and validation in one pass.

Decoding never raises anything but :class:`InvalidEvent`, whose ``kind`` says which check
failed (``too_large``, ``not_json``, ``schema``, ``semantic``) and whose message is safe to log
and to put in a dead letter.

>>> codec = EventCodec(max_message_bytes=1024)
>>> ev = codec.decode_click(b'{"event_id":"e1","ts":1700000000000,"user_id":"u","session_id":"s",'
...                         b'"item_id":"i","kind":"view"}')
>>> ev.kind, ev.item_id
('view', 'i')
>>> codec.decode_click(b'{"event_id":"e1"}')
Traceback (most recent call last):
...
streamer.events.codec.InvalidEvent: schema: Object missing required field `ts`
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec

from streamer.events.models import (
    BundleOffer,
    ClickEvent,
    DeadLetter,
    DeadLetterKind,
    PurchaseEvent,
    RewardWindow,
)

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024
MAX_REASON_LEN = 1000


class InvalidEvent(ValueError):
    """A message that cannot become a model; ``kind`` names the failed check."""

    def __init__(self, kind: DeadLetterKind, reason: str) -> None:
        # Reasons echo attacker-chosen keys and values: bound them to fit a DeadLetter.
        if len(reason) > MAX_REASON_LEN:
            reason = reason[: MAX_REASON_LEN - 3] + "..."
        super().__init__(f"{kind}: {reason}")
        self.kind: DeadLetterKind = kind
        self.reason = reason


#: What msgspec's decoders raise for bytes that are no value of their type: ``DecodeError``
#: (``ValidationError`` included), ``UnicodeDecodeError`` for invalid UTF-8 in a string, and
#: ``RecursionError`` for nesting deeper than the interpreter's limit (also in a field it
#: skips). For a hot path that cannot afford a :func:`typed_decoder`'s call (~0.25 us).
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class _TypedDecoder(Generic[T]):
    __slots__ = ("_decoder", "_max")

    def __init__(self, model: type[T], max_message_bytes: int, *, msgpack: bool = False) -> None:
        self._decoder: msgspec.json.Decoder[T] | msgspec.msgpack.Decoder[T] = (
            msgspec.msgpack.Decoder(model) if msgpack else msgspec.json.Decoder(model))
        self._max = max_message_bytes

    def __call__(self, data: bytes | bytearray | memoryview | None) -> T:
        if data is None:  # a record with a null value (a tombstone): nothing to decode
            raise InvalidEvent("not_json", "no value (a record with a null value)")
        if len(data) > self._max:
            raise InvalidEvent("too_large", f"message of {len(data)} bytes exceeds {self._max}")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as e:
            raise InvalidEvent("schema", str(e)) from e
        except msgspec.DecodeError as e:
            raise InvalidEvent("not_json", str(e)) from e
        except UnicodeDecodeError as e:  # invalid UTF-8 inside a string
            raise InvalidEvent("not_json", f"invalid UTF-8: {e.reason} at byte {e.start}") from e
        except RecursionError as e:
            # msgspec descends into nested arrays with the interpreter's recursion limit, also
            # to skip a field the model does not know: ~2 bytes a level, so a 10 KB message of
            # brackets is enough to raise this out of any decoder whose model allows unknown
            # fields or ``Any``.
            raise InvalidEvent("not_json", "nested too deeply") from e


def typed_decoder(model: Any, max_message_bytes: int, *, msgpack: bool = False,
                  ) -> Callable[[bytes | bytearray | memoryview | None], Any]:
    """A decoder of ``model`` with the wire decoders' size limit first and their checks: it
    raises nothing but :class:`InvalidEvent`, invalid UTF-8 and nesting too deep included. For
    the formats streamer reads besides the wire models (``policy-updates`` rollbacks, the
    ``feedback`` records the trainer reads). ``msgpack``: MessagePack instead of JSON (the
    kinds stay the JSON decoders': bytes that do not decode are ``not_json``).

    >>> decode = typed_decoder(dict[str, int], 16)
    >>> decode(b'{"a":1}')
    {'a': 1}
    >>> decode(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: too_large: message of 10006 bytes exceeds 16
    >>> typed_decoder(dict[str, Any], 1 << 20)(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}")
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: not_json: nested too deeply
    """
    return _TypedDecoder(model, max_message_bytes, msgpack=msgpack)


def internal_decoder(model: Any, *, msgpack: bool = False,
                     ) -> Callable[[bytes | bytearray | memoryview | None], Any]:
    """A decoder of ``model`` for messages workers wrote themselves (internal topics): the
    checks and :class:`InvalidEvent` kinds of the wire decoders, without their size limit (an
    internal message is bounded by its writer, item-basket messages at 512 KiB).

    >>> decode = internal_decoder(list[int])
    >>> decode(b"[1,2]")
    [1, 2]
    >>> decode(None)
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: not_json: no value (a record with a null value)
    >>> internal_decoder(list[int])(b'["a"]')
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: schema: Expected `int`, got `str` - at `$[0]`
    """
    return typed_decoder(model, sys.maxsize, msgpack=msgpack)


class EventCodec:
    """Decoders and encoders for every wire model, sharing one message size limit.

    Instances are immutable and safe to share; decoding owns no state.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self.decode_click = _TypedDecoder(ClickEvent, max_message_bytes)
        self.decode_purchase = _TypedDecoder(PurchaseEvent, max_message_bytes)
        self.decode_offer = _TypedDecoder(BundleOffer, max_message_bytes)
        self.decode_reward = _TypedDecoder(RewardWindow, max_message_bytes)
        self.decode_dead_letter = _TypedDecoder(DeadLetter, max_message_bytes)
        self._encoder = msgspec.json.Encoder()

    def encode(self, model: Any) -> bytes:
        """Encode any wire model (or plain JSON-able value) to compact JSON bytes."""
        return self._encoder.encode(model)

    def decode_coherent_offer(self, data: bytes | bytearray | memoryview | None) -> BundleOffer:
        """:attr:`decode_offer`, then :func:`check_offer`: what every reader of ``offers``
        uses. Why both: the schema accepts an offer whose probabilities sum to 0.8, which a
        storefront would sample renormalised while reporting the raw propensities (biasing
        every off-policy estimate), or to 0 (impressions the workers' codec then rejects).
        ``decode_offer`` alone stays the schema's mirror (the property tests compare them).
        Raises :class:`InvalidEvent` (``semantic`` for the coherence checks)."""
        offer = self.decode_offer(data)
        check_offer(offer)
        return offer


def check_click(click: ClickEvent) -> None:
    """What the schema leaves optional but an offer event needs: an impression its
    ``offer_id``, ``variant`` and ``propensity`` (attribution credits the variant shown, and
    off-policy evaluation weighs the impression by the propensity it was shown with), an offer
    click its ``offer_id``. Without them an offer event could only be dropped unseen.

    >>> click = ClickEvent(event_id="e", ts=1_700_000_000_000, user_id="u", session_id="s",
    ...                    item_id="tea", kind="offer_impression", offer_id="of-1", variant=0)
    >>> check_click(click)
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: semantic: an offer_impression needs propensity
    """
    if click.kind == "offer_impression":
        missing = [name for name in ("offer_id", "variant", "propensity")
                   if getattr(click, name) is None]
        if missing:
            raise InvalidEvent("semantic", f"an offer_impression needs {', '.join(missing)}")
    elif click.kind == "offer_click" and click.offer_id is None:
        raise InvalidEvent("semantic", "an offer_click needs offer_id")


def check_not_ahead(ts_ms: int, *, now_ms: int, max_ahead_ms: int) -> None:
    """Refuse an event stamped more than ``max_ahead_ms`` after ``now_ms`` (the reader's
    clock). Why: event time only moves forward, so one event from a host whose clock is years
    ahead (the schema allows up to 2100) would stay ahead for good: its items' decayed
    co-purchase counts read ~1e178 and every later order of them counted for nothing,
    attribution windows closed at once, every later event of its partition too late.

    >>> check_not_ahead(1_700_000_000_000, now_ms=1_700_000_000_000 - 5_000, max_ahead_ms=60_000)
    >>> try:
    ...     check_not_ahead(4_000_000_000_000, now_ms=1_700_000_000_000, max_ahead_ms=3_600_000)
    ... except InvalidEvent as e:
    ...     print(e.kind, e.reason)
    semantic ts 4000000000000 is 26620 days ahead of the reader's clock (at most 3600 s)
    """
    if ts_ms - now_ms > max_ahead_ms:
        ahead_s = (ts_ms - now_ms) / 1000.0
        told = f"{ahead_s / 86400:.0f} days" if ahead_s >= 86400 else f"{ahead_s:.0f} s"
        raise InvalidEvent("semantic", f"ts {ts_ms} is {told} ahead of the reader's clock "
                                       f"(at most {max_ahead_ms / 1000:g} s)")


def check_offer(offer: BundleOffer, *, tolerance: float = 1e-6) -> None:
    """Checks the schema cannot express: probabilities sum to 1, anchor first, finite scores.

    >>> from streamer.events.models import Evidence, Variant
    >>> ev = Evidence(support=1.0, confidence=0.5, lift=2.0)
    >>> v = Variant(items=["a", "b"], discount_pct=10, bundle_price=9.0, probability=0.5,
    ...             score=1.0, evidence=ev)
    >>> check_offer(BundleOffer(offer_id="o", ts=1700000000000, anchor_item_id="a", segment="all",
    ...     policy_version="v0", variants=[v], expires_at=1700000060000))
    Traceback (most recent call last):
    ...
    streamer.events.codec.InvalidEvent: semantic: variant probabilities sum to 0.5, not 1
    """
    if not all(math.isfinite(v.probability) for v in offer.variants):
        raise InvalidEvent("semantic", "non-finite probability")
    total = math.fsum(v.probability for v in offer.variants)
    if abs(total - 1.0) > tolerance:
        raise InvalidEvent("semantic", f"variant probabilities sum to {total:g}, not 1")
    for v in offer.variants:
        if v.items[0] != offer.anchor_item_id:
            raise InvalidEvent("semantic", "each variant's first item must be the anchor")
        if len(set(v.items)) != len(v.items):
            raise InvalidEvent("semantic", "a bundle lists an item twice")
        if not math.isfinite(v.score):
            raise InvalidEvent("semantic", "non-finite score")
