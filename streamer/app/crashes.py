"""What a worker does when one of its agents raises: it commits nothing more, stops, and exits
with status 1, to be restarted from its last commit.

An agent raises only on a bug: input cannot make one raise (bad messages are dead-lettered,
and the integration tests fail on any agent crash). faust's own answer, its supervisor
restarting the agent, loses events: the restarted agent goes on with the events after those
the crashed one had taken, which are never acknowledged, and faust's commit skips over them
when they are one offset at the head of the partition, or the partition was never committed
(``Consumer._new_offset``; ``tests/unit/test_fast_consumer.py`` pins it). With more, the
partition's commits stop there until the worker restarts, silently. Kafka Streams shuts its
client down on an uncaught exception by default; a worker here does the same:

1. the crash is counted (``streamer_agent_crashes_total{agent}``) and logged with its
   traceback;
2. the consumer commits nothing from then on
   (:meth:`streamer.app.fast_consumer.FastConsumer.refuse_commits`), so every event after the
   last commit, the crashed agent's batch included, is delivered again after the restart
   (state updates are idempotent: nothing counts twice);
3. the worker stops as on SIGTERM (it leaves its consumer group, so its partitions move at
   once; aiokafka sends no LeaveGroup for a generation 0, the embedded broker's first, and
   there they move when its session times out) and exits with status 1, for its supervisor to
   restart it (docker compose's ``restart: unless-stopped``, Kubernetes).

A bug that every restart meets again (an event that always raises) makes the worker restart in
a loop and commit nothing past that event: visible (restarts, the metric, the log), never
skipped silently.

>>> import asyncio
>>> from streamer.observability import Metrics
>>> stopped = []
>>> crashes = AgentCrashes(Metrics(), refuse_commits=lambda exc: None)
>>> crashes.on_crash = lambda agent, exc: stopped.append((agent, repr(exc)))
>>> @crashes.guard("items")
... async def items(stream):
...     raise ValueError("a bug")
>>> asyncio.run(items(None))  # the agent ends; the worker stops
>>> stopped
[('items', "ValueError('a bug')")]
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from streamer.observability import Metrics

__all__ = ["AgentBody", "AgentCrashes", "stop_process"]

log = logging.getLogger(__name__)

#: An agent's body: ``async def agent(stream) -> None``.
AgentBody = Callable[[Any], Awaitable[None]]


class AgentCrashes:
    """Guards a worker's agent bodies (:meth:`guard`); see the module doc.

    ``refuse_commits(exc)``: makes the consumer commit nothing more (the worker's consumer's
    :meth:`~streamer.app.fast_consumer.FastConsumer.refuse_commits`). :attr:`on_crash`
    ``(agent, exc)`` stops the worker; ``streamer worker`` sets it (:func:`stop_process`).
    Without it the worker goes on, committing nothing, and says so."""

    def __init__(self, metrics: Metrics,
                 refuse_commits: Callable[[BaseException], None]) -> None:
        self._metrics = metrics
        self._refuse_commits = refuse_commits
        #: Stops the worker after a crash (None: nothing stops it).
        self.on_crash: Callable[[str, BaseException], None] | None = None

    def guard(self, agent: str) -> Callable[[AgentBody], AgentBody]:
        """Decorate the body of the agent named ``agent``: an exception it raises is counted,
        logged, and stops the worker (the module doc); the body then returns, so faust does
        not restart it. Cancellation (a rebalance, a shutdown) passes through."""
        crashes = self._metrics.agent_crashes.labels(agent)

        def decorate(body: AgentBody) -> AgentBody:
            @functools.wraps(body)
            async def guarded(stream: Any) -> None:
                try:
                    await body(stream)
                except Exception as exc:
                    crashes.inc()
                    self._crash(agent, exc)

            return guarded

        return decorate

    def _crash(self, agent: str, exc: Exception) -> None:
        self._refuse_commits(exc)
        stops = self.on_crash is not None
        log.error(
            "agent %s crashed: the worker commits nothing more, %s; the events after its last "
            "commit are delivered again when it restarts", agent,
            "stops and exits with status 1" if stops else "and nothing stops it",
            exc_info=exc)
        if self.on_crash is not None:
            self.on_crash(agent, exc)


def stop_process(worker: Any) -> Callable[[str, BaseException], None]:
    """An :attr:`AgentCrashes.on_crash` for a faust ``Worker`` running this process: it stops
    as on SIGTERM and exits with status 1 (mode's worker re-raises its ``crash_reason`` once
    stopped, and exits with 1)."""

    def stop(agent: str, exc: BaseException) -> None:
        if worker.crash_reason is None:
            worker.crash_reason = exc
        os.kill(os.getpid(), signal.SIGTERM)

    return stop
