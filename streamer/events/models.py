"""Typed wire models mirroring ``schemas/*.json``.

Every model is a frozen :class:`msgspec.Struct` whose constraints are the same as the JSON
Schema's (``tests/unit/test_schemas.py`` proves both accept and reject the same documents).
Optional fields are omitted on the wire when unset.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

#: Epoch milliseconds between 2000-01-01 and 2100-01-01: anything else is a unit error.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000
MAX_ID_LEN = 64
MAX_ORDER_LINES = 200
MAX_PRICE = 1_000_000.0
MAX_QUANTITY = 100_000
MAX_VARIANTS = 8
MAX_BUNDLE_ITEMS = 3
#: The dearest bundle: one of each item at the highest unit price, no discount. Capped like a
#: unit price, the engine could build offers (two items at 900,000) its own codec rejects.
MAX_BUNDLE_PRICE = MAX_BUNDLE_ITEMS * MAX_PRICE
#: The deepest discount an offer may carry (percent; the schema's ``discount_pct`` maximum).
#: Policies are held to it when they are read (``streamer.policy.PolicyShape``): a version
#: with a deeper level was adopted, then every offer it made was refused downstream.
MAX_DISCOUNT_PCT = 90.0

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
#: An item id also keys the co-purchase state, whose internal keys use control characters
#: (``copurchase.stats.TOTAL_KEY``, ``TRIPLE_SEPARATOR``): an item id has none. The end is a
#: lookahead for "no character left", not ``$``: in Python's ``re`` (msgspec, the jsonschema
#: package) ``$`` also matches before a final newline, in ECMA-262 (JSON Schema's dialect)
#: only at the end, so ``"sku\n"`` passed here and failed other validators of the schema.
ITEM_ID_PATTERN = r"^[^\x00-\x1f\x7f]+(?![\s\S])"
ItemId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN, pattern=ITEM_ID_PATTERN)]
TimestampMs = Annotated[int, Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]
Price = Annotated[float, Meta(ge=0.0, le=MAX_PRICE)]
BundlePrice = Annotated[float, Meta(ge=0.0, le=MAX_BUNDLE_PRICE)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
Propensity = Annotated[float, Meta(gt=0.0, le=1.0)]
Count = Annotated[int, Meta(ge=0)]

ClickKind = Literal["view", "click", "add_to_cart", "offer_impression", "offer_click"]
CLICK_KINDS: tuple[ClickKind, ...] = (
    "view",
    "click",
    "add_to_cart",
    "offer_impression",
    "offer_click",
)


class ClickEvent(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A storefront interaction; ``offer_*`` kinds carry the offer, variant and propensity."""

    event_id: Id
    ts: TimestampMs
    user_id: Id
    session_id: Id
    item_id: ItemId
    kind: ClickKind
    offer_id: Id | None = None
    variant: Annotated[int, Meta(ge=0, lt=MAX_VARIANTS)] | None = None
    propensity: Propensity | None = None
    price: Price | None = None


class OrderLine(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line of an order."""

    item_id: ItemId
    quantity: Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]
    unit_price: Price


class PurchaseEvent(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A completed order; ``offer_id`` is set when the order was placed through an offer."""

    event_id: Id
    ts: TimestampMs
    user_id: Id
    session_id: Id
    order_id: Id
    items: Annotated[list[OrderLine], Meta(min_length=1, max_length=MAX_ORDER_LINES)]
    offer_id: Id | None = None


class Evidence(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Co-purchase evidence behind a bundle: decayed support, confidence and lift."""

    support: Annotated[float, Meta(ge=0.0, le=1e12)]
    confidence: Probability
    lift: Annotated[float, Meta(ge=0.0, le=1e12)]


class Variant(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One bundle (anchor first) with a discount, and the probability the storefront shows it."""

    items: Annotated[list[Id], Meta(min_length=2, max_length=MAX_BUNDLE_ITEMS)]
    discount_pct: Annotated[float, Meta(ge=0.0, le=MAX_DISCOUNT_PCT)]
    bundle_price: BundlePrice
    probability: Probability
    score: Annotated[float, Meta(ge=-1e12, le=1e12)]
    evidence: Evidence


class BundleOffer(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A distribution over bundle variants for one anchor item, published on ``offers``."""

    offer_id: Id
    ts: TimestampMs
    anchor_item_id: Id
    segment: Annotated[str, Meta(min_length=1, max_length=32)]
    policy_version: Id
    variants: Annotated[list[Variant], Meta(min_length=1, max_length=MAX_VARIANTS)]
    expires_at: TimestampMs


class RewardWindow(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Aggregated outcomes of one policy version over one window, published on ``rewards``."""

    window_start: TimestampMs
    window_end: TimestampMs
    policy_version: Id
    impressions: Count
    offer_clicks: Count
    conversions: Count
    revenue: Annotated[float, Meta(ge=0.0, le=1e15)]
    #: Negative when rewards are margins and the window's offers lost money.
    reward_rate: Annotated[float, Meta(ge=-1e12, le=1e12)]
    ci95: Annotated[
        list[Annotated[float, Meta(ge=-1e12, le=1e12)]], Meta(min_length=2, max_length=2)
    ]
    anchor_item_id: Id | None = None
    segment: Annotated[str, Meta(min_length=1, max_length=32)] | None = None
    direct_conversions: Count | None = None
    direct_revenue: Annotated[float, Meta(ge=0.0, le=1e15)] | None = None


#: Which check failed; ``unreadable_batch``: a record batch the consumer could not parse (a
#: CRC mismatch, an unknown codec, a malformed record), its offsets skipped, one letter each.
DeadLetterKind = Literal["too_large", "not_json", "schema", "semantic", "unreadable_batch"]


class DeadLetter(
    Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A message that failed validation, with its original bytes (base64) and why; or a record
    batch that could not be read, with its bytes as fetched and its offsets ``offset`` to
    ``last_offset``."""

    ts: TimestampMs
    source_topic: Annotated[str, Meta(min_length=1, max_length=249)]
    partition: Annotated[int, Meta(ge=0)]
    offset: Annotated[int, Meta(ge=0)]
    kind: DeadLetterKind
    reason: Annotated[str, Meta(min_length=1, max_length=1000)]
    value_b64: str
    key_b64: str | None = None
    last_offset: Annotated[int, Meta(ge=0)] | None = None


Event = ClickEvent | PurchaseEvent

__all__ = [
    "CLICK_KINDS",
    "BundleOffer",
    "ClickEvent",
    "ClickKind",
    "DeadLetter",
    "DeadLetterKind",
    "Event",
    "Evidence",
    "OrderLine",
    "PurchaseEvent",
    "RewardWindow",
    "Variant",
]
