"""streamer.app.fast_consumer: the install checks, the copied drain loop, and delivery semantics
equal to stock faust's ``wait_first(callback(message), suspend_flow.wait())`` in every case."""

from __future__ import annotations

import asyncio
import difflib
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

from streamer.app import fast_consumer
from streamer.app.fast_consumer import (
    FastConsumer,
    FastConsumerUnsupported,
    _Continuation,
    check_supported,
    install_fast_consumer,
)


def new_app() -> faust.App:
    return faust.App("fast-consumer-unit", broker="kafka://127.0.0.1:9", store="memory://")


# -- install -----------------------------------------------------------------------------------
def test_install_sets_the_consumer_class_of_this_apps_transport_only() -> None:
    app, other = new_app(), new_app()
    install_fast_consumer(app)
    assert app.transport.Consumer is FastConsumer
    assert other.transport.Consumer is faust_aiokafka.Consumer
    assert faust_aiokafka.Transport.Consumer is faust_aiokafka.Consumer
    install_fast_consumer(app)  # idempotent
    assert app.transport.Consumer is FastConsumer


def test_install_refuses_once_the_consumer_exists() -> None:
    app = new_app()
    app.consumer = object()  # type: ignore[assignment]  # what app.consumer caches
    with pytest.raises(FastConsumerUnsupported, match="already created its consumer"):
        install_fast_consumer(app)


def test_install_refuses_another_consumer_class() -> None:
    app = new_app()
    app.transport.Consumer = type("Custom", (faust_aiokafka.Consumer,), {})
    with pytest.raises(FastConsumerUnsupported, match="not faust's aiokafka"):
        install_fast_consumer(app)


def test_installed_faust_is_the_one_the_loop_was_copied_from() -> None:
    check_supported()
    assert faust.__version__ == fast_consumer.FAUST_VERSION


def test_install_fails_loudly_when_fausts_drain_loop_changed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def _drain_messages(self: Any, fetcher: Any) -> None:
        """A faust release whose loop differs."""

    monkeypatch.setattr(faust_consumer.Consumer, "_drain_messages", _drain_messages)
    with pytest.raises(FastConsumerUnsupported,
                       match=r"written against faust-streaming 0\.15\.3.*_drain_messages changed"):
        install_fast_consumer(new_app())


def test_install_fails_loudly_when_a_hook_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust_consumer.Consumer, "_add_gap")
    with pytest.raises(FastConsumerUnsupported, match=r"no _add_gap\(\)"):
        install_fast_consumer(new_app())


