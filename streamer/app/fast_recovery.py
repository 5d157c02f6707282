"""faust's table recovery with its end-of-recovery test made cheap per changelog message.

Written against faust-streaming 0.15.3, as :mod:`streamer.app.fast_consumer`.

faust's recovery loop (``Recovery._slurp_changelogs``) asks after *every* changelog message
whether recovery is over: ``need_recovery()``, which builds a ``Counter`` of the remaining
records of every active changelog partition (``active_remaining()``) to find whether any is
above zero. A worker owns a partition of each of its tables (and every partition of its global
tables): 40 changelog partitions here, so each message paid for a 40-entry dict and Counter.
On a restart with 20k items (``benchmarks/scale.py``) that test was half of the recovery loop's
CPU (py-spy: ``need_recovery`` 0.93 s of the loop's 1.8 s), the loop about half of recovery.

:class:`FastRecovery` answers the same question without building anything: it stops at the
first partition still behind, which during recovery is almost always the first one it looks
at; only the last message of a recovery walks every partition. The answer is faust's exactly
(``tests/unit/test_fast_recovery.py`` compares them on arbitrary states).
:func:`install_fast_recovery` refuses (:class:`~streamer.app.fast_consumer.FastConsumerUnsupported`)
unless faust's two methods are still byte for byte the ones this one replaces.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.tables.recovery import Recovery

from streamer.app.fast_consumer import FAUST_VERSION, FastConsumerUnsupported, _source_sha256

__all__ = ["FastRecovery", "install_fast_recovery"]

#: sha256 of ``inspect.getsource`` of faust-streaming 0.15.3's ``Recovery.need_recovery`` and
#: ``Recovery.active_remaining``: what :meth:`FastRecovery.need_recovery` computes.
PINNED_SHA256 = {
    "need_recovery": "fd1dc345b5d5e12113adc510d40bc3d6594b2a9fb13e93f0fa8b761f5dd98600",
    "active_remaining": "0dcc38568ad5018b311c00ac7ceebc257d909591267bc47fdb5cd40aad418c50",
}


class FastRecovery(Recovery):
    """faust's :class:`~faust.tables.recovery.Recovery` with :meth:`need_recovery` short-cut."""

    def need_recovery(self) -> bool:
        """True while an active changelog partition is behind its highwater: faust's
        ``any(v > 0 for v in self.active_remaining().values())``, stopping at the first."""
        offsets = self.active_offsets
        for tp, highwater in self.active_highwaters.items():
            if highwater is not None:
                offset = offsets[tp]
                if offset is not None and highwater - offset > 0:
                    return True
        return False


def check_supported() -> None:
    """Raise unless faust's recovery still computes ``need_recovery`` as pinned."""
    problems = []
    for name, expected in PINNED_SHA256.items():
        try:
            digest = _source_sha256(getattr(Recovery, name))
        except (OSError, TypeError, AttributeError) as e:
            problems.append(f"cannot read faust's Recovery.{name} source ({e})")
            continue
        if digest != expected:
            problems.append(f"faust.tables.recovery.Recovery.{name} changed "
                            f"(sha256 {digest[:12]}..., expected {expected[:12]}...)")
    if problems:
        raise FastConsumerUnsupported(
            f"streamer's FastRecovery was written against faust-streaming {FAUST_VERSION} "
            f"(installed: {faust.__version__}): " + "; ".join(problems)
            + ". Re-check streamer/app/fast_recovery.py against the new faust, or leave it out.")


def install_fast_recovery(app: faust.App) -> None:
    """Make ``app``'s tables recover with :class:`FastRecovery`; call before the worker
    starts. Idempotent."""
    check_supported()
    tables: Any = app.tables
    current = getattr(tables, "_recovery", None)
    if isinstance(current, FastRecovery):
        return
    if current is not None:
        raise FastConsumerUnsupported("the app already created its recovery service: install "
                                      "the fast recovery before the worker starts")
    # What TableManager.recovery would create on first use (the loop is bound late, as there).
    tables._recovery = FastRecovery(app, tables, beacon=tables.beacon)
