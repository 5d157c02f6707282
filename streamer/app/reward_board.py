"""What the ``rewards`` topic says, kept for people: recent windows per version and guardrails.

:class:`RewardBoard` (plain Python) holds the newest closed
:class:`~streamer.events.RewardWindow` values per (policy version, window size) and evaluates
the guardrails over them. :func:`read_reward_windows` reads the topic (to its end, or following
it). The worker's dashboard and Prometheus gauges, ``streamer rewards`` and ``streamer report``
all use these two, so they agree.

Windows are read from the topic rather than taken from the ledger that emitted them because a
version's windows may be emitted by another worker (the ledger is partitioned by version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.app.kafka import aiokafka_kwargs, start_client
from streamer.app.offer_index import assign_all_partitions
from streamer.app.reward_tracking import spec_label
from streamer.events import EventCodec, InvalidEvent, RewardWindow
from streamer.rewards import RegressionCheck, SrmResult, reward_regression, sample_ratio_mismatch
from streamer.rewards.guardrails import DEFAULT_SRM_ALPHA
from streamer.settings import KafkaSettings, RewardSettings

log = logging.getLogger(__name__)

_decode_window = msgspec.json.Decoder(RewardWindow).decode


@dataclass(frozen=True)
class Guardrails:
    """The newest guardrail results; ``None`` when there was nothing to test."""

    srm: SrmResult | None
    regression: RegressionCheck | None

    @property
    def srm_alarm(self) -> bool:
        return self.srm is not None and self.srm.mismatch

    @property
    def regression_alarm(self) -> bool:
        return self.regression is not None and self.regression.alarm

    @property
    def srm_status(self) -> str:
        """The SRM line in words: ``ALARM``, ``ok``, ``too little data`` or ``not tested`` (no
        designed split, or one version serving: see :class:`RewardBoard`)."""
        if self.srm is None:
            return "not tested"
        if not self.srm.enough_data:
            return "too little data"
        return "ALARM" if self.srm.mismatch else "ok"


@dataclass(frozen=True)
class SideBySide:
    """Versions serving side by side, and the starts of the finest windows (``size_ms``,
    oldest first) in which they did, every one of them in each: none straddles a change of
    who serves."""

    versions: frozenset[str]
    size_ms: int
    starts: tuple[int, ...]


class RewardBoard:
    """The newest ``history`` windows per (version, window size); per-version rows only.

    A window seen again (a redelivery, or a restarted ledger re-emitting it) replaces the
    earlier copy. Versions are ordered by their newest traffic: the *live* version is the one
    whose newest window starts last, over every window size, so that the 1-minute windows date
    a switch to the minute (the hourly windows of a version that stopped keep closing for an
    hour after it did, with its tail in them); versions tied there, sharing traffic, keep the
    order of their first window. The *previous* version is the one before the live one. Order
    by first window instead, and a rollback to an older version would leave the version rolled
    back from "live" for good.

    - SRM: against a designed split only (``expected_split``), while several versions serve
      side by side (:meth:`side_by_side`, read from the finest windows: a canary, an A/B
      split), their impressions in the finest windows of that period, over the last largest
      window size of it (an hour by default). Not while one version serves: a switch from one
      version to another (a promotion, a rollback) is no split, yet leaves both in every
      coarse window straddling it, unevenly, for as long as those windows last: tested, the
      alarm would ring for an hour after every promotion, and operators would learn to
      ignore it. For the same reason neither versions switched off nor the time before the
      versions came side by side count. Without a designed split there are no shares to test
      against: versions side by side are then a promotion's tail (the storefront keeps
      showing the old version's offers of anchors not revised since, for up to half an
      offer's life, in a share that shrinks as they are) or a worker left on an old version
      (the policy metrics show it: ``streamer_policy_refused``), and equal shares, assumed,
      would call every promotion a mismatch. With nothing to test: ``None``.
    - Regression: the live version's newest window of the largest size against the previous
      version's newest window, not newer than it, holding ``min_impressions``: the same span
      while both share traffic; after a switch, the previous version's last window with that
      much data, not the thin tail that straddles the switch (its newest window, which holds
      too few impressions to ever alarm, so a bad promotion went unnoticed).

    >>> def w(version, start, n, rate, lo=0.0):
    ...     return RewardWindow(window_start=start, window_end=start + 60_000,
    ...         policy_version=version, impressions=n, offer_clicks=0, conversions=n // 10,
    ...         revenue=rate * n, reward_rate=rate, ci95=[lo, rate * 2])
    >>> board = RewardBoard(min_impressions=100, min_conversions=5,
    ...                     expected_split={"v1": 1, "v2": 1})  # an even A/B split
    >>> t = 1_700_000_040_000
    >>> for window in (w("v1", t, 500, 2.0, 1.5), w("v2", t + 60_000, 500, 1.0),
    ...                w("v1", t + 60_000, 500, 2.0, 1.6)):
    ...     board.add(window)
    >>> board.versions(), board.sizes()
    (['v1', 'v2'], [60000])
    >>> g = board.guardrails()
    >>> g.regression_alarm, g.regression.previous_lower, g.srm  # one shared minute: a switch
    (True, 1.6, None)
    >>> board.add_all([w("v1", t + 120_000, 520, 2.0), w("v2", t + 120_000, 480, 1.0)])
    >>> board.side_by_side().versions == {"v1", "v2"}, board.guardrails().srm.mismatch
    (True, False)
    """

    def __init__(self, *, history: int = 500, srm_alpha: float = DEFAULT_SRM_ALPHA,
                 expected_split: Mapping[str, float] | None = None,
                 min_impressions: int = 1000, min_conversions: int = 20) -> None:
        self.history = history
        self.srm_alpha = srm_alpha
        self.expected_split = dict(expected_split) if expected_split else None
        self.min_impressions = min_impressions
        self.min_conversions = min_conversions
        self._windows: dict[tuple[str, int], dict[int, RewardWindow]] = {}
        self._first_seen: dict[str, tuple[int, int]] = {}
        self.received = 0
        #: Messages of the rewards topic skipped as no window (see read_reward_windows).
        self.invalid = 0

    @classmethod
    def from_settings(cls, r: RewardSettings) -> RewardBoard:
        return cls(history=r.history_windows, srm_alpha=r.srm_alpha,
                   expected_split=r.expected_split(), min_impressions=r.min_impressions,
                   min_conversions=r.min_conversions)

    def skip(self, error: InvalidEvent) -> None:
        """Count a message of the rewards topic that is no window (``on_invalid``)."""
        self.invalid += 1

    def add(self, window: RewardWindow) -> None:
        """Keep one closed window (breakdown rows per anchor/segment are ignored)."""
        self.received += 1
        if window.anchor_item_id is not None or window.segment is not None:
            return
        version = window.policy_version
        size = window.window_end - window.window_start
        rows = self._windows.setdefault((version, size), {})
        rows[window.window_start] = window
        if len(rows) > self.history:
            del rows[min(rows)]
        seen = self._first_seen.get(version)
        if seen is None:
            self._first_seen[version] = (window.window_start, len(self._first_seen))
        elif window.window_start < seen[0]:
            self._first_seen[version] = (window.window_start, seen[1])

    def add_all(self, windows: Iterable[RewardWindow]) -> None:
        for window in windows:
            self.add(window)

    def versions(self) -> list[str]:
        """Versions by newest traffic (then first window): the live version is last."""
        newest: dict[str, tuple[int, int]] = {}
        for (version, size), rows in self._windows.items():
            start = max(rows)
            newest[version] = max(newest.get(version, (start, start + size)),
                                  (start, start + size))
        return sorted(newest, key=lambda v: (newest[v], self._first_seen[v]))

    def sizes(self) -> list[int]:
        """Window sizes seen (ms), smallest first."""
        return sorted({size for _, size in self._windows})

    def series(self, size_ms: int) -> dict[str, list[RewardWindow]]:
        """Windows of one size per version, oldest first."""
        return {
            v: [rows[s] for s in sorted(rows)]
            for v in self.versions()
            if (rows := self._windows.get((v, size_ms)))
        }

    def latest(self, version: str, size_ms: int) -> RewardWindow | None:
        rows = self._windows.get((version, size_ms))
        return rows[max(rows)] if rows else None

    def guardrails(self) -> Guardrails:
        sizes = self.sizes()
        if not sizes:
            return Guardrails(None, None)
        series = self.series(sizes[-1])  # the largest windows: most data per test
        return Guardrails(self._srm(), self._regression(series))

    def side_by_side(self) -> SideBySide | None:
        """The versions serving side by side now, read from the finest windows; None while
        one version serves alone, however many the coarser windows still hold.

        Side by side means each has impressions in each of two consecutive finest windows
        (the newest pair of the newest three): a switch from one version to another (a
        promotion, a rollback) leaves both in the one window straddling it, while versions
        sharing traffic fill every window together; one of the newest three, since a
        version's window may arrive a little after another's (another worker's ledger). Their
        windows: the unbroken run of finest windows holding them all, up to that pair, but its
        oldest, which straddles the change that put them side by side. A version with so
        little traffic that it misses whole windows breaks the run: the test then counts fewer
        impressions, never mixed ones.
        """
        sizes = self.sizes()
        if not sizes:
            return None
        size = sizes[0]
        present: dict[int, set[str]] = {}
        for version, windows in self.series(size).items():
            for w in windows:
                if w.impressions > 0:
                    present.setdefault(w.window_start, set()).add(version)
        starts = sorted(present)
        for newer in range(len(starts) - 1, max(len(starts) - 3, 0), -1):
            versions = present[starts[newer - 1]] & present[starts[newer]]
            if len(versions) >= 2:
                first = newer - 1
                while first > 0 and present[starts[first - 1]] >= versions:
                    first -= 1
                return SideBySide(frozenset(versions), size, tuple(starts[first + 1:newer + 1]))
        return None

    def _srm(self) -> SrmResult | None:
        if self.expected_split is None:
            return None  # no designed split, no shares to test (see the class doc)
        side = self.side_by_side()
        if side is None:
            return None  # one version at a time: a switch, not a split
        # Finest windows, not the coarse ones: in the period's first hour every coarse window
        # straddles its start, and one wholly inside holds the impressions of the finest
        # windows it spans. The newest disjoint ones (should they hop) over a coarse window.
        size, horizon = side.size_ms, side.starts[-1] + side.size_ms - self.sizes()[-1]
        taken: list[int] = []
        for start in reversed(side.starts):
            if start >= horizon and (not taken or start + size <= taken[-1]):
                taken.append(start)
        observed = {v: sum(self._windows[(v, size)][s].impressions for s in taken)
                    for v in sorted(side.versions)}
        return sample_ratio_mismatch(observed, self.expected_split, alpha=self.srm_alpha)

    def _regression(self, series: dict[str, list[RewardWindow]]) -> RegressionCheck | None:
        versions = [v for v in self.versions() if v in series]
        if len(versions) < 2:
            return None
        live = series[versions[-1]][-1]
        previous_rows = series[versions[-2]]
        older = [w for w in previous_rows if w.window_start <= live.window_start]
        full = [w for w in older if w.impressions >= self.min_impressions]
        previous = (full or older or previous_rows)[-1]
        return reward_regression(live, previous, min_impressions=self.min_impressions,
                                 min_conversions=self.min_conversions)


def read_jsonl(lines: Iterable[str]) -> list[RewardWindow]:
    """RewardWindows from JSON lines (blank lines skipped; a bad line raises ValueError).

    >>> read_jsonl(['{"window_start": 1700000000000, "window_end": 1700000060000, '
    ...     '"policy_version": "v1", "impressions": 2, "offer_clicks": 0, "conversions": 1, '
    ...     '"revenue": 9.0, "reward_rate": 4.5, "ci95": [0.0, 9.0]}', ""])[0].reward_rate
    4.5
    """
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(_decode_window(line))
            except msgspec.DecodeError as e:
                raise ValueError(f"line {n}: not a RewardWindow: {e}") from e
    return out


async def read_reward_windows(
    kafka: KafkaSettings, topic: str, *, follow: bool,
    on_batch: Callable[[list[RewardWindow]], Awaitable[None] | None] | None = None,
    lookback_ms: int | None = None, idle_timeout_s: float = 30.0,
    on_invalid: Callable[[InvalidEvent], None] | None = None,
) -> list[RewardWindow]:
    """Read ``topic`` from the start (or ``lookback_ms`` ago); return every valid window.

    Without ``follow`` it stops at the end offsets seen when it started (or after
    ``idle_timeout_s`` without progress); with ``follow`` it runs until cancelled, calling
    ``on_batch`` with each batch's windows (none, when it held only skipped messages, so a
    count of them shown is refreshed). A message that is not a window (``EventCodec``: larger than
    ``kafka.max_message_bytes``, undecoded; invalid UTF-8; any other reason) is logged, passed
    to ``on_invalid`` and skipped, never raised: the worker's reader restarts from its
    lookback after an error, so one bad record raised would freeze the dashboard and the
    guardrail gauges for as long as the topic keeps it.
    """
    decode = EventCodec(kafka.max_message_bytes).decode_reward
    consumer = AIOKafkaConsumer(**aiokafka_kwargs(kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await start_client(consumer)
    windows: list[RewardWindow] = []
    try:
        tps = await assign_all_partitions(consumer, topic)
        await _seek(consumer, tps, lookback_ms)
        ends = await consumer.end_offsets(tps)
        last_progress = time.monotonic()
        while True:
            if not follow:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    break
                if time.monotonic() - last_progress > idle_timeout_s:
                    break
            batch = await consumer.getmany(timeout_ms=300)
            got: list[RewardWindow] = []
            skipped = False
            for records in batch.values():
                for record in records:
                    try:
                        got.append(decode(record.value))
                    except InvalidEvent as e:
                        log.warning("skipped %s[%d]@%d: %s", record.topic, record.partition,
                                    record.offset, e)
                        skipped = True
                        if on_invalid is not None:
                            on_invalid(e)
            if batch:
                last_progress = time.monotonic()
            if not follow:
                windows.extend(got)
            # A batch of skipped messages only is passed on too (empty): what shows the
            # count of skipped ones is refreshed.
            if (got or skipped) and on_batch is not None:
                result = on_batch(got)
                if asyncio.iscoroutine(result):
                    await result
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return windows


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                lookback_ms: int | None) -> None:
    if lookback_ms is None:
        await consumer.seek_to_beginning(*tps)
        return
    since = int(time.time() * 1000) - lookback_ms
    found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
    for tp in tps:
        at = found.get(tp)
        if at is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, at.offset)


def skipped_note(skipped: int) -> str:
    """What a reader of the rewards topic tells its user of the messages it skipped as no
    window (:func:`read_reward_windows` logs each, with its offset and reason); empty for none.

    >>> skipped_note(0), skipped_note(1)
    ('', '1 window skipped (undecodable: each reported on stderr)')
    >>> skipped_note(1200)
    '1,200 windows skipped (undecodable: each reported on stderr)'
    """
    if not skipped:
        return ""
    plural = "s" if skipped != 1 else ""
    return f"{skipped:,} window{plural} skipped (undecodable: each reported on stderr)"


def window_label(window: RewardWindow) -> str:
    """The size of a window as in the settings (``1m``, ``1h``)."""
    return spec_label(window.window_end - window.window_start)
