"""A simulated storefront with a ground truth the policy never sees (demo and tests)."""

from streamer.simulation.shop import Catalogue, SimulatedShop

__all__ = ["Catalogue", "SimulatedShop"]
