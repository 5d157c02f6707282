"""The price sweep: a partner's price change reaches the live offers that bundle it.

An offer carries each variant's bundle price, built from the catalogue when its anchor is
revised, and an anchor is revised when it is bought (or co-viewed) again. A partner's price,
kept current by the partner's own purchases (on the worker owning the partner), used to reach
a cold anchor's offer only when that offer expired (``offers.ttl_s``, a day by default).

So each worker walks its own live offers, a slice per timer tick, every one about once per
``offers.price_check_interval_s``, and checks each against the (global) catalogue
(:meth:`streamer.engine.Engine.stale_anchors`: reads only, so the timer may do it). An anchor
found quoting a stale price waits here for the next tick of its partition, whose agent revises
it (:meth:`~streamer.engine.Engine.reprice`) as of the partition's event time, writing the
``live-offers`` table with that partition, and publishes the revision like the items agent
does: the offer and its decision go out first, the table write with the next offset commit
(``streamer.app.tables.WriteBuffer``). A crash before that commit leaves the old offer in the
table: a later sweep finds it stale again and publishes again, nothing is lost.

Plain Python, no faust: the worker (``streamer.app.factory``) hands it the offers' keys, the
engine's check and the partition of an anchor.

>>> sweep = PriceSweep(keys=lambda: ["a", "b", "c"], stale=lambda ks: [k for k in ks if k != "b"],
...                    partition_of=lambda anchor: {"a": 0, "b": 0, "c": 1}[anchor],
...                    steps_per_pass=2)
>>> sweep.step(owned={0, 1}), sweep.step(owned={0, 1}), sweep.take(0), sweep.take(1)
(2, 1, ['a'], ['c'])
>>> sweep.take(0)  # taken: the next pass finds it again if it is still stale
[]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Sequence


class PriceSweep:
    """Which live offers to check at each step, and the anchors found stale, by partition.

    ``keys()`` snapshots the keys of the live offers at the start of each pass (offers made
    since wait for the next pass: they were built from current prices); ``stale(keys)`` gives
    the anchors among them whose offers quote a stale bundle price; ``partition_of(anchor)`` the
    partition that owns an anchor's state. A pass takes ``steps_per_pass`` steps, each checking
    an equal slice, but no step more than ``max_per_step`` offers: a step holds the event loop
    (~12 us per offer checked, so ~25 ms at the default 2,000), and a worker holding more
    offers than ``steps_per_pass * max_per_step`` takes more steps per pass rather than longer
    ones. An expired offer counts as checked too (the engine reads it and passes it over for
    ~3 us, :meth:`~streamer.engine.Engine.stale_anchors`): the cap bounds the step either way.
    Not thread-safe: one event loop.
    """

    __slots__ = ("_due", "_keys", "_partition_of", "_pass", "_position", "_slice", "_stale",
                 "max_per_step", "steps_per_pass")

    def __init__(self, *, keys: Callable[[], Sequence[str]],
                 stale: Callable[[Sequence[str]], list[str]],
                 partition_of: Callable[[str], int], steps_per_pass: int,
                 max_per_step: int = 2_000) -> None:
        if steps_per_pass < 1 or max_per_step < 1:
            raise ValueError("a pass takes at least one step, and a step checks an offer")
        self._keys = keys
        self._stale = stale
        self._partition_of = partition_of
        self.steps_per_pass = steps_per_pass
        self.max_per_step = max_per_step
        self._pass: Sequence[str] = ()
        self._position = 0
        self._slice = 0
        # Anchors found stale per partition, in the order found (a dict as an ordered set).
        self._due: dict[int, dict[str, None]] = {}

    def step(self, owned: Container[int]) -> int:
        """Check the next slice of the live offers (a new pass once the last one is done);
        keep the stale anchors of the ``owned`` partitions for :meth:`take` (an offer of
        another partition, e.g. a standby's copy, is not this worker's to revise). Returns how
        many offers were checked."""
        if self._position >= len(self._pass):
            self._pass = self._keys()
            self._position = 0
            self._slice = min(self.max_per_step,
                              math.ceil(len(self._pass) / self.steps_per_pass))
        start = self._position
        keys = self._pass[start:start + self._slice]
        self._position = start + len(keys)
        for anchor in self._stale(keys):
            partition = self._partition_of(anchor)
            if partition in owned:
                self._due.setdefault(partition, {})[anchor] = None
        return len(keys)

    def take(self, partition: int) -> list[str]:
        """The anchors of ``partition`` found stale since the last call, oldest first."""
        due = self._due.pop(partition, None)
        return list(due) if due else []

    def clear(self) -> None:
        """Forget the anchors found and start a new pass at the next step (after partitions
        moved between workers: what was found may be another worker's now)."""
        self._due.clear()
        self._pass = ()
        self._position = 0
