"""FastRecovery answers faust's end-of-recovery question exactly, and installs only on the
faust it was written against."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from hypothesis import given
from hypothesis import strategies as st

from streamer.app import fast_recovery
from streamer.app.fast_consumer import FastConsumerUnsupported
from streamer.app.fast_recovery import FastRecovery, install_fast_recovery

offsets_or_none = st.one_of(st.none(), st.integers(min_value=-1, max_value=50))


def state(highwaters: dict[int, int | None], offsets: dict[int, int | None]) -> Any:
    """A stand-in with the attributes both implementations read (faust keeps offsets in a
    Counter: a partition never seen reads 0)."""
    stub = SimpleNamespace(active_highwaters=highwaters, active_offsets=Counter(offsets))
    stub.active_remaining = lambda: Recovery.active_remaining(stub)  # type: ignore[arg-type]
    return stub


@given(st.dictionaries(st.integers(0, 40), offsets_or_none, max_size=40),
       st.dictionaries(st.integers(0, 40), offsets_or_none, max_size=40))
def test_need_recovery_is_fausts(highwaters: dict[int, int | None],
                                 offsets: dict[int, int | None]) -> None:
    stub = state(highwaters, offsets)
    assert FastRecovery.need_recovery(stub) == Recovery.need_recovery(stub)


@pytest.mark.parametrize(("highwaters", "offsets", "behind"), [
    ({0: 10, 1: 5}, {0: 10, 1: 5}, False),   # every partition at its highwater
    ({0: 10, 1: 5}, {0: 10, 1: 4}, True),    # the last one behind
    ({0: None, 1: 5}, {1: 5}, False),        # no highwater known: not waited for
    ({0: 3}, {}, True),                      # never read: offset 0 (a Counter)
    ({0: 3}, {0: None}, False),              # offset unknown: not waited for
])
def test_need_recovery_cases(highwaters: dict[int, int | None],
                             offsets: dict[int, int | None], behind: bool) -> None:
    assert FastRecovery.need_recovery(state(highwaters, offsets)) is behind


def test_the_worker_recovers_with_it() -> None:
    from streamer.app.factory import create_app
    from streamer.settings import Settings

    app = create_app(Settings(worker={"app_id": "fast-recovery"})).app
    assert isinstance(app.tables.recovery, FastRecovery)
    install_fast_recovery(app)  # idempotent
    assert isinstance(app.tables.recovery, FastRecovery)


def test_refuses_another_faust(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    monkeypatch.setitem(fast_recovery.PINNED_SHA256, "need_recovery", "0" * 64)
    with pytest.raises(FastConsumerUnsupported, match=r"Recovery\.need_recovery changed"):
        install_fast_recovery(faust.App("refuses-another-faust"))


def test_refuses_a_recovery_already_made() -> None:
    import faust

    app = faust.App("recovery-already-made")
    assert app.tables.recovery is not None  # faust's own, created on first use
    with pytest.raises(FastConsumerUnsupported, match="already created"):
        install_fast_recovery(app)
