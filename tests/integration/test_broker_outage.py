"""Broker outage: the worker's connection to the broker is cut for 30 s in the middle of a
replay; afterwards every event is in the state exactly once, the worker never exited, and its
consumer lag is back to zero.

The worker reaches the broker through a TCP proxy the test controls. A broker tells clients
where to connect in its metadata, so this test runs its *own* embedded broker, advertising the
proxy's port; the session broker could not be put behind a proxy.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from streamer.app.broker import EmbeddedBroker, free_port, on_embedded
from streamer.app.worker import ensure_topics
from streamer.settings import Settings
from tests.conftest import wait_for
from tests.crash_harness import (
    BASKETS_SUFFIX,
    Worker,
    compare,
    group_state,
    make_orders,
    produce_orders,
    reference_state,
    wait_settled,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
ORDERS = 600


def lag_by_topic(worker: Worker) -> dict[str, float]:
    """``streamer_consumer_lag`` per topic from the worker's Prometheus page."""
    try:
        with urllib.request.urlopen(f"{worker.url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {m[1]: float(m[2]) for m in
            re.finditer(r'^streamer_consumer_lag\{topic="([^"]+)"\} (\S+)$', text, re.M)}


def test_worker_rides_out_a_30s_broker_outage(tmp_path: Path) -> None:
    broker_port, proxy_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    with TcpProxy(proxy_port, ("127.0.0.1", broker_port)) as proxy, \
            EmbeddedBroker(port=broker_port, advertised_port=proxy_port,
                           log_path=tmp_path / "broker.log") as broker:
        settings = on_embedded(Settings(
            topics={name: f"{name}-{suffix}" for name in
                    ("clicks", "purchases", "offers", "feedback", "rewards", "dead_letters")}
            | {"policy_updates": f"policy-updates-{suffix}", "partitions": 4},
            worker={"app_id": f"streamer-outage-{suffix}", "web_port": free_port(),
                    "data_dir": str(tmp_path / "data")},
            offers={"min_interval_s": 0.0, "min_support": 1.0},
        ), broker.advertised)
        asyncio.run(ensure_topics(settings))
        orders = make_orders(ORDERS, seed=3)
        before, after = orders[: ORDERS // 2], orders[ORDERS // 2:]
        worker = Worker(settings, tmp_path / "worker.log")
        try:
            worker.wait_ready(60)
            pid = worker.process.proc.pid
            produce_orders(settings, before)
            # Cut mid-replay: some of the first half consumed, not all of it.
            wait_for(lambda: worker.consumed_purchases() >= len(before) // 4, 60,
                       "a quarter of the first half consumed", interval_s=0.02)
            proxy.cut()
            cut_at = time.monotonic()
            consumed_at_cut = worker.consumed_purchases()
            # The outage itself: 30 s of the worker cut off. Waiting for it to exit, with the
            # outage's length as the timeout, is the test that it lives through all of it.
            with pytest.raises(subprocess.TimeoutExpired):
                worker.process.proc.wait(timeout=OUTAGE_S - (time.monotonic() - cut_at))
                pytest.fail(f"worker exited during the outage:\n{worker.log_tail()}")
            proxy.restore()
            produce_orders(settings, after)  # new events after the outage are processed too
            wait_settled(settings, [worker], timeout_s=90)
            assert worker.alive and worker.process.proc.pid == pid, "the worker restarted"

            diff = compare(reference_state(settings, orders),
                           group_state([worker], settings.topics.partitions))
            assert diff.equal, f"state differs from the reference: {diff}"
            assert worker.consumed_purchases() >= len(orders)

            baskets = settings.worker.app_id + BASKETS_SUFFIX
            watched = (settings.topics.purchases, baskets)
            wait_for(lambda: all(lag_by_topic(worker).get(t) == 0 for t in watched), 30,
                       "consumer lag back to zero")
            assert proxy.accepted > 1, "the worker never reconnected through the proxy"
            print(f"outage: consumed {consumed_at_cut:g}/{len(before)} of the first half "
                  f"at the cut; settled {time.monotonic() - cut_at - OUTAGE_S:.1f} s after "
                  f"the restore; lag {lag_by_topic(worker)}")
        finally:
            worker.stop()
