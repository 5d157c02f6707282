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
items agent would then drop offset 95 as a duplicate: a lost purchase. So per generation of
the consumer group, a partition *p* is **armed** (its baskets learned in place) only after
the items agent here has learned a basket message this worker sent to *p* in this generation,
with no later one of its own still in flight: everything this worker or anyone before it sent
to *p* from the purchases partitions it reads lies before that message in *p*, so it has been
learned. A new generation (a rebalance) disarms every partition. Messages sent to *p* by other
workers, from purchases partitions they read, are not affected: marks are per purchases
partition.

Plain Python, no faust: the agents tell it what they sent and learned, with the consumer
generation of the moment.

>>> route = LocalBaskets()
>>> route.local(2, generation=5)  # nothing known yet: through the topic
False
>>> route.sending(2, generation=5)
>>> route.sent(2, offset=40, generation=5)
>>> route.learned(2, offset=39, generation=5)  # older messages: not yet
>>> route.local(2, generation=5)
False
>>> route.learned(2, offset=40, generation=5)  # its own last message learned: armed
>>> route.local(2, generation=5)
True
>>> route.local(2, generation=6)  # a rebalance: through the topic again until re-armed
False
"""

from __future__ import annotations

__all__ = ["LocalBaskets"]


class LocalBaskets:
    """Arms item-baskets partitions for learning in place (see the module doc). Not thread-safe;
    owned by the worker's event loop."""

    __slots__ = ("_armed", "_generation", "_inflight", "_last_sent", "_learned", "_poisoned")

    def __init__(self) -> None:
        self._generation: int | None = None
        self._armed: set[int] = set()
        #: Per partition, this generation: basket messages sent and not yet acknowledged.
        self._inflight: dict[int, int] = {}
        #: Per partition, this generation: offset of the last message sent (acknowledged).
        self._last_sent: dict[int, int] = {}
        #: Per partition, this generation: highest offset the items agent learned.
        self._learned: dict[int, int] = {}
        #: Partitions a send failed to this generation: never armed (where it landed, if
        #: anywhere, is unknown).
        self._poisoned: set[int] = set()

    def _at(self, generation: int) -> bool:
        """Move to ``generation`` if it is newer (forgetting everything); False if older."""
        if generation == self._generation:
            return True
        if self._generation is not None and generation < self._generation:
            return False
        self._generation = generation
        self._armed.clear()
        self._inflight.clear()
        self._last_sent.clear()
        self._learned.clear()
        self._poisoned.clear()
        return True

    def local(self, partition: int, *, generation: int) -> bool:
        """True: baskets for ``partition`` may be learned in place now."""
        return self._at(generation) and partition in self._armed

    def sending(self, partition: int, *, generation: int) -> None:
        """A basket message to ``partition`` is about to be sent."""
        if self._at(generation):
            self._inflight[partition] = self._inflight.get(partition, 0) + 1

    def sent(self, partition: int, *, offset: int, generation: int) -> None:
        """The broker acknowledged a message of :meth:`sending` at ``offset``."""
        if generation != self._generation:
            return  # a message of an earlier generation: irrelevant now
        self._inflight[partition] = max(0, self._inflight.get(partition, 0) - 1)
        self._last_sent[partition] = max(offset, self._last_sent.get(partition, -1))
        self._check(partition)

    def failed(self, partition: int, *, generation: int) -> None:
        """A message of :meth:`sending` failed: ``partition`` stays disarmed this generation."""
        if generation != self._generation:
            return
        self._inflight[partition] = max(0, self._inflight.get(partition, 0) - 1)
        self._poisoned.add(partition)

    def learned(self, partition: int, *, offset: int, generation: int) -> None:
        """The items agent learned the basket message at ``offset`` of ``partition``."""
        if not self._at(generation):
            return
        if offset > self._learned.get(partition, -1):
            self._learned[partition] = offset
        self._check(partition)

    def _check(self, partition: int) -> None:
        last = self._last_sent.get(partition)
        if (last is not None and not self._inflight.get(partition)
                and partition not in self._poisoned
                and self._learned.get(partition, -1) >= last):
            self._armed.add(partition)

    def armed(self) -> set[int]:
        """The partitions armed in the current generation (a copy)."""
        return set(self._armed)
