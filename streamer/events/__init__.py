"""Wire contracts: typed models mirroring ``schemas/`` and the codec that validates bytes."""

from streamer.events.codec import (
    DECODE_ERRORS,
    EventCodec,
    InvalidEvent,
    check_click,
    check_not_ahead,
    check_offer,
    internal_decoder,
    typed_decoder,
)
from streamer.events.models import (
    CLICK_KINDS,
    BundleOffer,
    ClickEvent,
    ClickKind,
    DeadLetter,
    DeadLetterKind,
    Event,
    Evidence,
    OrderLine,
    PurchaseEvent,
    RewardWindow,
    Variant,
)

__all__ = [
    "CLICK_KINDS",
    "DECODE_ERRORS",
    "BundleOffer",
    "ClickEvent",
    "ClickKind",
    "DeadLetter",
    "DeadLetterKind",
    "Event",
    "EventCodec",
    "Evidence",
    "InvalidEvent",
    "OrderLine",
    "PurchaseEvent",
    "RewardWindow",
    "Variant",
    "check_click",
    "check_not_ahead",
    "check_offer",
    "internal_decoder",
    "typed_decoder",
]
