"""End to end on the real embedded broker: events in, offers and dead letters out."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import msgspec
import pytest

from streamer.app.storefront import OfferCache
from streamer.events import ClickEvent, DeadLetter, OrderLine, PurchaseEvent
from streamer.settings import Settings
from tests.conftest import consume, item_view, produce, wait_for

pytestmark = pytest.mark.integration

encode = msgspec.json.encode


def purchase(n: int, items: list[str], *, ts: int | None = None, session: str | None = None,
             price: float = 4.0) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"p-{n}", ts=ts or int(time.time() * 1000), user_id=f"u-{n}",
        session_id=session or f"s-{n}", order_id=f"o-{n}",
        items=[OrderLine(item_id=i, quantity=1, unit_price=price) for i in items])


def as_messages(events: list[Any]) -> list[tuple[bytes | None, bytes]]:
    return [(e.session_id.encode(), encode(e)) for e in events]


def decode_offers(records: list[Any]) -> list[Any]:
    from streamer.events import EventCodec

    codec = EventCodec()
    return [codec.decode_offer(r.value) for r in records]


def test_purchases_in_offers_out(settings: Settings, start_worker: Any) -> None:
    worker = start_worker()
    orders = [purchase(n, ["tea", "cup"]) for n in range(3)]
    orders += [purchase(10 + n, ["bread", "butter", "jam"]) for n in range(3)]
    produce(settings, settings.topics.purchases, as_messages(orders))

    anchors = {"tea", "cup", "bread", "butter", "jam"}
    records = consume(settings, settings.topics.offers,
                      lambda rs: anchors <= {r.key.decode() for r in rs}, timeout_s=30)
    offers = decode_offers(records)
    assert anchors <= {o.anchor_item_id for o in offers}
    assert all(r.key.decode() == o.anchor_item_id for r, o in zip(records, offers, strict=True))
    newest = {o.anchor_item_id: o for o in sorted(offers, key=lambda o: o.ts)}
    assert [v.items for v in newest["tea"].variants] == [["tea", "cup"]]
    assert {tuple(v.items) for v in newest["bread"].variants} >= {("bread", "butter"),
                                                                  ("bread", "jam")}
    assert newest["tea"].variants[0].bundle_price == pytest.approx(8.0 * 0.9)
    for offer in offers:
        assert sum(v.probability for v in offer.variants) == pytest.approx(1.0)
        assert offer.policy_version == "v0-greedy"
    assert worker.consumed(settings.topics.purchases) == len(orders)


def test_invalid_events_go_to_dead_letters_and_work_goes_on(
    settings: Settings, start_worker: Any
) -> None:
    start_worker()
    t = settings.topics
    too_large = b'{"event_id": "' + b"x" * (settings.kafka.max_message_bytes + 10) + b'"}'
    bad: list[tuple[str, bytes, str]] = [
        (t.clicks, b"{not json", "not_json"),
        (t.clicks, b"\xff\xfe\x00", "not_json"),
        (t.clicks, encode({"event_id": "c1", "ts": 1, "user_id": "u", "session_id": "s",
                           "item_id": "i", "kind": "view"}), "schema"),  # ts out of range
        (t.clicks, encode({"event_id": "c2", "ts": int(time.time() * 1000), "user_id": "u",
                           "session_id": "s", "item_id": "i", "kind": "teleport"}), "schema"),
        (t.purchases, encode({"event_id": "p", "items": []}), "schema"),
        (t.purchases, too_large, "too_large"),
        # The internal repartition topic carries lists of baskets; anything else is refused.
        # Not JSON is not_json here too, as on the public topics (the same decoder's kinds).
        (f"{settings.worker.app_id}-item-baskets", b"[not a batch", "not_json"),
        (f"{settings.worker.app_id}-item-baskets", encode(["tea", ["cup"], 1, "e"]), "schema"),
    ]
    good_before = purchase(1, ["tea", "cup"])
    good_after = purchase(2, ["tea", "cup"])
    produce(settings, t.purchases, as_messages([good_before]))
    for topic, value, _ in bad:
        produce(settings, topic, [(b"bad-key", value)])
    produce(settings, t.purchases, as_messages([good_after]))

    records = consume(settings, t.dead_letters, lambda rs: len(rs) >= len(bad), timeout_s=30)
    letters = [msgspec.json.decode(r.value, type=DeadLetter) for r in records]
    assert len(letters) == len(bad)
    by_value = {base64.b64decode(d.value_b64): d for d in letters}
    for topic, value, kind in bad:
        kept = value[: 64 * 1024]
        letter = by_value[kept]
        assert letter.source_topic == topic
        assert letter.kind == kind
        assert letter.reason
        assert base64.b64decode(letter.key_b64 or "") == b"bad-key"
        assert letter.offset >= 0 and 0 <= letter.partition < settings.topics.partitions
    # The good purchases around the bad ones were processed: both orders are in the state.
    offers = consume(settings, t.offers, lambda rs: any(r.key == b"tea" for r in rs))
    assert any(r.key == b"tea" for r in offers)


def test_the_same_events_twice_count_once(settings: Settings, start_worker: Any) -> None:
    worker = start_worker()
    now = int(time.time() * 1000)
    orders = [purchase(n, ["tea", "cup"], ts=now) for n in range(3)]
    clicks = [ClickEvent(event_id=f"c-{n}", ts=now, user_id="u", session_id="s", item_id="tea",
                         kind="view") for n in range(4)]
    produce(settings, settings.topics.purchases, as_messages(orders + orders))
    produce(settings, settings.topics.clicks, as_messages(clicks + clicks))
    wait_for(lambda: worker.consumed(settings.topics.purchases) == 6
             and worker.consumed(settings.topics.clicks) == 8, 30, "all events consumed")
    # The second copy of each purchase is dropped by its event id before fan-out.
    wait_for(lambda: worker.stats().get("streamer_duplicate_events_total", {}).get(
        settings.topics.purchases) == 3, 30, "all duplicate purchases")
    assert worker.stats()["streamer_duplicate_events_total"][settings.topics.clicks] == 4
    # 3 purchases x (2 anchors + the order counter); a duplicate fanned out would make 18.
    wait_for(lambda: worker.consumed(f"{settings.worker.app_id}-item-baskets") >= 9, 30,
             "the baskets learned")
    assert worker.consumed(f"{settings.worker.app_id}-item-baskets") == 9
    view = item_view(worker, "tea")
    tea_cup = [c for c in view["candidates"] if c["items"] == ["tea", "cup"]]
    assert tea_cup, view
    # Decay over the seconds since `now` is negligible at a 30-day half-life.
    assert tea_cup[0]["support"] == pytest.approx(3.0, rel=1e-4)
    assert view["count"] == pytest.approx(3.0, rel=1e-4)


def test_compressed_batches_are_processed(settings: Settings, start_worker: Any) -> None:
    # A storefront producer with compression.type lz4 (common), snappy or zstd: aiokafka reads
    # those batches only with cramjam installed; without it every fetch raised
    # UnsupportedCodecError and nothing of theirs was processed.
    worker = start_worker()
    now = int(time.time() * 1000)
    codecs = ("gzip", "snappy", "lz4", "zstd")
    for n, codec in enumerate(codecs):
        orders = [purchase(10 * n + k, [f"{codec}-a", f"{codec}-b"], ts=now) for k in range(2)]
        clicks = [ClickEvent(event_id=f"c-{codec}-{k}", ts=now, user_id="u", session_id="s",
                             item_id=f"{codec}-a", kind="view") for k in range(3)]
        produce(settings, settings.topics.purchases, as_messages(orders), compression_type=codec)
        produce(settings, settings.topics.clicks, as_messages(clicks), compression_type=codec)
    wait_for(lambda: worker.consumed(settings.topics.purchases) == 2 * len(codecs)
             and worker.consumed(settings.topics.clicks) == 3 * len(codecs), 60,
             "the events of every codec consumed",
             explain=lambda: {t: worker.consumed(t) for t in (settings.topics.purchases,
                                                              settings.topics.clicks)})
    for codec in codecs:
        view = wait_for(lambda c=codec: (v := item_view(worker, f"{c}-a"))["count"] > 1.99 and v,
                        30, f"the {codec} purchases learned")
        assert view["count"] == pytest.approx(2.0, rel=1e-4)


def test_co_carts_in_a_session_are_learned_once_at_their_weight(
    settings: Settings, start_worker: Any
) -> None:
    settings = settings.model_copy(update={"copurchase": settings.copurchase.model_copy(
        update={"co_cart_weight": 0.5})})
    worker = start_worker(settings)
    now = int(time.time() * 1000)
    # Prices come from purchases: tea and cup bought alone, so they never pair there.
    produce(settings, settings.topics.purchases,
            as_messages([purchase(1, ["tea"], ts=now), purchase(2, ["cup"], ts=now)]))
    clicks = [ClickEvent(event_id=f"c-{s}-{i}", ts=now, user_id="u", session_id=f"s{s}",
                         item_id=i, kind=k)
              for s in range(2) for i, k in (("tea", "add_to_cart"), ("cup", "add_to_cart"),
                                             ("cup", "add_to_cart"), ("scone", "view"))]
    produce(settings, settings.topics.clicks, as_messages(clicks + clicks[:3]))  # some twice

    offers = consume(settings, settings.topics.offers,
                     lambda rs: any(r.key == b"tea" for r in rs), timeout_s=30)
    tea = [o for o in decode_offers(offers) if o.anchor_item_id == "tea"]
    assert [v.items for v in tea[-1].variants] == [["tea", "cup"]]
    wait_for(lambda: worker.consumed(settings.topics.clicks) == len(clicks) + 3, 30,
             "all clicks consumed")
    # Two sessions at 0.5 each, whatever was delivered twice; views have no weight here.
    view = item_view(worker, "tea")
    assert view["candidates"][0]["items"] == ["tea", "cup"]
    assert view["candidates"][0]["support"] == pytest.approx(1.0, rel=1e-4)
    assert view["count"] == pytest.approx(2.0, rel=1e-4)  # one purchase + 2 x 0.5
    assert item_view(worker, "scone")["count"] == 0.0


def test_offer_cache_sees_revisions(settings: Settings, start_worker: Any) -> None:
    start_worker()

    async def scenario() -> None:
        async with OfferCache(settings.kafka, topic=settings.topics.offers) as cache:
            produce_async = asyncio.to_thread
            await produce_async(produce, settings, settings.topics.purchases,
                                as_messages([purchase(n, ["tea", "cup"]) for n in range(2)]))
            await cache.wait_for(lambda book: book.get("tea") is not None, 30)
            first = cache.book.get("tea")
            assert first is not None and [v.items for v in first.variants] == [["tea", "cup"]]
            # Scones overtake cups as tea's best partner: a revised offer must arrive.
            await produce_async(produce, settings, settings.topics.purchases,
                                as_messages([purchase(10 + n, ["tea", "scone"])
                                             for n in range(6)]))
            await cache.wait_for(
                lambda book: book.get("tea").variants[0].items == ["tea", "scone"], 30)
            revised = cache.book.get("tea")
            assert revised is not None and revised.ts >= first.ts
            assert revised.offer_id != first.offer_id
            impression = cache.impression("tea", user_id="u", session_id="s")
            assert impression is not None and impression.offer_id == revised.offer_id
            chosen = revised.variants[impression.variant or 0]
            assert impression.propensity == pytest.approx(chosen.probability)

    asyncio.run(scenario())


def test_a_partners_new_price_reaches_the_anchors_live_offer(
    settings: Settings, start_worker: Any
) -> None:
    # Tea is never bought again: only the price sweep can bring the cup's new price to it.
    settings = settings.model_copy(update={"offers": settings.offers.model_copy(
        update={"price_check_interval_s": 1.0})})
    worker = start_worker(settings)
    produce(settings, settings.topics.purchases,
            as_messages([purchase(n, ["tea", "cup"], price=4.0) for n in range(3)]))

    def tea_prices(records: list[Any]) -> list[float]:
        return [o.variants[0].bundle_price for o in decode_offers(records)
                if o.anchor_item_id == "tea"]

    first = consume(settings, settings.topics.offers, lambda rs: 7.2 in tea_prices(rs))
    assert tea_prices(first)[-1] == pytest.approx(7.2)  # (4 + 4) * 0.9
    produce(settings, settings.topics.purchases,
            as_messages([purchase(10 + n, ["cup"], price=6.0) for n in range(2)]))
    records = consume(settings, settings.topics.offers,
                      lambda rs: 9.0 in tea_prices(rs), timeout_s=30)
    teas = [o for o in decode_offers(records) if o.anchor_item_id == "tea"]
    assert teas[-1].variants[0].bundle_price == pytest.approx(9.0)  # (4 + 6) * 0.9
    assert teas[-1].policy_version == "v0-greedy" and teas[-1].ts > teas[0].ts
    assert wait_for(lambda: worker.stats().get("streamer_offers_repriced_total", 0) >= 1,
                    10, "the repriced offer to be counted")
