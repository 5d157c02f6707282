"""Replay pacing and resumption: pure decisions, no I/O.

>>> pace = ReplayPacer(speed=60.0)           # one hour of history per minute
>>> pace.delay_s(event_ts_ms=0, elapsed_s=0.0)
0.0
>>> pace.delay_s(event_ts_ms=120_000, elapsed_s=1.0)   # 2 min of history = 2 s at 60x
1.0
>>> ReplayPacer(speed=None).delay_s(event_ts_ms=10**9, elapsed_s=0.0)   # as fast as possible
0.0
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from streamer.events import Event


class ReplayPacer:
    """How long to wait before sending an event so history plays at ``speed`` x real time.

    ``speed=None`` means as fast as possible. The first event fixes the origin.
    """

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.speed = speed
        self._origin_ms: int | None = None

    def delay_s(self, *, event_ts_ms: int, elapsed_s: float) -> float:
        if self.speed is None:
            return 0.0
        if self._origin_ms is None:
            self._origin_ms = event_ts_ms
        due_s = (event_ts_ms - self._origin_ms) / 1000.0 / self.speed
        return max(0.0, due_s - elapsed_s)


#: 2000-01-01 in epoch ms. All digits below it are no time in this century's data but a year
#: or a date typed without dashes: read as milliseconds, ``--since 2017`` would be in 1970 and
#: replay everything.
EPOCH_MS_2000 = 946_684_800_000


def parse_since(value: str | None) -> int | None:
    """``--since``: epoch milliseconds, or an ISO date/time (UTC unless it says otherwise).
    ``ValueError`` says what is wrong, in words for the command line.

    >>> parse_since("2011-01-01")
    1293840000000
    >>> parse_since("1293840000000")
    1293840000000
    >>> parse_since("2017")
    Traceback (most recent call last):
    ...
    ValueError: 2017 is not epoch milliseconds since 2000 (13 digits): did you mean 2017-01-01?
    """
    if value is None:
        return None
    if value.isdigit():
        if int(value) < EPOCH_MS_2000:
            raise ValueError(f"{value} is not epoch milliseconds since 2000 (13 digits)"
                             + _date_hint(value))
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"epoch ms or an ISO date/time, not {value!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _date_hint(digits: str) -> str:
    if len(digits) == 4:
        return f": did you mean {digits}-01-01?"
    if len(digits) == 8:  # 20170101
        return f": did you mean {digits[:4]}-{digits[4:6]}-{digits[6:]}?"
    return ""


def resume(
    events: Iterable[Event], *, skip: int = 0, since_ms: int | None = None,
    limit: int | None = None,
) -> Iterator[Event]:
    """Drop the first ``skip`` events, then every event older than ``since_ms``, and yield at
    most ``limit`` of the rest.

    The limit counts what is left, as SQL's LIMIT after OFFSET: an interrupted replay of
    ``--limit N`` resumes with ``--skip`` and the same limit for the next N events.

    >>> from types import SimpleNamespace as E
    >>> [e.ts for e in resume([E(ts=t) for t in (1, 2, 3, 4)], skip=1, since_ms=3)]
    [3, 4]
    >>> [e.ts for e in resume([E(ts=t) for t in (1, 2, 3, 4)], skip=1, limit=2)]
    [2, 3]
    """
    if skip < 0:
        raise ValueError("skip must be >= 0")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    kept = (event for i, event in enumerate(events)
            if i >= skip and (since_ms is None or event.ts >= since_ms))
    return itertools.islice(kept, limit)
