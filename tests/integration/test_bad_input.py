"""Fuzzed input mixed with good events: the worker never crashes, every bad message lands in
dead-letters with a reason, every good one is processed."""

from __future__ import annotations

import asyncio
import base64
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

from streamer.events import DeadLetter
from streamer.rewards import ImpressionOutcome
from streamer.settings import Settings
from tests.conftest import consume, item_view, produce, settings_env, wait_for
from tests.integration.test_pipeline import purchase

pytestmark = pytest.mark.integration

BAD_MESSAGES = 10_000
#: The worker's size limit in the fuzz test: oversized messages are ~1 in 13 of the bad ones,
#: each just over the limit; at the default 256 KiB they would put ~200 MB through the broker.
FUZZ_MAX_MESSAGE_BYTES = 16 * 1024


def bad_message(rng: random.Random, now: int, max_bytes: int, *, click: bool) -> bytes | None:
    good_click: dict[str, Any] = {"event_id": f"c{rng.random()}", "ts": now, "user_id": "u",
                                  "session_id": "s", "item_id": "i", "kind": "view"}
    line = {"item_id": "i", "quantity": 1, "unit_price": 1.0}
    good_purchase: dict[str, Any] = {"event_id": "p", "ts": now, "user_id": "u",
                                     "session_id": "s", "order_id": "o", "items": [line]}
    kind = rng.randrange(15)
    if kind == 14:  # an impression without its offer, variant and propensity
        return msgspec.json.encode((good_click | {"kind": "offer_impression"}) if click
                                   else (good_purchase | {"items": []}))
    if kind == 13:  # valid but for a clock days to decades ahead of the worker's
        ahead = 86_400_000 * rng.randrange(2, 20_000)
        return msgspec.json.encode((good_click if click else good_purchase) | {"ts": now + ahead})
    if kind == 12:
        return None  # a record with a null value (a tombstone)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return b'{"event_id": "\xff\xfe"}'
    if kind == 2:
        return msgspec.json.encode(good_click | {"ts": "yesterday"})
    if kind == 3:
        doc = dict(good_click)
        del doc[rng.choice(list(doc))]
        return msgspec.json.encode(doc)
    if kind == 4:
        return msgspec.json.encode(good_purchase | {"items": [line] * 201})
    if kind == 5:
        return msgspec.json.encode(good_click | {"item_id": "x" * 5000})
    if kind == 6:
        return msgspec.json.encode(good_purchase).replace(b"1.0", b"NaN")
    if kind == 7:
        return msgspec.json.encode(good_purchase | {"items": [line | {"unit_price": -3.0}]})
    if kind == 8:
        return msgspec.json.encode(good_click | {"ts": 9_999_999_999_999})
    if kind == 9:
        return msgspec.json.encode(good_click | {"kind": "teleport"})
    if kind == 10:
        return b"[" + b"1," * (max_bytes // 2) + b"1]"
    return msgspec.json.encode(good_click | {"unexpected": True})


def any_key(rng: random.Random, key: bytes) -> bytes | None:
    """``key``, or no key, or bytes that are not UTF-8: streamer never reads a key (it only
    routes), so none of them may keep a message from its agent (WireSchema)."""
    return rng.choice([key, None, b"\xff\xfe" + rng.randbytes(6)])


def test_fuzzed_messages_are_dead_lettered_and_good_ones_processed(
    settings: Settings, start_worker: Any
) -> None:
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"max_message_bytes": FUZZ_MAX_MESSAGE_BYTES})})
    worker = start_worker(settings)
    rng = random.Random(11)
    now = int(time.time() * 1000)
    t = settings.topics
    goods = [purchase(n, ["tea", "cup"], ts=now) for n in range(BAD_MESSAGES // 40)]
    messages: dict[str, list[tuple[bytes | None, bytes | None]]] = {t.clicks: [],
                                                                    t.purchases: []}
    for i in range(BAD_MESSAGES):
        topic = t.clicks if i % 2 else t.purchases
        value = bad_message(rng, now, settings.kafka.max_message_bytes, click=topic == t.clicks)
        # A record needs a key or a value (the producer refuses one with neither).
        key = any_key(rng, f"k{i}".encode()) if value is not None else f"k{i}".encode()
        messages[topic].append((key, value))
        if i % 40 == 0:
            good = goods[i // 40]
            messages[t.purchases].append((any_key(rng, good.session_id.encode()),
                                          msgspec.json.encode(good)))
    for topic, batch in messages.items():
        produce(settings, topic, batch)

    records = consume(settings, t.dead_letters, lambda rs: len(rs) >= BAD_MESSAGES,
                      timeout_s=180)
    assert len(records) == BAD_MESSAGES
    letters = [msgspec.json.decode(r.value, type=DeadLetter) for r in records]
    assert all(d.reason for d in letters)
    assert {d.kind for d in letters} == {"too_large", "not_json", "schema", "semantic"}
    semantic = [d.reason for d in letters if d.kind == "semantic"]
    assert {"ahead" if "ahead of the reader's clock" in r else r for r in semantic} == {
        "ahead", "an offer_impression needs offer_id, variant, propensity"}
    assert {d.source_topic for d in letters} == {t.clicks, t.purchases}
    # Each letter keeps its message's key, whatever it was (design: the original key).
    sent_keys = {key for batch in messages.values() for key, _ in batch}
    letter_keys = {base64.b64decode(d.key_b64) if d.key_b64 else None for d in letters}
    assert [r.key for r in records] == [
        base64.b64decode(d.key_b64) if d.key_b64 else None for d in letters]
    assert letter_keys <= sent_keys
    assert None in letter_keys and any(k and k.startswith(b"\xff\xfe") for k in letter_keys)
    wait_for(lambda: worker.consumed(t.purchases) == BAD_MESSAGES // 2 + len(goods), 60,
             "every purchase message consumed")
    assert worker.process.proc.poll() is None  # the worker never crashed
    view = wait_for(lambda: (v := item_view(worker, "tea"))["count"] > len(goods) - 0.1 and v, 30,
                    "all good purchases learned")
    assert view["count"] == pytest.approx(len(goods), rel=1e-4)
    assert item_view(worker, "i")["count"] == 0  # no bad purchase of it was learned


def test_a_bad_message_with_a_huge_key_is_dead_lettered_with_its_key_cut(
    settings: Settings, start_worker: Any
) -> None:
    # The broker takes keys up to its message size; a letter carrying a 450 KB key twice
    # (as its own key and base64) outgrew the producer's request size, and the agent raised
    # on it, on every restart (the fixture fails the test on an agent crash).
    worker = start_worker()
    key = b"k" * 450_000
    good = purchase(0, ["tea", "cup"], ts=int(time.time() * 1000))
    produce(settings, settings.topics.purchases,
            [(key, b"not json"), (good.session_id.encode(), msgspec.json.encode(good))])
    [record] = consume(settings, settings.topics.dead_letters, lambda rs: len(rs) >= 1,
                       timeout_s=60)
    letter = msgspec.json.decode(record.value, type=DeadLetter)
    assert letter.kind == "not_json" and "(key truncated to 1024 of 450000 bytes)" in letter.reason
    assert record.key == base64.b64decode(letter.key_b64 or "") == key[:1024]
    wait_for(lambda: item_view(worker, "tea")["count"] > 0.99, 30, "the good purchase learned")
    assert worker.process.proc.poll() is None


def test_stray_messages_on_internal_topics_are_dead_lettered(
    settings: Settings, start_worker: Any
) -> None:
    # Internal topics are written by workers only, but a stray producer or a worker of
    # another version may write something else: each agent dead-letters it and goes on (the
    # fixture fails the test if an agent crashed).
    worker = start_worker()
    app_id = settings.worker.app_id
    internal = [f"{app_id}-item-baskets", f"{app_id}-reward-ticks", f"{app_id}-reward-outcomes"]
    for topic in internal:
        produce(settings, topic, [(b"k", b"not json"), (b"k", b'{"unexpected": 1}'),
                                  (b"k", None)])
    # Item baskets of the right shape but out of bounds: a weight of 0 raised in the middle of
    # learning (the agent stopped), a price of 1e308 reached published offers.
    now = int(time.time() * 1000)
    produce(settings, internal[0], [
        (b"k", msgspec.json.encode([["tea", ["cup"], now, "e-w", 2.0, 0.0]])),
        (b"k", msgspec.json.encode([["tea", ["cup"], now, "e-p", 1e308, 1.0]]))])
    # Outcomes of the right shape no attribution writes: one of 1e308 made every later window
    # of its version unpublishable, one stamped in 2099 moved the ledger's clock there.
    outcome = ImpressionOutcome(
        impression_id="i", ts=now, session_id="s", user_id="u", offer_id="o", variant=0,
        propensity=0.5, policy_version="v0-greedy", anchor_item_id="tea", segment="all",
        items=("tea", "cup"), discount_pct=10.0, clicked=True, converted=True, revenue=20.0,
        reward=20.0, purchase_ids=("p",), attributed_at=now, late=False)
    produce(settings, internal[2], [
        (b"k", msgspec.json.encode(msgspec.structs.replace(outcome, revenue=1e308))),
        (b"k", msgspec.json.encode(msgspec.structs.replace(outcome, ts=4_070_908_800_000)))])
    good = purchase(0, ["tea", "cup"], ts=now)
    produce(settings, settings.topics.purchases,
            [(good.session_id.encode(), msgspec.json.encode(good))])
    records = consume(settings, settings.topics.dead_letters, lambda rs: len(rs) >= 13,
                      timeout_s=60)
    letters = [msgspec.json.decode(r.value, type=DeadLetter) for r in records]
    assert sorted(d.source_topic for d in letters) == sorted(
        internal * 3 + internal[:1] * 2 + internal[2:] * 2)
    # Garbage and a null value are not_json, a wrong document is schema, on every topic;
    # out-of-bounds baskets are schema, impossible outcomes semantic.
    assert sorted((d.source_topic, d.kind) for d in letters) == sorted(
        [(topic, kind) for topic in internal for kind in ("not_json", "not_json", "schema")]
        + [(internal[0], "schema")] * 2 + [(internal[2], "semantic")] * 2)
    assert all(d.reason for d in letters)
    wait_for(lambda: item_view(worker, "tea")["count"] > 0.99, 30, "the good purchase learned")


def test_the_largest_valid_orders_are_learned(settings: Settings, start_worker: Any) -> None:
    # 200 lines of 64-character ids (the input bounds) fan out to ~13 KB per item basket: a
    # batch's baskets for one partition are several messages, not one that the producer
    # refuses (which crashed the purchases agent with its batch). Learning in place off, so
    # every basket goes through the topic, as the baskets for another worker's items do.
    s = settings.model_copy(update={"worker": settings.worker.model_copy(
        update={"local_baskets": False})})
    worker = start_worker(s)
    now = int(time.time() * 1000)
    items = [f"item-{i:03d}-".ljust(64, "x") for i in range(200)]
    orders = [purchase(n, items, ts=now) for n in range(3)] + [purchase(3, ["tea", "cup"], ts=now)]
    produce(settings, settings.topics.purchases,
            [(o.session_id.encode(), msgspec.json.encode(o)) for o in orders])
    wait_for(lambda: item_view(worker, "tea")["count"] > 0.99, 60, "the small order learned")
    for item in (items[0], items[-1]):
        view = wait_for(lambda i=item: (v := item_view(worker, i))["count"] > 2.99 and v, 60,
                        f"the large orders learned for {item}")
        assert view["count"] == pytest.approx(3, rel=1e-4)



def rewards_with_two_bad_records(settings: Settings) -> int:
    """The rewards topic with two windows of v1 and, between them, two records that are no
    window (invalid UTF-8, and one over the size limit); returns the first window's start."""
    from streamer.app.broker import create_topics
    from streamer.events import RewardWindow

    start = int(time.time() * 1000) // 60_000 * 60_000 - 3_600_000

    def window(at: int) -> bytes:
        return msgspec.json.encode(RewardWindow(
            window_start=at, window_end=at + 60_000, policy_version="v1", impressions=10,
            offer_clicks=1, conversions=1, revenue=5.0, reward_rate=0.5, ci95=[0.1, 0.9]))

    topic = settings.topics.rewards
    asyncio.run(create_topics(settings.kafka.bootstrap_servers, [topic], partitions=1))
    produce(settings, topic, [
        (b"v1", window(start)),
        (b"v1", window(start).replace(b'"v1"', b'"v\xff"')),  # invalid UTF-8
        (b"v1", window(start)[:-1] + b" " * settings.kafka.max_message_bytes + b"}"),
        (b"v1", window(start + 60_000)),
    ])
    return start


def test_the_rewards_reader_skips_and_counts_what_is_no_window(settings: Settings) -> None:
    # The worker's dashboard reader restarts from its one-day lookback after an error: one
    # record raised out of it (invalid UTF-8 was) froze the dashboard and guardrail gauges.
    from streamer.app.reward_board import RewardBoard, read_reward_windows

    start = rewards_with_two_bad_records(settings)
    board = RewardBoard()
    windows = asyncio.run(read_reward_windows(settings.kafka, settings.topics.rewards,
                                              follow=False, on_invalid=board.skip,
                                              idle_timeout_s=10))
    assert [w.window_start for w in windows] == [start, start + 60_000]
    assert board.invalid == 2


def test_a_followed_batch_of_skipped_records_only_is_passed_on(settings: Settings) -> None:
    # `streamer rewards --follow` refreshes its table (and its count of skipped records) in
    # on_batch: a batch holding nothing but skipped records left the count stale.
    from streamer.app.broker import create_topics
    from streamer.app.reward_board import read_reward_windows

    topic = settings.topics.rewards
    asyncio.run(create_topics(settings.kafka.bootstrap_servers, [topic], partitions=1))
    produce(settings, topic, [(b"v1", b"\xff not a window")])
    batches: list[list[Any]] = []
    skipped: list[Exception] = []

    async def follow() -> None:
        passed_on = asyncio.Event()

        def on_batch(batch: list[Any]) -> None:
            batches.append(batch)
            passed_on.set()

        reading = asyncio.create_task(read_reward_windows(
            settings.kafka, topic, follow=True, on_batch=on_batch, on_invalid=skipped.append))
        try:
            await asyncio.wait_for(passed_on.wait(), 30)
        finally:
            reading.cancel()

    asyncio.run(follow())
    assert batches[0] == [] and len(skipped) == 1


def test_the_rewards_and_report_commands_say_how_many_records_they_skipped(
        settings: Settings, tmp_path: Path) -> None:
    # They logged each record skipped, and their output counted only the windows read: a
    # table or a report short of windows looked complete.
    rewards_with_two_bad_records(settings)
    env = settings_env(settings) | {"COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "streamer", "rewards"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "2 windows · 2 windows skipped (undecodable" in shown.stdout, shown.stdout
    report = tmp_path / "report.html"
    made = subprocess.run([sys.executable, "-m", "streamer", "report", "-o", str(report)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert "2 windows -> " in made.stdout and "(2 windows skipped (undecodable" in made.stdout
    assert "2 windows, " in report.read_text()
    assert "<b>2 windows skipped (undecodable" in report.read_text()


@pytest.mark.parametrize("key", [b'"\xff"', b"not json"])
def test_a_changelog_record_whose_key_does_not_decode_lets_a_worker_restart(
        settings: Settings, start_worker: Any, key: bytes) -> None:
    # The last record of a global table's changelog partition (every worker recovers all of
    # them): its key not UTF-8 stopped the restarted worker; not JSON, the worker waited for
    # its offset for good and never became ready.
    first = start_worker()
    produce(settings, f"{settings.worker.app_id}-catalog-changelog", [(key, b"1.5")])
    first.process.stop()
    again = start_worker(ready_timeout_s=60)
    good = purchase(0, ["tea", "cup"], ts=int(time.time() * 1000))
    produce(settings, settings.topics.purchases,
            [(good.session_id.encode(), msgspec.json.encode(good))])
    wait_for(lambda: item_view(again, "tea")["count"] > 0.99, 30, "a purchase learned")


CRC_AT = struct.calcsize(">qiib")  # where a v2 batch's CRC sits; it covers what follows it
#: A batch's codec bits for lz4: on records that are not lz4, a batch the embedded broker keeps
#: as it is (it refuses a codec number it does not know) and no client can decompress.
LZ4 = 3


def click_batch(clicks: list[bytes], *, bad_key_at: int | None = None,
                codec: int | None = None) -> bytes:
    """One v2 record batch of ``clicks`` (each with a ``trace`` header); the header key of the
    one at ``bad_key_at`` replaced by bytes that are not UTF-8 (as Java and librdkafka
    producers may write them), or the codec bits set to ``codec``: the CRC recomputed, a
    batch the broker takes as it is."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    for i, value in enumerate(clicks):
        key = "ZZZZZ" if i == bad_key_at else "trace"
        builder.append(i, timestamp=None, key=b"s", value=value, headers=[(key, b"t")])
    raw = bytearray(builder.build())
    if bad_key_at is not None:
        i = raw.index(b"ZZZZZ")
        raw[i:i + 5] = b"\xff\xfe-id"
    if codec is not None:
        struct.pack_into(">h", raw, CRC_AT + 4, codec)
    struct.pack_into(">I", raw, CRC_AT, calc_crc32c(bytes(raw[CRC_AT + 4:])))
    return bytes(raw)


def produce_batch(settings: Settings, topic: str, partition: int, data: bytes) -> None:
    """Send the record batch ``data`` to ``topic[partition]`` as it is (a produce request of
    its own: aiokafka's producer only sends batches it built)."""
    from aiokafka import AIOKafkaProducer, TopicPartition
    from aiokafka.protocol.produce import ProduceRequest

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            await producer.partitions_for(topic)
            leader = producer.client.cluster.leader_for_partition(
                TopicPartition(topic, partition))
            response = await producer.client.send(leader, ProduceRequest(
                transactional_id=None, required_acks=-1, timeout=10_000,
                topics=[(topic, [(partition, data)])]))
            ((_, ((_, error, *_),)),) = response.topics
            assert error == 0, response
        finally:
            await producer.stop()

    asyncio.run(send())


def good_click(event_id: str, now: int) -> bytes:
    return msgspec.json.encode({"event_id": event_id, "ts": now, "user_id": "u",
                                "session_id": "s", "item_id": "i", "kind": "view"})


def test_a_click_whose_header_key_is_not_utf8_is_processed_with_the_others(
        settings: Settings, start_worker: Any) -> None:
    # aiokafka's parser raised UnicodeDecodeError out of the worker's fetch: the worker
    # exited 1, and met the record again after each restart (streamer.app.fetched_records).
    worker = start_worker()
    now = int(time.time() * 1000)
    t = settings.topics
    clicks = [good_click(f"c{i}", now) for i in range(3)]
    produce_batch(settings, t.clicks, 0, click_batch(clicks, bad_key_at=1))
    wait_for(lambda: worker.consumed(t.clicks) >= 3, 60, "the three clicks consumed",
             explain=lambda: worker.stats().get("streamer_events_consumed_total"))
    good = purchase(0, ["tea", "cup"], ts=now)
    produce(settings, t.purchases, [(good.session_id.encode(), msgspec.json.encode(good))])
    wait_for(lambda: item_view(worker, "tea")["count"] > 0.99, 30, "a purchase learned after")
    assert worker.consumed(t.clicks) == 3
    assert worker.process.proc.poll() is None
    assert "header key that is not UTF-8" in worker.process.log_path.read_text()
    assert not consume(settings, t.dead_letters, lambda rs: False, timeout_s=3)


def test_a_batch_that_cannot_be_parsed_is_dead_lettered_and_skipped(
        settings: Settings, start_worker: Any) -> None:
    # A batch no parser reads (here: lz4 that is not lz4) raised out of the worker's fetch as
    # the header key did, and would on every refetch: skipped, with one dead letter.
    worker = start_worker()
    now = int(time.time() * 1000)
    t = settings.topics
    produce_batch(settings, t.clicks, 0, click_batch([good_click("before", now)]))
    unreadable = click_batch([good_click(f"lost{i}", now) for i in range(2)], codec=LZ4)
    produce_batch(settings, t.clicks, 0, unreadable)
    produce_batch(settings, t.clicks, 0, click_batch([good_click("after", now)]))
    (record,) = consume(settings, t.dead_letters, lambda rs: len(rs) >= 1, timeout_s=60)
    letter = msgspec.json.decode(record.value, type=DeadLetter)
    assert (letter.source_topic, letter.partition, letter.kind) == (
        t.clicks, 0, "unreadable_batch")
    assert (letter.offset, letter.last_offset) == (1, 2)
    assert "lz4" in letter.reason.lower()
    assert record.key is None
    sent = base64.b64decode(letter.value_b64)
    assert sent[12:] == unreadable[12:]  # as fetched: the broker set its base offset
    wait_for(lambda: worker.consumed(t.clicks) >= 2, 30, "the clicks around it consumed")
    stats = worker.stats()
    assert stats["streamer_dead_letters_total"][f"{t.clicks},unreadable_batch"] == 1, stats
    assert worker.consumed(t.clicks) == 2
    assert worker.process.proc.poll() is None


def test_an_unreadable_changelog_batch_lets_a_worker_restart(
        settings: Settings, start_worker: Any) -> None:
    # The last batch of a global table's changelog partition (every worker recovers all of
    # them), unreadable: skipped, recovery must still count its offsets, or a restarted worker
    # waits for them for good, never ready.
    first = start_worker()
    changelog = f"{settings.worker.app_id}-catalog-changelog"
    produce_batch(settings, changelog, 0, click_batch([b"1.5"], codec=LZ4))
    first.process.stop()
    again = start_worker(ready_timeout_s=60)
    good = purchase(0, ["tea", "cup"], ts=int(time.time() * 1000))
    produce(settings, settings.topics.purchases,
            [(good.session_id.encode(), msgspec.json.encode(good))])
    wait_for(lambda: item_view(again, "tea")["count"] > 0.99, 30, "a purchase learned")
    # A letter from each worker that met it (the first may have been stopped before).
    letters = consume(settings, settings.topics.dead_letters, lambda rs: len(rs) >= 1)
    found = {(d.source_topic, d.kind, d.offset, d.last_offset) for r in letters
             if (d := msgspec.json.decode(r.value, type=DeadLetter))}
    assert found == {(changelog, "unreadable_batch", 0, 0)}
