"""One dataset's frames: seeded orientations, Bragg signal, the water image and Poisson-recorded counts.

Frame ``i`` of dataset ``d`` is a pure function of (config, seed, d, i): its orientation and noise come from
:func:`cxlspeaks.seeding.frame_rng`, so shards and reruns reproduce the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..crystal import Crystal
from ..geometry import Geometry
from ..seeding import frame_rng
from .beam import Beam
from .bragg import BraggFrame, BraggSimulator, CrystalSample
from .noise import EIGER4M_SATURATION_PHOTONS, PoissonImage, add_poisson_counts, check_saturation, n_saturated
from .water import thickness_scale, water_intensity

BRAGG_BACKENDS = ("builtin", "pattern_sim")
WATER_BACKENDS = ("builtin", "reborn")


@dataclass(frozen=True)
class WaterSheet:
    """The liquid around the crystal: thickness (m), temperature (K), relative shot-to-shot thickness jitter."""

    thickness_m: float = 10e-6
    temperature_k: float = 298.15
    thickness_jitter: float = 0.0


def expected_water(geometry: Geometry, beam: Beam, water: WaterSheet = WaterSheet(),
                   backend: str = "builtin") -> np.ndarray:
    """The expected water image (photons per pixel, float32) from the builtin engine or from reborn."""
    if backend == "builtin":
        return water_intensity(geometry, beam, water.thickness_m, water.temperature_k)
    if backend == "reborn":
        from .reborn_backend import reborn_water_intensity

        return reborn_water_intensity(geometry, beam, water.thickness_m, water.temperature_k)
    raise ValueError(f"unknown water backend {backend!r}; choose one of {WATER_BACKENDS}")


class PhotonRecorder:
    """Records one dataset's frames: Poisson(signal + thickness factor * water), one random stream per frame,
    cut off at ``saturation_photons`` (the detector's count cut-off; default the Eiger 4M's,
    :data:`~cxlspeaks.simulate.noise.EIGER4M_SATURATION_PHOTONS`): saturated pixels record exactly that value."""

    def __init__(self, background: np.ndarray, water: WaterSheet = WaterSheet(), seed: int = 0,
                 dataset: str = "default", saturation_photons: int = EIGER4M_SATURATION_PHOTONS):
        self.background = np.asarray(background, dtype=np.float32)
        self.water, self.seed, self.dataset = water, seed, dataset
        self.saturation_photons = check_saturation(saturation_photons)
        self._sampler = PoissonImage(self.background)

    def thickness_factor(self, frame_index: int, empty: bool = False) -> float:
        """The frame's shot-to-shot water thickness factor (1 without jitter)."""
        rng = frame_rng(self.seed, self.dataset, frame_index, "empty_thickness" if empty else "thickness")
        return thickness_scale(rng, self.water.thickness_jitter)

    def record(self, frame_index: int, signal_image: np.ndarray | None, empty: bool = False) -> np.ndarray:
        """Recorded counts (uint32): Poisson(signal + thickness factor * water), cut off at the saturation
        value; ``signal_image=None`` records water alone.

        ``empty=True`` draws from the streams of "empty" (background-only) frames, so an empty frame never
        shares a draw with the overlay of the same index.
        """
        rng = frame_rng(self.seed, self.dataset, frame_index, "empty_noise" if empty else "noise")
        counts = self._sampler.draw(rng, self.thickness_factor(frame_index, empty), self.saturation_photons)
        if signal_image is not None:
            add_poisson_counts(counts, signal_image, rng, self.saturation_photons)
        return counts

    def n_saturated(self, counts: np.ndarray) -> int:
        """Pixels of recorded ``counts`` at the saturation value."""
        return n_saturated(counts, self.saturation_photons)


class FrameSimulator:
    """Simulates the frames of one dataset with the chosen Bragg and water backends."""

    def __init__(self, geometry: Geometry, crystal: Crystal, beam: Beam, sample: CrystalSample = CrystalSample(),
                 water: WaterSheet = WaterSheet(), seed: int = 0, dataset: str = "default",
                 spot_sigma_px: float = 0.5, bragg_backend: str = "builtin", water_backend: str = "builtin",
                 background: np.ndarray | None = None, saturation_photons: int = EIGER4M_SATURATION_PHOTONS):
        """``background``: a precomputed expected water image (e.g. the dataset's water file) to use as is;
        ``saturation_photons``: the detector's count cut-off (see :class:`PhotonRecorder`)."""
        self.geometry, self.crystal, self.beam, self.sample, self.water = geometry, crystal, beam, sample, water
        self.seed, self.dataset = seed, dataset
        self.builtin = BraggSimulator(geometry, crystal, beam, sample, spot_sigma_px=spot_sigma_px)
        if bragg_backend == "builtin":
            self._pattern_sim = None
        elif bragg_backend == "pattern_sim":
            from .pattern_sim import PatternSimBackend

            self._pattern_sim = PatternSimBackend(geometry, crystal, beam, sample)
        else:
            raise ValueError(f"unknown Bragg backend {bragg_backend!r}; choose one of {BRAGG_BACKENDS}")
        if background is not None:
            if np.shape(background) != geometry.shape:
                raise ValueError(f"background shape {np.shape(background)} differs from the detector {geometry.shape}")
            self.background = np.asarray(background, dtype=np.float32)
        else:
            self.background = expected_water(geometry, beam, water, water_backend)
        self.recorder = PhotonRecorder(self.background, water, seed, dataset, saturation_photons)

    def orientation(self, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(CrystFEL quaternion w x y z, lab reciprocal axes 3 x 3 in 1/m) of a frame, uniform on SO(3)."""
        q, astar = self.crystal.random_orientations(frame_rng(self.seed, self.dataset, frame_index, "orientation"), 1)
        return q[0], astar[0]

    def signal(self, frame_index: int) -> BraggFrame:
        """Expected Bragg photons and true peaks of a frame."""
        q, astar = self.orientation(frame_index)
        if self._pattern_sim is not None:
            return self._pattern_sim.simulate(q)
        return self.builtin.simulate(astar)

    def thickness_factor(self, frame_index: int, empty: bool = False) -> float:
        """The frame's shot-to-shot water thickness factor (see :class:`PhotonRecorder`)."""
        return self.recorder.thickness_factor(frame_index, empty)

    def record(self, frame_index: int, signal_image: np.ndarray | None, empty: bool = False) -> np.ndarray:
        """Recorded counts of a frame (see :meth:`PhotonRecorder.record`)."""
        return self.recorder.record(frame_index, signal_image, empty)

    def n_saturated(self, counts: np.ndarray) -> int:
        """Pixels of recorded ``counts`` at the saturation value."""
        return self.recorder.n_saturated(counts)