def test_the_copied_loop_differs_from_fausts_only_where_documented() -> None:
    stock = inspect.getsource(faust_consumer.Consumer._drain_messages).splitlines()
    ours = inspect.getsource(FastConsumer._drain_messages).splitlines()
    diff = difflib.unified_diff(stock, ours, lineterm="", n=0)
    changed = [line[0] + line[1:].strip() for line in diff
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == [
        "-async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover",
        "+async def _drain_messages(self, fetcher: ServiceT) -> None:",
        "+deliver = self._deliver",
        "-flag_consumer_fetching = CONSUMER_FETCHING",
        "+flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING",
        "-ait = cast(AsyncIterator, getmany(timeout=1.0))",
        "+ait = cast(AsyncIterator[tuple[TP, Message]], getmany(timeout=1.0))",
        "-if commit_every is not None:",
        "+if commit_every is not None:  # noqa: SIM102 (verbatim)",
        "-await self.wait_first(",
        "-callback(message), self.suspend_flow.wait()",
        "-)",
        "+await deliver(callback, message)",
    ]


# -- delivery semantics ------------------------------------------------------------------------
class FakeConsumer(Service):
    """What ``_deliver`` uses of a consumer: mode's ``wait_first`` and ``suspend_flow``."""

    suspended_deliveries = 0

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()

    async def deliver_stock(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        await self.wait_first(callback(message), self.suspend_flow.wait())  # faust 0.15.3's line

    async def deliver_fast(self, callback: Callable[[Any], Awaitable[Any]], message: Any) -> None:
        await FastConsumer._deliver(self, callback, message)  # type: ignore[arg-type]


@dataclass
class Callback:
    """A stand-in for the conductor: puts the message on a bounded queue."""

    queue: asyncio.Queue[Any]
    fail: str | None = None  # "before" the put, or "after" a put that had to wait
    log: list[str] = field(default_factory=list)

    async def __call__(self, message: Any) -> None:
        try:
            if self.fail == "before":
                raise ValueError("cannot decode")
            blocked = self.queue.full()
            await self.queue.put(message)
            if self.fail == "after" and blocked:
                raise ValueError("failed after waiting")
            self.log.append("done")
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise


@dataclass
class Outcome:
    returned: bool  # _deliver returned (False: it raised or is still blocked)
    raised: str | None
    callback: list[str]
    queued: list[Any]


async def scenario(name: str, path: str) -> Outcome:
    """Run one delivery of ``"m"`` through ``path`` ("stock" or "fast") under ``name``."""
    consumer = FakeConsumer()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
    callback = Callback(queue, fail={"raises": "before", "raises_after_wait": "after"}.get(name))
    if name not in ("free", "raises"):
        queue.put_nowait("earlier")  # full: the callback blocks
    if name in ("suspended_free", "suspended_full"):
        consumer.suspend_flow.set()
    if name == "suspended_free":
        queue.get_nowait()
    deliver = consumer.deliver_fast if path == "fast" else consumer.deliver_stock
    task = asyncio.ensure_future(deliver(callback, "m"))
    for _ in range(5):
        await asyncio.sleep(0)  # let the delivery run as far as it can
    if name in ("unblocked", "raises_after_wait"):
        assert queue.get_nowait() == "earlier"
    elif name == "rebalance":
        consumer.suspend_flow.set()
    elif name == "consumer_stops":
        consumer._stopped.set()
    elif name == "drain_cancelled":
        task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    raised = None
    if task in done and (task.cancelled() or task.exception()):
        raised = "CancelledError" if task.cancelled() else type(task.exception()).__name__
    else:
        task.cancel()
    await asyncio.sleep(0)  # cancellations of the leftover tasks land
    queued = [queue.get_nowait() for _ in range(queue.qsize())]
    return Outcome(task in done and raised is None, raised, callback.log, queued)


EXPECTED = {
    # name: (returned, raised, what the callback did, what is on the queue afterwards)
    "free": (True, None, ["done"], ["m"]),
    "unblocked": (True, None, ["done"], ["m"]),
    "rebalance": (True, None, ["cancelled"], ["earlier"]),
    "consumer_stops": (True, None, ["cancelled"], ["earlier"]),
    "suspended_free": (True, None, ["done"], ["m"]),
    "suspended_full": (True, None, ["cancelled"], ["earlier"]),
    "raises": (False, "ValueError", [], []),
    "raises_after_wait": (False, "ValueError", [], ["m"]),
    "drain_cancelled": (False, "CancelledError", ["cancelled"], ["earlier"]),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_delivery_behaves_as_stock_faust(name: str) -> None:
    stock = asyncio.run(scenario(name, "stock"))
    fast = asyncio.run(scenario(name, "fast"))
    assert fast == stock
    assert (fast.returned, fast.raised, fast.callback, fast.queued) == EXPECTED[name]


def test_a_callback_that_does_not_block_runs_without_tasks_and_yields_once() -> None:
    async def main() -> tuple[int, list[str], int]:
        loop = asyncio.get_running_loop()
        created = 0

        def counting_factory(loop: asyncio.AbstractEventLoop,
                             coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop)

        consumer = FakeConsumer()
        callback = Callback(asyncio.Queue())
        loop.set_task_factory(counting_factory)
        order: list[str] = []
        for i in range(3):
            loop.call_soon(order.append, f"other{i}")  # e.g. the agent, a timer
            await consumer.deliver_fast(callback, i)
            order.append(f"delivered{i}")
        return created, order, consumer.suspended_deliveries

    created, order, suspended = asyncio.run(main())
    assert created == 0
    assert order == ["other0", "delivered0", "other1", "delivered1", "other2", "delivered2"]
    assert suspended == 0


def test_a_callback_that_blocks_is_counted_and_continued_in_one_task() -> None:
    async def main() -> tuple[int, list[str]]:
        consumer = FakeConsumer()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        queue.put_nowait("earlier")
        callback = Callback(queue)
        delivery = asyncio.ensure_future(consumer.deliver_fast(callback, "m"))
        await asyncio.sleep(0)
        assert queue.get_nowait() == "earlier"
        await delivery
        assert queue.get_nowait() == "m"
        return consumer.suspended_deliveries, callback.log

    assert asyncio.run(main()) == (1, ["done"])


def test_a_continuation_cancelled_before_it_ran_cleans_up_its_coroutine() -> None:
    async def main() -> tuple[bool, list[str]]:
        blocker = asyncio.get_running_loop().create_future()
        log: list[str] = []

        async def waits() -> None:
            try:
                await blocker
            finally:
                log.append("cleaned up")

        coro = waits()
        pending = coro.send(None)
        assert pending is blocker
        task = asyncio.ensure_future(_Continuation(coro, pending))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return blocker.cancelled(), log

    assert asyncio.run(main()) == (True, ["cleaned up"])
