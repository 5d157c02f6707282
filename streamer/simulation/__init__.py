"""A simulated storefront with a ground truth the policy never sees, the oracle that knows it,
and the in-process closed loop that measures policies against it (demo, tests, benchmarks).

- :mod:`~streamer.simulation.shop`: :class:`Catalogue` (the truth), :class:`SimulatedShop`.
- :mod:`~streamer.simulation.oracle`: :class:`Oracle`, the best variant and regret.
- :mod:`~streamer.simulation.report`: :class:`SimulationReport`, shares, recovery after drift.
- :mod:`~streamer.simulation.loop`: :func:`run_closed_loop`, decision-makers and baselines.
"""

from streamer.simulation.loop import (
    DEFAULT_START_MS,
    DecisionMaker,
    Decisions,
    EngineDecisions,
    GreedyLift,
    OracleDecisions,
    PairCounts,
    UniformRandom,
    make_offer,
    run_closed_loop,
    sample_variant,
)
from streamer.simulation.oracle import DISCOUNTS, Action, Oracle, OracleAnswer
from streamer.simulation.report import (
    NO_OFFER,
    ShareOfOracle,
    SimulationReport,
    impressions_to_recover,
    plot_reports,
    share_interval,
)
from streamer.simulation.shop import (
    DEFAULT_SEGMENTS,
    Catalogue,
    Segment,
    Shopper,
    SimulatedShop,
    Visit,
)

__all__ = [
    "DEFAULT_SEGMENTS",
    "DEFAULT_START_MS",
    "DISCOUNTS",
    "NO_OFFER",
    "Action",
    "Catalogue",
    "DecisionMaker",
    "Decisions",
    "EngineDecisions",
    "GreedyLift",
    "Oracle",
    "OracleAnswer",
    "OracleDecisions",
    "PairCounts",
    "Segment",
    "ShareOfOracle",
    "Shopper",
    "SimulatedShop",
    "SimulationReport",
    "UniformRandom",
    "Visit",
    "impressions_to_recover",
    "make_offer",
    "plot_reports",
    "run_closed_loop",
    "sample_variant",
    "share_interval",
]
