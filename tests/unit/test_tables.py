"""The worker's table views: write-back buffering and its contract with at-least-once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import msgspec
import pytest

from streamer.app.tables import (
    ChangelogUndelivered,
    EncodedTable,
    WriteBuffer,
    encode_key,
    store_of,
)
from streamer.copurchase import Decayed, ItemStats
from streamer.engine import ItemRecord
from streamer.events import BundleOffer, Evidence, Variant
from streamer.events.dedup import SeenId
from tests.conftest import until

packed = msgspec.msgpack.encode  # how the tables encode their values (but ints)
OFFER = BundleOffer(
    offer_id="o1", ts=1_700_000_000_000, anchor_item_id="a", segment="all", policy_version="v0",
    variants=[Variant(items=["a", "b"], discount_pct=10.0, bundle_price=27.0, probability=1.0,
                      score=1.0, evidence=Evidence(support=1.0, confidence=1.0, lift=1.0))],
    expires_at=1_700_003_600_000)


class FakeFaustTable(MutableMapping[str, bytes]):
    """What BufferedTable uses of a faust Table: a store (``data``) and ``send_changelog``,
    which returns a future resolved when the broker has the message (here: by the test)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.changelog: list[tuple[int, str, bytes | None]] = []
        self.futures: list[asyncio.Future[None]] = []

    def send_changelog(self, partition: int, key: str, value: bytes | None,
                       value_serializer: str | None = None) -> asyncio.Future[None]:
        self.changelog.append((partition, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    def __getitem__(self, key: str) -> bytes:
        return self.data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        raise AssertionError("BufferedTable must write through data + send_changelog")

    def __delitem__(self, key: str) -> None:
        raise AssertionError("BufferedTable must delete through data + send_changelog")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


async def still_pending(task: asyncio.Future[Any], within_s: float = 0.05) -> bool:
    """True when ``task`` does not finish within ``within_s`` (it waits on something)."""
    done, _ = await asyncio.wait({task}, timeout=within_s)
    return not done


def test_a_hot_key_is_sent_once_per_flush_to_the_partition_it_was_written_for() -> None:
    async def run() -> FakeFaustTable:
        raw = FakeFaustTable()
        buffer = WriteBuffer()
        table = buffer.table(raw, float)
        buffer.partition = 2
        for n in range(100):
            table["tea"] = float(n)
        buffer.partition = 3
        table["cup"] = 1.0
        del table["cup"]
        table["jam"] = 5.0
        assert raw.changelog == [] and table["tea"] == 99.0 and "cup" not in table
        assert sorted(table) == ["jam", "tea"] and len(table) == 2
        writing = asyncio.ensure_future(buffer.write())
        await until(lambda: raw.changelog, "the flush")
        # "cup", written and deleted before the flush, never reaches the changelog.
        assert raw.changelog == [(2, "tea", packed(99.0)), (3, "jam", packed(5.0))]
        assert raw.data == {"tea": packed(99.0), "jam": packed(5.0)}
        assert await still_pending(writing)  # waits until the broker has every message
        for fut in raw.futures:
            fut.set_result(None)
        assert await writing == 2
        return raw

    asyncio.run(run())


def test_a_delete_sends_a_tombstone_only_for_a_key_the_store_holds() -> None:
    async def run() -> list[tuple[int, str, bytes | None]]:
        raw = FakeFaustTable()
        buffer = WriteBuffer()
        table = buffer.table(raw, float)
        table["kept"], table["gone"], table["again"] = 1.0, 2.0, 3.0
        buffer.flush()
        table["again"] = 4.0  # stored and written since: deleted all the same
        table["new"] = 5.0  # written and deleted between two flushes: never stored
        for key in ("gone", "again", "new"):
            del table[key]
        for key in ("gone", "new", "never"):
            with pytest.raises(KeyError):
                del table[key]
        assert sorted(table) == ["kept"] and len(table) == 1
        sent = len(raw.changelog)
        buffer.flush()
        assert raw.data == {"kept": packed(1.0)} and table.get("again") is None
        return raw.changelog[sent:]

    assert asyncio.run(run()) == [(0, "again", None), (0, "gone", None)]


def test_write_waits_for_messages_another_agent_flushed() -> None:
    """Agent B's write may have sent agent A's changes: A must still wait for them."""
    async def run() -> None:
        raw = FakeFaustTable()
        buffer = WriteBuffer()
        table = buffer.table(raw, SeenId)
        table["e1"] = SeenId(1, 0, 7)  # agent A's change
        b = asyncio.ensure_future(buffer.write())  # agent B flushes it
        await until(lambda: raw.futures, "B's flush")
        a = asyncio.ensure_future(buffer.write())  # agent A: nothing left to flush
        assert await still_pending(a) and not b.done()
        raw.futures[0].set_result(None)
        assert await b == 1 and await a == 0

    asyncio.run(run())


def test_a_failed_changelog_send_fails_the_write() -> None:
    async def run() -> None:
        raw = FakeFaustTable()
        buffer = WriteBuffer()
        buffer.table(raw, float)["tea"] = 1.0
        writing = asyncio.ensure_future(buffer.write())
        await until(lambda: raw.futures, "the flush")
        raw.futures[0].set_exception(RuntimeError("broker gone"))
        with pytest.raises(RuntimeError, match="broker gone"):
            await writing

    asyncio.run(run())


def test_reads_after_a_flush_decode_nothing_again() -> None:
    raw: dict[str, Any] = {}
    buffer = WriteBuffer()
    table = buffer.table(raw, SeenId)
    value = SeenId(5, 1, 9)
    table["e"] = value
    buffer.flush()
    assert raw["e"] == packed(value) == b"\x93\x05\x01\t"  # an array_like Struct: an array
    assert table["e"] is value  # the cached value of those very bytes


def test_a_peek_reads_without_evicting_what_the_cache_holds() -> None:
    raw: dict[str, Any] = {f"k{i}": packed(SeenId(i, 0, 0)) for i in range(8)}
    table = WriteBuffer(cache_size=4).table(raw, SeenId)
    hot = table["k0"]
    assert [table.peek(f"k{i}").ts for i in range(8)] == list(range(8))
    assert table.peek("k0") is hot and table["k0"] is hot  # still the cached value
    assert table.peek("absent", "none") == "none"
    table["k1"] = pending = SeenId(1, 2, 3)
    del table["k2"]
    assert table.peek("k1") is pending and table.peek("k2") is None
    raw["bad"] = b"not json"
    assert table.peek("bad", "none") == "none" and "bad" not in raw and table.undecodable == 1


@pytest.mark.parametrize(("value_type", "value", "legacy"), [
    (float, 2.5, b"2.5"),
    (float, -0.0, b"-0.0"),
    (SeenId, SeenId(5, 1, 9), b"[5,1,9]"),
    (ItemRecord, ItemRecord(ItemStats(7, 2.0, {"cup": 1.5}, 0.0, {"cup|jam": 0.5}, 0.0),
                            Decayed(2.0, 7), {0: 4, 3: 12}), None),
    (ItemRecord, ItemRecord(None, Decayed(0.0, 7)), None),
    (Decayed, Decayed(0.0, -1), None),
    (BundleOffer, OFFER, None),
    (str, "", None),
])
def test_values_are_messagepack_and_json_ones_written_before_still_read(
        value_type: Any, value: Any, legacy: bytes | None) -> None:
    """Values go out as MessagePack; what an earlier version wrote (JSON, e.g. recovered from
    its changelog) reads as the same value: the first byte tells the formats apart."""
    raw: dict[str, Any] = {}
    table = EncodedTable(raw, value_type, cache_size=0)
    table["k"] = value
    assert raw["k"] == packed(value) and raw["k"][0] >= 0x80
    assert table["k"] == value
    raw["k"] = legacy if legacy is not None else msgspec.json.encode(value)
    assert table["k"] == value


def test_an_int_table_stays_json_as_one_byte_messagepack_could_read_as_a_json_digit() -> None:
    raw: dict[str, Any] = {}
    table = EncodedTable(raw, int, cache_size=0)
    for n in (0, 5, 53, 1_700_000_000_000, -3):
        table["k"] = n
        assert raw["k"] == str(n).encode() and table["k"] == n
    raw["k"] = b"5"  # as MessagePack this byte would be 53
    assert table["k"] == 5


class SlowSender:
    """A ChangelogSender stand-in: handing records over takes until ``handed`` is set, and
    their delivery until the test resolves ``futures``."""

    def __init__(self) -> None:
        self.handed = asyncio.Event()
        self.futures: list[asyncio.Future[None]] = []

    async def send(self, records: list[Any]) -> list[asyncio.Future[None]]:
        await self.handed.wait()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return [fut]


def test_a_writer_waits_for_its_changes_while_another_writer_is_still_sending_them() -> None:
    async def run() -> None:
        sender = SlowSender()
        buffer = WriteBuffer(sender)  # type: ignore[arg-type]
        table = buffer.table(FakeFaustTable(), float)
        raw = table._raw
        raw.changelog_topic = type("T", (), {  # type: ignore[attr-defined]
            "get_topic_name": lambda self: "items-changelog",
            "prepare_key": lambda self, k, s: (k.encode(), None),
            "prepare_value": lambda self, v, s: (v, None)})()
        raw.key_serializer = raw.value_serializer = "raw"  # type: ignore[attr-defined]
        table["tea"] = 1.0  # agent D's change
        a = asyncio.ensure_future(buffer.write())  # agent A flushes and sends it (slowly)
        await until(lambda: not buffer.pending() and not buffer._outbox, "A taking the records")
        d = asyncio.ensure_future(buffer.write())  # agent D: nothing left to flush
        assert await still_pending(d)
        sender.handed.set()
        await until(lambda: sender.futures, "A handing the records over")
        assert await still_pending(d), "D must wait for the delivery of the records A is sending"
        sender.futures[0].set_result(None)
        assert await a == 1 and await d == 0

    asyncio.run(run())


class FakeSender:
    """What WriteBuffer uses of a ChangelogSender: records sent, futures of their delivery."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, records: list[Any]) -> list[asyncio.Future[None]]:
        self.sent += records
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return [fut]


class ChangelogTable(FakeFaustTable):
    """A FakeFaustTable with the changelog topic attributes the sender path serializes with."""

    key_serializer = value_serializer = "raw"

    class changelog_topic:  # the faust attribute's name
        @staticmethod
        def get_topic_name() -> str:
            return "sessions-changelog"

        @staticmethod
        def prepare_key(key: str, serializer: Any) -> tuple[bytes, Any]:
            return key.encode(), None

        @staticmethod
        def prepare_value(value: bytes, serializer: Any) -> tuple[bytes, Any]:
            return value, None


def test_no_changelog_record_is_sent_while_an_agent_holds_the_buffer() -> None:
    """An outcome must reach the broker before the state that closed its impression: while
    the closing agent holds, another agent's write flushes the change but sends nothing; a
    hold taken while that write waits holds it too; the hold ends with the block, even when
    the block raises."""
    async def run() -> None:
        sender = FakeSender()
        buffer = WriteBuffer(sender)  # type: ignore[arg-type]
        sessions = buffer.table(ChangelogTable(), float)
        with buffer.holding() as hold:
            sessions["s1"] = 1.0  # closes an impression ...
            hold.hold()  # ... in the same step
            other = asyncio.ensure_future(buffer.write())  # another agent's write
            assert await still_pending(other)
            assert sender.sent == []  # flushed, not sent
            with pytest.raises(ValueError), buffer.holding() as second:
                sessions["s2"] = 2.0
                second.hold()
                raise ValueError("publishing failed")
            assert not second.held
            with buffer.holding() as third:
                third.hold()
                hold.release()  # the first agent's outcomes are on the broker
                assert await still_pending(other)  # the third still holds
            # (the agent writes here, after its block)
        assert await other == 1
        assert [key for _, _, key, _ in sender.sent] == [b"s1"]
        assert await buffer.write() == 1  # s2, written after the other write flushed
        assert [key for _, _, key, _ in sender.sent] == [b"s1", b"s2"]

    asyncio.run(run())


def test_str_keys_are_serialized_as_fausts_json_key_serializer_does() -> None:
    """Changelog keys written by BufferedTable.flush are the bytes faust's own send_changelog
    would write (faust recovers the table from them, and compaction matches keys by bytes)."""
    app = faust.App("tables-unit", broker="kafka://127.0.0.1:9", store="memory://")
    schema = faust.Schema(key_type=str, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")
    table = app.Table("keys", schema=schema, key_type=str, value_type=bytes)
    assert table.key_serializer == "json"
    prepare_key = table.changelog_topic.prepare_key
    rng = random.Random(6)
    keys = ["p123", "SKU000001\x1floyal", "\x00orders", 'a"b\\c', "é", "🛒", ""]
    keys += ["".join(chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0xD7FF),
                                     rng.randrange(0x10000, 0x10FFFF)]))
                     for _ in range(rng.randrange(12))) for _ in range(2000)]
    for key in keys:
        assert encode_key(key) == prepare_key(key, "json")[0], key


def test_a_faust_memory_tables_values_are_read_from_its_stores_own_dict() -> None:
    """store_of: the plain dict faust's memory store keeps, the same one for the store's life,
    so what faust writes there (recovery, its own assignments) is what the view reads."""
    app = faust.App("tables-store", broker="kafka://127.0.0.1:9", store="memory://")
    table = app.Table("prices", key_type=str, value_type=bytes)
    store = table.data
    assert type(store_of(table)) is dict and store_of(table) is store.data
    view: EncodedTable[float] = EncodedTable(table, float)
    store["tea"] = b"2.5"  # through faust's store (FastUserDict)
    assert view["tea"] == 2.5 and "cup" not in view and view.get("cup") is None
    store.apply_changelog_batch([], to_key=str, to_value=bytes)  # updates the same dict
    store["tea"] = b"3.0"
    assert view.get("tea") == 3.0
    store.clear()  # as faust resets a store: the same dict, emptied
    assert "tea" not in view and store_of(table) is store.data
    other = FakeFaustTable()  # a store that is not faust's memory store: used as it is
    assert store_of(other) is other.data


def test_deferred_messages_are_waited_for_by_the_next_write_and_a_failed_one_fails_it() -> None:
    async def run() -> None:
        buffer = WriteBuffer(FakeSender())  # type: ignore[arg-type]
        table = buffer.table(ChangelogTable(), float)
        loop = asyncio.get_running_loop()
        offer, basket = loop.create_future(), loop.create_future()
        table["tea"] = 1.0
        buffer.defer(offer, basket)  # returns at once; nothing sent yet
        assert buffer.pending() == 1
        write = asyncio.ensure_future(buffer.write())  # an offset commit
        await until(lambda: not buffer.pending(), "the commit flushing the change")
        offer.set_result(None)
        assert await still_pending(write), "a commit waits for every deferred message"
        basket.set_result(None)
        assert await write == 1
        lost = loop.create_future()
        lost.set_exception(ConnectionError("never delivered"))
        buffer.defer(lost)
        for _ in range(2):  # no later commit may pass it either
            with pytest.raises(ConnectionError):
                await buffer.write()

    asyncio.run(run())


def test_a_write_after_a_failed_delivery_sends_nothing_more() -> None:
    # An item-baskets message lost (purchases 10-14), the next batch's baskets learned (15-19):
    # their records carry the purchases partition's offset mark 19, and sent, would make the
    # lost purchases read as learned already when they are delivered again after the restart.
    async def run() -> None:
        sender = FakeSender()
        buffer = WriteBuffer(sender)  # type: ignore[arg-type]
        table = buffer.table(ChangelogTable(), float)
        lost = asyncio.get_running_loop().create_future()
        lost.set_exception(ConnectionError("basket batch expired"))
        buffer.defer(lost)
        table["tea"] = 19.0  # learned after the lost message
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await buffer.write()
        assert sender.sent == []

    asyncio.run(run())


class FailingOnceSender(FakeSender):
    """A FakeSender whose first send fails: it raises (aiokafka's add_batch timing out, a
    closed producer) or, with ``cancelled``, waits until the write sending is cancelled."""

    def __init__(self, *, cancelled: bool = False) -> None:
        super().__init__()
        self.cancelled, self.calls = cancelled, 0

    async def send(self, records: list[Any]) -> list[asyncio.Future[None]]:
        self.calls += 1
        if self.calls == 1:
            if self.cancelled:
                await asyncio.Event().wait()
            raise TimeoutError("batch could not be added")
        return await super().send(records)


@pytest.mark.parametrize("cancelled", [False, True])
def test_records_a_failed_send_did_not_hand_over_are_sent_by_the_next_write(
        cancelled: bool) -> None:
    """A send that raises or is cancelled fails its write (the commit); the records it took
    go back to the outbox, ahead of those flushed since, so no later commit passes them."""
    async def run() -> None:
        sender = FailingOnceSender(cancelled=cancelled)
        buffer = WriteBuffer(sender)  # type: ignore[arg-type]
        table = buffer.table(ChangelogTable(), float)
        table["tea"] = 1.0
        first = asyncio.ensure_future(buffer.write())
        await until(lambda: sender.calls, "the send")
        if cancelled:
            first.cancel()
        with pytest.raises(asyncio.CancelledError if cancelled else TimeoutError):
            await first
        table["cup"] = 2.0
        assert await buffer.write() == 1
        assert [key for _, _, key, _ in sender.sent] == [b"tea", b"cup"]

    asyncio.run(run())


def test_a_cancelled_write_leaves_the_deliveries_it_waited_for_be() -> None:
    """Cancelling a write (a commit) must not cancel what it waits for: the next write waits
    for the same deliveries; a delivery cancelled elsewhere fails every later write."""
    async def run() -> None:
        raw = FakeFaustTable()
        buffer = WriteBuffer()
        buffer.table(raw, float)["tea"] = 1.0
        offer = asyncio.get_running_loop().create_future()
        buffer.defer(offer)
        first = asyncio.ensure_future(buffer.write())
        await until(lambda: raw.futures, "the flush")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not raw.futures[0].cancelled() and not offer.cancelled()
        second = asyncio.ensure_future(buffer.write())
        assert await still_pending(second)
        raw.futures[0].set_result(None)
        assert await still_pending(second), "the deferred offer is not delivered yet"
        offer.cancel()  # e.g. a producer closing under it: the broker may not have it
        for write in (second, buffer.write(), buffer.write()):
            with pytest.raises(ChangelogUndelivered):
                await write

    asyncio.run(run())


def test_a_value_that_does_not_encode_fails_the_flush_and_no_change_is_lost() -> None:
    """A bug upstream (a value of the wrong type) fails the write, hence the commit; every
    change of that flush stays pending and readable, none is dropped for the next commit."""
    async def run() -> None:
        sender = FakeSender()
        buffer = WriteBuffer(sender)  # type: ignore[arg-type]
        table = buffer.table(ChangelogTable(), float)
        table["a"], table["c"] = 1.0, 3.0
        table["bad"] = object()  # type: ignore[assignment]
        table["z"] = 4.0
        for _ in range(2):  # no later commit passes it either
            with pytest.raises(TypeError):
                await buffer.write()
            assert buffer.pending() == 4 and table.get("z") == 4.0
        table["bad"] = 2.0  # (a fixed worker would redo it from redelivered events)
        assert await buffer.write() == 4
        assert {key for _, _, key, _ in sender.sent} == {b"a", b"bad", b"c", b"z"}

    asyncio.run(run())


@pytest.mark.parametrize("replicas", [0, 2])
def test_standby_replicas_reach_faust(replicas: int) -> None:
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    settings = Settings(worker={"app_id": f"standby-{replicas}", "standby_replicas": replicas})
    assert create_app(settings).app.conf.table_standby_replicas == replicas
    assert Settings().worker.standby_replicas == 0


def test_a_buffers_tables_keep_as_many_decoded_values_as_it_says() -> None:
    """A read of a value the cache holds returns the very object decoded (or written) before;
    one the cache dropped (the oldest quarter, when full) is decoded again, equal."""
    raw: dict[str, Any] = {}
    buffer, no_cache = WriteBuffer(cache_size=8), WriteBuffer(cache_size=0)
    table, uncached = buffer.table(raw, SeenId), no_cache.table({}, SeenId)
    values = {f"e{n}": SeenId(n, 0, n) for n in range(12)}
    for key, value in values.items():
        table[key] = uncached[key] = value
    buffer.flush()
    no_cache.flush()
    # Newest first: a miss inserts what it decodes, and may drop older entries.
    held = [key for key in reversed(values) if table[key] is values[key]]
    assert held == [f"e{n}" for n in range(11, 3, -1)]  # e0-e3 dropped, two at a time
    again = table["e0"]
    assert again == values["e0"] and again is not values["e0"] and table["e0"] is again
    assert uncached["e11"] == values["e11"] and uncached["e11"] is not uncached["e11"]


@pytest.mark.parametrize("size", [None, 0, 100])
def test_the_table_cache_setting_reaches_every_table_of_the_worker(size: int | None) -> None:
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    worker: dict[str, Any] = {"app_id": f"table-cache-{size}"}
    if size is not None:
        worker["table_cache_size"] = size
    sa = create_app(Settings(worker=worker))
    sizes = {table._cache_size for table in sa.buffer.tables}
    assert sizes == {4096 if size is None else size} and len(sa.buffer.tables) >= 10
    with pytest.raises(ValueError, match="table_cache_size"):
        Settings(worker={"table_cache_size": -1})


@pytest.mark.parametrize("size", [None, 64 * 1024])
def test_producer_batch_size_reaches_faust(size: int | None) -> None:
    """Changelog records go out in the producer's batches (ChangelogSender): the worker's
    producer builds batches of ``kafka.producer_batch_bytes``, 512 KiB unless set, well below
    Kafka's default message.max.bytes."""
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    kafka = {} if size is None else {"producer_batch_bytes": size}
    settings = Settings(kafka=kafka, worker={"app_id": f"batch-{size}"})
    expected = 512 * 1024 if size is None else size
    assert create_app(settings).app.conf.producer_max_batch_size == expected
    with pytest.raises(ValueError, match="producer_batch_bytes"):
        Settings(kafka={"producer_batch_bytes": 1024})


@pytest.mark.parametrize("batch_max", [None, 100, 10_000])
def test_an_agents_stream_buffer_holds_a_whole_batch(batch_max: int | None) -> None:
    """An agent takes its batch from its stream's buffer (``streamer.app.batching``): the
    worker's buffers hold ``worker.batch_max`` events (4,096 unless set), and never fewer than
    faust's default, so a batch is not cut at the buffer's size."""
    from streamer.app.factory import STREAM_BUFFER_DEFAULT, create_app
    from streamer.settings import Settings

    assert STREAM_BUFFER_DEFAULT == 4096
    worker: dict[str, Any] = {"app_id": f"buffer-{batch_max}"}
    if batch_max is not None:
        worker["batch_max"] = batch_max
    settings = Settings(worker=worker)
    assert settings.worker.batch_max == (4096 if batch_max is None else batch_max)
    held = create_app(settings).app.conf.stream_buffer_maxsize
    assert held == max(4096, settings.worker.batch_max)


def test_the_workers_engine_learns_in_place_only_what_no_flush_has_handed_out() -> None:
    """The worker's engine updates an anchor's tables in place between flushes of its
    write-back; a value a flush wrote (to the store and the cache of decoded values) is never
    modified afterwards."""
    import msgspec

    from streamer.app.factory import create_app
    from streamer.events import OrderLine, PurchaseEvent
    from streamer.settings import Settings

    sa = create_app(Settings(worker={"app_id": "in-place-learning"}))
    engine, items = sa.engine, sa.engine.state.items

    def buy(n: int, partner: str) -> None:
        purchase = PurchaseEvent(
            event_id=f"e{n}", ts=1_700_000_000_000, user_id="u", session_id="s",
            order_id=f"o{n}",
            items=[OrderLine(item_id=i, quantity=1, unit_price=1.0) for i in ("a", partner)])
        for basket in engine.fan_out(purchase, source=0, offset=n):
            sa.buffer.partition = 0
            engine.learn_baskets([basket])

    buy(0, "b")
    first = items["a"]
    buy(1, "c")
    assert items["a"].stats.partners is first.stats.partners  # not flushed yet: in place
    sa.buffer.flush()
    flushed = items["a"]  # what the store and its cache hold now
    encoded = msgspec.json.encode(flushed)
    buy(2, "d")
    buy(3, "b")
    assert msgspec.json.encode(flushed) == encoded
    assert items["a"].stats.partners == {"b": 2.0, "c": 1.0, "d": 1.0}


@pytest.mark.parametrize("bad", [b"not json", b'"\xff"', b"\xa1\xff", b"[" * 5000 + b"]" * 5000])
def test_a_stored_value_that_does_not_decode_reads_as_absent_and_is_counted(bad: bytes) -> None:
    # Recovery stores changelog values undecoded: one a stray producer wrote raised out of
    # the agent that read its key (the worker stopped), and every restart met it again.
    from streamer.events.dedup import Deduplicator

    buffer = WriteBuffer()
    raw = {"e1": bad, "e2": msgspec.msgpack.encode(SeenId(5, 0, 1))}
    seen = buffer.table(raw, SeenId)
    dedup = Deduplicator(seen, ttl_ms=1_000, capacity=10)  # rebuilds from items()
    assert seen.undecodable == 1 and "e1" not in seen and list(seen) == ["e2"]
    assert dedup.first_time("e1", ts_ms=6) and not dedup.first_time("e2", ts_ms=6)
    buffer.flush()
    assert msgspec.msgpack.decode(raw["e1"], type=SeenId) == SeenId(6, 0, -1)  # healed
    prices = EncodedTable({"tea": bad}, float)
    with pytest.raises(KeyError):
        prices["tea"]
    assert prices.get("tea", 0.0) == 0.0 and list(prices.values()) == []


@pytest.mark.parametrize(("value_type", "bad"), [
    (str, b"\xa1\xff"),  # MessagePack: invalid UTF-8 raises UnicodeDecodeError
    (dict[str, Any], b"\x81\xa1k" + b"\x91" * 5000 + b"\x90"),  # RecursionError
])
def test_a_value_that_does_not_decode_for_any_reason_reads_as_absent(
        value_type: Any, bad: bytes) -> None:
    table = EncodedTable({"k": bad}, value_type)
    assert table.get("k") is None and table.undecodable == 1


def test_a_dead_letter_is_durable_before_the_next_offset_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dead letter is the only trace of its message once that message's offset is
    committed: the commit waits for its delivery, and fails when it failed."""
    from types import SimpleNamespace

    from streamer.app.factory import create_app
    from streamer.events import InvalidEvent
    from streamer.settings import Settings

    sa = create_app(Settings(worker={"app_id": "dead-letter-durable"}))
    sent: list[dict[str, Any]] = []

    async def send(self: Any, **kw: Any) -> asyncio.Future[Any]:
        sent.append({"topic": self.get_topic_name(), **kw})
        future = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("the broker refused the letter"))
        return future

    monkeypatch.setattr(faust.topics.Topic, "send", send)
    message = SimpleNamespace(topic="clicks", partition=0, offset=7, key=b"k" * 5000,
                              value=b"not json")

    async def run() -> None:
        await sa.dead_letter(message, InvalidEvent("not_json", "JSON is malformed"))
        with pytest.raises(RuntimeError, match="refused the letter"):
            await sa.buffer.write()

    asyncio.run(run())
    [letter] = sent
    assert letter["topic"] == sa.settings.topics.dead_letters
    assert letter["key"] == b"k" * 1024  # cut: a letter stays far below a request's size
    assert b"(key truncated to 1024 of 5000 bytes)" in letter["value"]


def test_keys_written_live_are_forgotten_with_their_partition_after_a_rebalance() -> None:
    """faust's memory store drops, once a rebalance's recovery completes, the keys of the
    partitions this worker no longer holds: the keys a flush wrote too, not only the ones
    recovery read (those written live stayed: another worker's share kept in memory, and
    come back as they were if their partition did after their tombstones were compacted)."""
    from faust.types import TP

    app = faust.App("tables-purge", broker="kafka://127.0.0.1:9", store="memory://")
    table = app.Table("sessions", key_type=str, value_type=bytes, partitions=4)
    buffer = WriteBuffer(FakeSender())  # type: ignore[arg-type]
    view = buffer.table(table, float)
    for partition, key in enumerate(["a", "b", "c"]):
        buffer.partition = partition
        view[key] = float(partition)
    buffer.partition = 2
    del view["c"]

    async def run() -> None:
        await buffer.write()
        topic = table.changelog_topic.get_topic_name()
        await table.data.on_recovery_completed({TP(topic, 1), TP(topic, 3)}, set())

    asyncio.run(run())
    assert sorted(store_of(table)) == ["b"] and view.get("a") is None and view["b"] == 1.0


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -5.0, 1e300])
def test_the_workers_catalog_reads_a_price_out_of_bounds_as_absent(poison: float) -> None:
    """The catalog is a global table: every worker applies every record of its changelog. A
    price no event could carry (a stray producer's record) priced bundles at NaN or 9e299 in
    the offers published; it reads as absent, as any value that does not decode."""
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    sa = create_app(Settings(worker={"app_id": f"catalog-bounds-{poison}"}))
    catalog = sa.engine.state.catalog
    store = store_of(sa.app.tables["catalog"])
    store["cup"], store["tea"] = packed(poison), packed(2.5)  # as recovery stores them
    assert catalog.get("cup") is None and catalog.get("tea") == 2.5
    assert catalog.undecodable == 1
