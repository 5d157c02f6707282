"""Which item baskets a worker may learn where it reads the purchase, skipping the repartition.

A purchase read from ``purchases`` partition *q* fans out into one basket per item; each goes
to the item-baskets partition *p* of its anchor, where the items agent of *p*'s owner learns
it (``streamer.app.factory``). When the worker that reads *q* also owns *p*, the round trip
through the broker (encode, produce, fetch, decode: two hops of latency instead of one, and
the broker's work) buys nothing: the purchases agent can learn those baskets itself, writing
the same record to the same changelog partition *p*.

It may only do so once nothing older from *q* can still reach *p*'s anchors through the topic.
An anchor's record keeps, per purchases partition, the highest offset learned
(``streamer.engine``): a basket at or below that mark is taken for one learned already. Were
the agent to learn *q*'s offset 101 in place while a basket of offset 95 still waited in *p*
(sent by *q*'s previous owner before a rebalance, or by this worker before it owned *p*), the
items agent would then drop offset 95 as a duplicate: a lost purchase.

So, per generation of the consumer group, the first basket message this worker sends to a
partition *p* it owns is a **barrier**: every message sent to *p* before the generation began
(by whoever read the purchases partitions this worker reads now) lies before it in *p*. Once
the items agent here has learned the barrier, *p* is **armed**: from then on the purchases
agent learns *p*'s baskets in place. Between the barrier and the arming the agent goes on
sending through the topic (it never waits: a delivery blocked on its full queue would hold up
the consumer's one delivery loop, the items agent's deliveries included) and keeps what it
sent; on arming it learns those in place first, in order. The items agent later finds them
learned already (the marks) and skips them. So nothing is learned out of order, nothing twice.
A new generation (a rebalance) starts over. Messages sent to *p* by other workers, from
purchases partitions they read, are not affected: marks are per purchases partition.

Plain Python, no faust: the agents tell it what they sent and learned, with the consumer
generation of the moment.

>>> route = LocalBaskets()
>>> route.local(2, generation=5)  # nothing known yet: through the topic
False
>>> route.sending(2, ["b1"], generation=5)  # the barrier
True
>>> route.sending(2, ["b2", "b3"], generation=5)  # kept until the arming
False
>>> route.sent(2, offset=40, generation=5, barrier=True)
>>> route.learned(2, offset=39, generation=5)  # older messages: not yet
>>> route.local(2, generation=5)
False
>>> route.learned(2, offset=40, generation=5)  # the barrier learned: armed
>>> route.local(2, generation=5), route.take_kept(2)
(True, ['b2', 'b3'])
>>> route.local(2, generation=6)  # a rebalance: through the topic again until re-armed
False
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalBaskets"]


class LocalBaskets:
    """Arms item-baskets partitions for learning in place (see the module doc). Not thread-safe;
    owned by the worker's event loop. ``keep_limit``: most baskets kept per partition between
    a barrier and its arming; past it the partition is given up for the generation (the items
    agent far behind, e.g. after a rebalance)."""

    __slots__ = ("_barrier", "_generation", "_keep_limit", "_kept", "_learned", "_out")

    def __init__(self, keep_limit: int = 50_000) -> None:
        self._keep_limit = keep_limit
        self._generation: int | None = None
        #: Per partition, this generation: the barrier's offset once acknowledged (None: sent,
        #: not yet acknowledged).
        self._barrier: dict[int, int | None] = {}
        #: Per partition, this generation: highest offset the items agent learned.
        self._learned: dict[int, int] = {}
        #: Per partition: baskets sent after the barrier, to learn in place on arming.
        self._kept: dict[int, list[Any]] = {}
        #: Partitions out of the running for this generation (a failed send, too much kept).
        self._out: set[int] = set()

    def _at(self, generation: int) -> bool:
        """Move to ``generation`` if it is newer (forgetting everything); False if older."""
        if generation == self._generation:
            return True
        if self._generation is not None and generation < self._generation:
            return False
        self._generation = generation
        self._barrier.clear()
        self._learned.clear()
        self._kept.clear()
        self._out.clear()
        return True

    def local(self, partition: int, *, generation: int) -> bool:
        """True: baskets for ``partition`` may be learned in place now (after
        :meth:`take_kept`'s): it is armed, its barrier acknowledged and learned, and it was
        not given up this generation."""
        if not self._at(generation) or partition in self._out:
            return False
        barrier = self._barrier.get(partition)
        return barrier is not None and self._learned.get(partition, -1) >= barrier

    def take_kept(self, partition: int) -> list[Any]:
        """The baskets sent to ``partition`` after its barrier, oldest first, to learn in place
        before any newer one (once per arming; empty afterwards)."""
        return self._kept.pop(partition, [])

    def sending(self, partition: int, baskets: list[Any], *, generation: int) -> bool:
        """A message of ``baskets`` to ``partition``, a partition this worker owns, is about
        to be sent; True if it is the generation's barrier (tell :meth:`sent` so)."""
        if not self._at(generation) or partition in self._out:
            return False
        if partition not in self._barrier:
            self._barrier[partition] = None
            return True
        kept = self._kept.setdefault(partition, [])
        if len(kept) + len(baskets) > self._keep_limit:
            self._out.add(partition)  # the arming is far off: the topic for this generation
            self._kept.pop(partition, None)
        else:
            kept += baskets
        return False

    def sent(self, partition: int, *, offset: int, generation: int, barrier: bool) -> None:
        """The broker acknowledged a message of :meth:`sending` at ``offset``."""
        if barrier and generation == self._generation:
            self._barrier[partition] = offset

    def failed(self, partition: int, *, generation: int) -> None:
        """A message of :meth:`sending` failed: ``partition`` is not armed this generation
        (where the message landed, if anywhere, is unknown)."""
        if generation == self._generation:
            self._out.add(partition)
            self._kept.pop(partition, None)

    def learned(self, partition: int, *, offset: int, generation: int) -> None:
        """The items agent learned the basket message at ``offset`` of ``partition``."""
        if not self._at(generation):
            return
        if offset > self._learned.get(partition, -1):
            self._learned[partition] = offset
