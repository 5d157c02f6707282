"""Building offers from a policy's proposals; the :class:`OfferSink` seam; the storefront client
lives in ``streamer.app.storefront`` (it needs Kafka)."""

from streamer.offers.book import Choice, OfferBook
from streamer.offers.builder import (
    MATERIAL_SHIFT,
    OfferBuilder,
    OfferSink,
    Signature,
    bundle_price,
    offer_signature,
    proposals_signature,
    same_offer,
    variants_signature,
)

__all__ = [
    "MATERIAL_SHIFT",
    "Choice",
    "OfferBook",
    "OfferBuilder",
    "OfferSink",
    "Signature",
    "bundle_price",
    "offer_signature",
    "proposals_signature",
    "same_offer",
    "variants_signature",
]
