"""Building offers from a policy's proposals; the :class:`OfferSink` seam; the storefront client
lives in ``streamer.app.storefront`` (it needs Kafka)."""

from streamer.offers.book import Choice, OfferBook
from streamer.offers.builder import (
    OfferBuilder,
    OfferSink,
    offer_signature,
    proposals_signature,
    same_offer,
    variants_signature,
)

__all__ = [
    "Choice",
    "OfferBook",
    "OfferBuilder",
    "OfferSink",
    "offer_signature",
    "proposals_signature",
    "same_offer",
    "variants_signature",
]
