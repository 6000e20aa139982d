"""Simulators: Bragg signal (builtin analytic engine, or CrystFEL pattern_sim), water background (builtin, or
reborn), and photon-counting noise. Physics in the README and docs/PHYSICS.md."""

from .beam import Beam
from .bragg import BraggFrame, BraggSimulator, CrystalSample
from .noise import poisson_counts
from .water import water_intensity

__all__ = ["Beam", "BraggFrame", "BraggSimulator", "CrystalSample", "poisson_counts", "water_intensity"]
