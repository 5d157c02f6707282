"""The reward ledger: windowed reward aggregates per policy version (and anchor / segment).

Contract
--------
- Input: :class:`~streamer.rewards.attribution.ImpressionOutcome` records, each counted in the
  windows containing its *impression* time. So a window's reward per impression is the mean
  of complete outcomes (every impression's attribution window has closed), which is what the
  guardrails and off-policy evaluation need. The price is latency: a window can only close
  after its impressions' outcomes are known, about ``attribution window + lateness`` after
  its end.
- Windows: each :class:`WindowSpec` ``(size_ms, step_ms)`` gives windows
  ``[k*step, k*step + size)`` aligned on the epoch; tumbling when ``size == step``. Defaults:
  tumbling 1 min and hopping 1 h every 5 min.
- Groups: always per ``policy_version``; with ``by_anchor`` also per (version, anchor), with
  ``by_segment`` also per (version, segment). Records without a policy version (their offer was
  never found) are counted in :attr:`RewardLedger.counts` as ``"unversioned"`` and skipped.
- Time: ``watermark = max record ts seen - allowed_lateness_ms``. A window closes when the
  watermark reaches its end; :meth:`RewardLedger.advance` emits it as a
  :class:`~streamer.events.RewardWindow` and deletes it. A record reaching a window that has
  already closed is not added there; it is counted as ``"late"`` (and ``add`` returns False).
- ``reward_rate`` is the mean reward per impression, ``ci95`` its interval from
  :meth:`~streamer.rewards.reward_stats.RewardMoments.interval` (Wilson x Student t on the
  log scale; that module says why, and how often it covers by conversion count),
  ``revenue`` the summed bundle revenue; ``direct_conversions`` and ``direct_revenue`` count
  only what was bought through the offer (outcomes whose ``attribution`` is ``"offer"``, and
  their ``direct_revenue``). With margin rewards
  ``reward_rate`` and its interval may be negative (a discount deeper than the margin), and
  the ``rewards`` schema allows it, so readers of the topic keep such windows.
- State: ``windows`` maps a key to a :class:`WindowAggregate` (a faust Table live, a dict in
  tests); values are only ever assigned or deleted. At most
  ``sum(ceil((size + lateness) / step) + 1)`` windows per group are open, however long it runs.
  ``watermarks`` keeps the clock (key ``"max_record_ts"``); make it changelog-backed so a
  restarted worker does not reopen windows it already emitted.
- The ledger trusts each impression to arrive once (the attributor emits one record per
  impression); it keeps no per-impression ids, which would grow with traffic. The same record
  read again (a redelivery after a crash) is recognised by its ``offset`` in the ledger's input
  partition, when given: each window keeps the highest offset it counted (``applied_to``), and
  records arrive in offset order, so a window holding an offset at or past a record's has
  counted it. The window itself carries the mark, in the same changelog record as its counts:
  a mark kept elsewhere (another table) could land without them, or they without it.
- With ``keep_closed`` (the worker), the clock and the closed windows' deletions trail the
  windows by write-backs, as the write-back calls :meth:`flushed` after each flush: the clock
  is written in the write-back after the one holding the windows' changes it accounts for, so
  a recovered clock is never ahead of the windows (it was: windows closed early on recovery,
  before the outcomes read again were counted, and were published short); and a closed window
  is kept as a *closed marker* (``closed``: counted nowhere, refusing what comes for it) until
  two write-backs later, after the clock that passed it, so its deletion never lands where
  that clock's record did not (an outcome read again then opened the window anew and
  published it again with the outcomes read since). Each write-back goes out once the
  previous one landed and its offsets were committed.

>>> from streamer.rewards.attribution import ImpressionOutcome
>>> def rec(ts, reward):
...     return ImpressionOutcome(impression_id=f"i{ts}", ts=ts, session_id="s", user_id="u",
...         offer_id="o", variant=0, propensity=0.5, policy_version="v1", anchor_item_id="a",
...         segment="all", items=("a", "b"), discount_pct=10.0, clicked=reward > 0,
...         converted=reward > 0, revenue=reward, reward=reward, purchase_ids=(),
...         attributed_at=ts, late=False)
>>> ledger = RewardLedger({}, specs=(WindowSpec(60_000, 60_000),), allowed_lateness_ms=0)
>>> t0 = 1_700_000_040_000  # a minute boundary
>>> for i, r in enumerate([0.0, 30.0, 0.0, 0.0]):
...     _ = ledger.add(rec(t0 + i * 1000, r))
>>> ledger.advance(t0 + 59_999)
[]
>>> [(w.window_start - t0, w.impressions, w.conversions, w.reward_rate)
...  for w in ledger.advance(t0 + 60_000)]
[(0, 4, 1, 7.5)]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import MutableMapping, Sequence
from typing import NamedTuple

import msgspec
from msgspec import Struct

from streamer.events.models import RewardWindow
from streamer.rewards.attribution import ImpressionOutcome
from streamer.rewards.reward_stats import RewardMoments

DEFAULT_LEDGER_LATENESS_MS = 60 * 1000
#: The ledger's clock key: distinct from the attributor's, so both may share one mapping.
WATERMARK_KEY = "max_record_ts"


class WindowSpec(NamedTuple):
    """Windows of ``size_ms`` starting every ``step_ms`` (tumbling when equal)."""

    size_ms: int
    step_ms: int

    def starts(self, ts: int) -> range:
        """Starts of the windows containing ``ts``.

        >>> list(WindowSpec(60_000, 60_000).starts(90_000))
        [60000]
        >>> len(WindowSpec(3_600_000, 300_000).starts(0))
        12
        """
        first = ((ts - self.size_ms) // self.step_ms + 1) * self.step_ms
        last = (ts // self.step_ms) * self.step_ms
        return range(first, last + 1, self.step_ms)


TUMBLING_1_MIN = WindowSpec(60_000, 60_000)
HOPPING_1_H_EVERY_5_MIN = WindowSpec(3_600_000, 300_000)
DEFAULT_SPECS: tuple[WindowSpec, ...] = (TUMBLING_1_MIN, HOPPING_1_H_EVERY_5_MIN)


class WindowAggregate(Struct, frozen=True, kw_only=True):
    """One open window of one group; values in the ``windows`` mapping."""

    size_ms: int
    step_ms: int
    start: int
    policy_version: str
    anchor_item_id: str | None = None
    segment: str | None = None
    impressions: int = 0
    offer_clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    rewards: RewardMoments = RewardMoments()
    direct_conversions: int = 0
    direct_revenue: float = 0.0
    #: The highest offset of the ledger's input partition counted here (-1: none known).
    applied_to: int = -1
    #: Closed and published: kept only as a marker until purged (``RewardLedger``).
    closed: bool = False

    @property
    def end(self) -> int:
        """Exclusive end of the window."""
        return self.start + self.size_ms

    def add(self, outcome: ImpressionOutcome, offset: int = -1) -> WindowAggregate:
        """A new aggregate with one more impression outcome (read at ``offset``, -1:
        unknown)."""
        return msgspec.structs.replace(
            self,
            applied_to=max(self.applied_to, offset),
            impressions=self.impressions + 1,
            offer_clicks=self.offer_clicks + outcome.clicked,
            conversions=self.conversions + outcome.converted,
            revenue=self.revenue + outcome.revenue,
            rewards=self.rewards.add(outcome.reward),
            direct_conversions=self.direct_conversions + (outcome.attribution == "offer"),
            direct_revenue=self.direct_revenue + outcome.direct_revenue,
        )

    def to_reward_window(self, confidence: float = 0.95) -> RewardWindow:
        """The wire value published on ``rewards``."""
        lo, hi = self.rewards.interval(confidence)
        return RewardWindow(
            window_start=self.start,
            window_end=self.end,
            policy_version=self.policy_version,
            impressions=self.impressions,
            offer_clicks=self.offer_clicks,
            conversions=self.conversions,
            revenue=self.revenue,
            reward_rate=self.rewards.mean,
            ci95=[lo, hi],
            anchor_item_id=self.anchor_item_id,
            segment=self.segment,
            direct_conversions=self.direct_conversions,
            direct_revenue=self.direct_revenue,
        )


def _window_key(spec: WindowSpec, start: int, group: tuple[str, str | None, str | None]) -> str:
    # JSON keeps the key unambiguous whatever characters the ids contain.
    return msgspec.json.encode([spec.size_ms, spec.step_ms, start, *group]).decode()


class RewardLedger:
    """Windowed reward aggregates; see the module docstring for the contract.

    Owns ``windows`` and ``watermarks``. Keeps in memory only the earliest open window end (to
    scan ``windows`` once per window boundary rather than on every call), recomputed from
    ``windows`` after a restart. :attr:`counts` holds ``added``, ``late`` and ``unversioned``.
    """

    def __init__(
        self,
        windows: MutableMapping[str, WindowAggregate],
        *,
        specs: Sequence[WindowSpec] = DEFAULT_SPECS,
        allowed_lateness_ms: int = DEFAULT_LEDGER_LATENESS_MS,
        by_anchor: bool = False,
        by_segment: bool = False,
        confidence: float = 0.95,
        watermarks: MutableMapping[str, int] | None = None,
        keep_closed: bool = False,
    ) -> None:
        if not specs:
            raise ValueError("at least one window spec is needed")
        for spec in specs:
            if not 0 < spec.step_ms <= spec.size_ms:
                raise ValueError(f"need 0 < step_ms <= size_ms, got {spec}")
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence}")
        self._windows = windows
        self.specs: tuple[WindowSpec, ...] = tuple(WindowSpec(*s) for s in specs)
        self.allowed_lateness_ms = allowed_lateness_ms
        self.by_anchor = by_anchor
        self.by_segment = by_segment
        self.confidence = confidence
        self._clock: MutableMapping[str, int] = {} if watermarks is None else watermarks
        self.counts: Counter[str] = Counter()
        # None: unknown (after a restart), scan on the next advance; inf: nothing open.
        self._next_end: float | None = None
        self.keep_closed = keep_closed
        self._wm: int | None = self._clock.get(WATERMARK_KEY)  # the clock (max record ts)
        # keep_closed: closed markers by age in write-backs, and what the next call of
        # add/advance writes (flushed(): the clock, the markers closed two write-backs ago).
        self._closed_new: list[str] = ([k for k, a in windows.items() if a.closed]
                                       if keep_closed else [])
        self._closed_old: list[str] = []
        self._due_deletes: list[str] = []
        self._due_clock: int | None = None

    @property
    def watermark_ms(self) -> int | None:
        """``max record ts - allowed_lateness_ms``; ``None`` before any record."""
        m = self._wm
        return None if m is None else m - self.allowed_lateness_ms

    def flushed(self) -> None:
        """A write-back flushed this ledger's changes (``keep_closed``): the clock as it is
        now, and the deletions of the markers closed before the previous flush, are written
        by the next :meth:`add` or :meth:`advance` (in the agent, on this ledger's partition),
        so they go out with the next write-back. Writes nothing itself."""
        self._due_deletes += self._closed_old
        self._closed_old, self._closed_new = self._closed_new, []
        self._due_clock = self._wm

    def _settle(self) -> None:
        """Write what :meth:`flushed` left due."""
        if self._due_clock is not None:
            if self._clock.get(WATERMARK_KEY) != self._due_clock:
                self._clock[WATERMARK_KEY] = self._due_clock
            self._due_clock = None
        if self._due_deletes:
            for key in self._due_deletes:
                self._windows.pop(key, None)
            self._due_deletes = []

    def _move_clock(self, ts: int) -> None:
        if self._wm is None or ts > self._wm:
            self._wm = ts
            if not self.keep_closed:
                self._clock[WATERMARK_KEY] = ts

    def max_open_windows(self) -> int:
        """The most windows one group can have open at once (the state bound)."""
        return sum(
            math.ceil((s.size_ms + self.allowed_lateness_ms) / s.step_ms) + 1 for s in self.specs
        )

    def add(self, outcome: ImpressionOutcome, offset: int = -1) -> bool:
        """Count one impression outcome, read at ``offset`` of the ledger's input partition
        (-1: unknown; then always counted); False when it was late for some window
        (counted). A window that counted that offset already (a redelivery) is left as it
        is."""
        if self.keep_closed:
            self._settle()
        if outcome.policy_version is None:
            self.counts["unversioned"] += 1
            return False
        groups: list[tuple[str, str | None, str | None]] = [(outcome.policy_version, None, None)]
        if self.by_anchor and outcome.anchor_item_id is not None:
            groups.append((outcome.policy_version, outcome.anchor_item_id, None))
        if self.by_segment and outcome.segment is not None:
            groups.append((outcome.policy_version, None, outcome.segment))
        wm = self.watermark_ms
        on_time = True
        for spec in self.specs:
            for start in spec.starts(outcome.ts):
                end = start + spec.size_ms
                late = wm is not None and end <= wm
                for group in groups:
                    key = _window_key(spec, start, group)
                    agg = self._windows.get(key)
                    if agg is None:
                        if late:
                            on_time = False  # that window is closed (or about to be emitted)
                            continue
                        agg = WindowAggregate(
                            size_ms=spec.size_ms,
                            step_ms=spec.step_ms,
                            start=start,
                            policy_version=group[0],
                            anchor_item_id=group[1],
                            segment=group[2],
                        )
                    elif agg.closed or (late and offset < 0):
                        on_time = False  # closed (the clock, recovered older, did not know)
                        continue
                    # Read at a known offset, an open window the clock has passed is not
                    # published yet: the clock was recovered from a record newer than the
                    # window's (a worker advances after every record, so nothing else leaves
                    # one open). It counts what it has not counted, and closes on the next
                    # advance.
                    if offset < 0 or agg.applied_to < offset:
                        self._windows[key] = agg.add(outcome, offset)
                        if self._next_end is not None:
                            self._next_end = min(self._next_end, end)
        self._move_clock(outcome.ts)
        self.counts["added" if on_time else "late"] += 1
        return on_time

    def advance(self, now_ms: int | None = None) -> list[RewardWindow]:
        """Emit and delete every window the watermark has passed, by end then start.

        ``now_ms`` moves the clock forward (a timer keeps windows closing when no records
        come); it never moves it back.
        """
        if self.keep_closed:
            self._settle()
        if now_ms is not None:
            self._move_clock(now_ms)
        wm = self.watermark_ms
        if wm is None or (self._next_end is not None and wm < self._next_end):
            return []
        closed: list[WindowAggregate] = []
        next_end = math.inf
        for key, agg in list(self._windows.items()):
            if agg.closed:
                continue
            if agg.end <= wm:
                closed.append(agg)
                if self.keep_closed:
                    self._windows[key] = msgspec.structs.replace(agg, closed=True)
                    self._closed_new.append(key)
                else:
                    del self._windows[key]
            else:
                next_end = min(next_end, agg.end)
        self._next_end = next_end
        closed.sort(
            key=lambda a: (
                a.end,
                a.start,
                a.policy_version,
                a.anchor_item_id or "",
                a.segment or "",
            )
        )
        return [a.to_reward_window(self.confidence) for a in closed]
