"""Debug pages that dump a worker's co-purchase state, for crash and outage tests.

``GET /state/items/`` returns the ``items`` table entries of the partitions this worker owns
*actively* (a faust worker also holds standby copies of other workers' partitions in the same
table; those are left out, so the union over a group's workers is the group's state, each
anchor once)::

    {"worker": "...", "partitions": [0, 2], "orders": {...} | null,
     "items": {anchor: [landmark_ms, count, partners, partner_offset, triples, ...]},
     "counts": {anchor: [value, landmark_ms]},
     "sources": {anchor: {partition: offset}}, "digest": "sha256 of items+orders"}

``orders`` is the decayed order total (``Decayed`` fields), present only on the worker that
owns its partition; ``counts`` is the ``item-counts`` table (each record's count mirrored for
readers of any item, the order total's included) for the anchors of those partitions: a global
table, every worker holds every anchor's, but only the owner writes it, and its changelog is
another topic than the records', so a crash can make one durable without the other;
``sources`` are each record's marks (the last purchases offset learned per partition). Values
are the raw stored forward-decay values (landmark, forward count), not decayed to now, so two
dumps compare exactly. ``?summary=1`` leaves out ``items``, ``counts`` and ``sources``.

``GET /state/rewards/`` returns the open reward windows of the ``reward-outcomes`` partitions
this worker owns actively (the reward ledger's state)::

    {"worker": "...", "partitions": [1], "windows": [[partition, WindowAggregate fields], ...]}

The dump can be large (every anchor's partner table), so besides binding to localhost (the web
server's default) the page refuses non-loopback peers outright.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import TYPE_CHECKING, Any

import msgspec

from streamer.app.kafka import key_partition

if TYPE_CHECKING:
    from streamer.app.factory import StreamerApp


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:  # a unix socket path or an unparsable peer: not loopback
        return False


def install_state_pages(sa: StreamerApp) -> None:
    """Add ``/state/items/`` and ``/state/rewards/`` to ``sa.app``. Reads tables only; never
    writes, never blocks."""
    app, engine = sa.app, sa.engine
    baskets = f"{sa.settings.worker.app_id}-item-baskets"
    outcomes = f"{sa.settings.worker.app_id}-reward-outcomes"
    partitions = sa.settings.topics.partitions
    to_builtins = msgspec.to_builtins

    def active_partitions(topic: str) -> list[int]:
        return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)

    @app.page("/state/items/")
    async def state_items(web_: Any, request: Any) -> Any:
        if not _is_loopback(request.remote):
            return web_.json({"error": "state pages answer loopback peers only"}, status=403)
        active = active_partitions(baskets)
        owned = set(active)
        items: dict[str, Any] = {}
        counts: dict[str, Any] = {}
        sources: dict[str, dict[int, int]] = {}
        orders = None
        for anchor, record in engine.state.items.items():
            # The purchases agent sends an anchor's baskets to this partition (its key's).
            if key_partition(anchor, partitions) not in owned:
                continue
            sources[anchor] = record.sources
            if record.stats is not None:
                items[anchor] = to_builtins(record.stats)
            else:  # the order counter (TOTAL_KEY)
                orders = to_builtins(record.count)
        for anchor, count in engine.state.counts.items():
            if key_partition(anchor, partitions) in owned:
                counts[anchor] = to_builtins(count)
        digest = hashlib.sha256(msgspec.json.encode({"items": items, "orders": orders},
                                                    order="sorted")).hexdigest()
        body: dict[str, Any] = {"worker": app.conf.id, "partitions": active, "orders": orders,
                                "digest": digest, "anchors": len(items)}
        if request.query.get("summary") != "1":
            body["items"] = items
            body["counts"] = counts
            body["sources"] = sources
        return web_.json(body)

    @app.page("/state/rewards/")
    async def state_rewards(web_: Any, request: Any) -> Any:
        if not _is_loopback(request.remote):
            return web_.json({"error": "state pages answer loopback peers only"}, status=403)
        active = active_partitions(outcomes)
        owned = set(active)
        windows = [[p, to_builtins(w)] for p, w in sa.rewards.tracker.open_windows()
                   if p in owned]
        return web_.json({"worker": app.conf.id, "partitions": active, "windows": windows})
