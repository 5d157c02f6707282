"""A digest of what the engine does over ``throughput.py``'s purchases: every offer it
publishes and every table value it ends with, hashed, so a change meant to be faster and
nothing else can be checked for exactly that (the same digest before and after).

Runs ``throughput.py``'s ``engine_work`` (the worker's engine, tables and write-back in
process) over ``--events`` purchases, written back every ``--flush-every`` purchases (not
every commit interval of wall time: the same write-backs whatever the machine's speed), and
prints the number of offers and a BLAKE2 digest of them (each offer's JSON, in publishing
order: anchors, variants, probabilities, prices, ids, times), then one digest per table of its
stored bytes in key order (as the changelogs would carry them; a plain dict's values
encoded), and one of all of it.

    PYTHONPATH=. python benchmarks/engine_digest.py --events 60000
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

import msgspec
import throughput

from streamer.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="purchases in all")
    parser.add_argument("--flush-every", type=int, default=1_000,
                        help="purchases between two write-backs")
    args = parser.parse_args()

    engines: list[Engine] = []
    offers = hashlib.blake2b(digest_size=16)
    published = [0]
    init, learn = Engine.__init__, Engine.learn_baskets

    def keep(self: Engine, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        engines.append(self)

    def learn_baskets(self: Engine, baskets: Any) -> Any:
        out, duplicates = learn(self, baskets)
        for offer in out:
            offers.update(msgspec.json.encode(offer))
            published[0] += 1
        return out, duplicates

    Engine.__init__ = keep  # type: ignore[method-assign]
    Engine.learn_baskets = learn_baskets  # type: ignore[method-assign]
    work = throughput.engine_work(flush_every=args.flush_every)
    for _, value in throughput.make_purchases(args.events):
        work(value)
    (engine,) = engines
    total = hashlib.blake2b(offers.digest(), digest_size=16)
    print(f"{published[0]:,} offers: {offers.hexdigest()}")
    for name in ("items", "counts", "catalog", "offers", "seen"):
        table: Any = getattr(engine.state, name)
        if hasattr(table, "flush"):  # a table written back: the stored bytes
            table.flush()
            raw = table._raw
        else:  # a plain dict (engine_work keeps the de-duplication ids in one)
            raw = {k: msgspec.msgpack.encode(v) for k, v in table.items()}
        digest = hashlib.blake2b(digest_size=16)
        for key in sorted(raw):
            digest.update(repr(key).encode())
            digest.update(bytes(raw[key]))
        total.update(digest.digest())
        print(f"{name:>8}: {len(raw):,} values {digest.hexdigest()}")
    print(f"     all: {total.hexdigest()}")


if __name__ == "__main__":
    main()
