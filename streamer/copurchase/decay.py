"""Event-time exponential decay, applied lazily through a per-value landmark.

A decayed count is stored as a *forward* value ``v`` at a landmark time ``L``: its value at any
time ``t`` is ``v * 2 ** (-(t - L) / half_life)``. Adding an event of weight ``w`` at time
``ts`` adds ``w * 2 ** ((ts - L) / half_life)`` to ``v``. This is exact for any arrival order
(forward decay, Cormode et al., ICDE 2009): an event older than the landmark simply adds a
smaller amount, and the landmark only ever moves forward, so time never runs backwards. Nothing
is swept: a value is scaled only when it is read or when its landmark is moved.

>>> hl = 1000.0  # half-life of one second, in ms
>>> d = add_weight(None, 1.0, ts_ms=0, half_life_ms=hl)
>>> d = add_weight(d, 1.0, ts_ms=1000, half_life_ms=hl)  # the first event is now worth 0.5
>>> value_at(d, 1000, hl)
1.5
>>> value_at(d, 2000, hl)
0.75
>>> late = add_weight(d, 1.0, ts_ms=0, half_life_ms=hl)  # out of order: worth 0.5 at t=1000
>>> value_at(late, 1000, hl), late.landmark_ms
(2.0, 1000)
"""

from __future__ import annotations

import math

from msgspec import Struct

__all__ = [
    "RENORMALISE_HALF_LIVES",
    "Decayed",
    "add_weight",
    "forward_factor",
    "value_at",
]

#: Landmarks move forward once an event is this many half-lives past them. Forward factors then
#: stay below 2**32, far from float overflow, and the renormalisation (a rescale of one value,
#: or of one item's partner table) happens at most once per 32 half-lives per key.
RENORMALISE_HALF_LIVES = 32.0


class Decayed(Struct, frozen=True, array_like=True, gc=False):
    """A decayed count: ``value`` as of ``landmark_ms`` (epoch ms), decaying from there.

    Immutable; updates build a new one, so a changelog-backed table sees each change as an
    assignment. Encodes as a two-element JSON array.

    >>> import msgspec
    >>> msgspec.json.encode(Decayed(2.5, 1_700_000_000_000))
    b'[2.5,1700000000000]'
    >>> msgspec.json.decode(b'[2.5,1700000000000]', type=Decayed)
    Decayed(value=2.5, landmark_ms=1700000000000)
    """

    value: float
    landmark_ms: int


def forward_factor(ts_ms: int, landmark_ms: int, half_life_ms: float) -> float:
    """``2 ** ((ts_ms - landmark_ms) / half_life_ms)``: what one unit at ``ts_ms`` is worth at
    the landmark's scale (below 1 for events older than the landmark).

    >>> forward_factor(2000, 0, 1000.0)
    4.0
    """
    return math.exp((ts_ms - landmark_ms) * (math.log(2.0) / half_life_ms))


def add_weight(current: Decayed | None, weight: float, ts_ms: int, half_life_ms: float) -> Decayed:
    """Return ``current`` plus an event of ``weight`` at ``ts_ms``; ``current`` is untouched.

    The landmark moves to ``ts_ms`` only when the event is newer than it (the value is rescaled
    then), so the stored value never depends on arrival order beyond float rounding.
    """
    if current is None:
        return Decayed(float(weight), ts_ms)
    landmark = current.landmark_ms
    if ts_ms > landmark:
        scaled = current.value * forward_factor(landmark, ts_ms, half_life_ms)
        return Decayed(scaled + weight, ts_ms)
    return Decayed(current.value + weight * forward_factor(ts_ms, landmark, half_life_ms), landmark)


def value_at(current: Decayed | None, now_ms: int, half_life_ms: float) -> float:
    """The decayed value of ``current`` at ``now_ms`` (0.0 for ``None``).

    Read at a time before the landmark (a late event's), it is the value at the landmark: not
    extrapolated back, which grew without bound (a purchase stamped 2000-01-01 read a count of
    ~1e58, and overflowed at a 7-day half-life). It never changes what is stored.

    >>> value_at(Decayed(2.0, 1000), 0, 1000.0)
    2.0
    """
    if current is None:
        return 0.0
    landmark = current.landmark_ms
    return current.value * forward_factor(landmark, max(now_ms, landmark), half_life_ms)
