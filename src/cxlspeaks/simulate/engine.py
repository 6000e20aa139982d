"""One dataset's frames: seeded orientations, Bragg signal, the water image and Poisson-recorded counts.

Frame ``i`` of dataset ``d`` is a pure function of (config, seed, d, i): its orientation and noise come from
:func:`cxlspeaks.seeding.frame_rng`, so shards and reruns reproduce the same bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..crystal import Crystal
from ..geometry import Geometry
from ..seeding import frame_rng
from .beam import Beam
from .bragg import BraggFrame, BraggSimulator, CrystalSample
from .detector_response import BadPixels, apply_bad_pixels, draw_bad_pixels
from .ice import SPOT_COLUMNS, IceFrame, IceSimulator
from .noise import (EIGER4M_SATURATION_PHOTONS, PoissonImage, add_poisson_counts, check_saturation, n_saturated,
                    poisson_counts)
from .nuisances import FrameNuisances, Nuisances, draw_frame_nuisances, nuisance_rng, shifted_geometry
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

    def record(self, frame_index: int, signal_image: np.ndarray | None, empty: bool = False,
               pulse_scale: float = 1.0, water_image: np.ndarray | None = None) -> np.ndarray:
        """Recorded counts (uint32): Poisson(signal + pulse_scale * thickness factor * water), cut off at the
        saturation value; ``signal_image=None`` records water alone.

        ``empty=True`` draws from the streams of "empty" (background-only) frames, so an empty frame never
        shares a draw with the overlay of the same index. ``water_image`` (photons per pixel, the detector's
        shape) replaces the dataset's water image for this frame (a moved beam centre); ``pulse_scale`` is the
        frame's pulse photons relative to the dataset's (1: the frame is drawn exactly as without it).
        """
        rng = frame_rng(self.seed, self.dataset, frame_index, "empty_noise" if empty else "noise")
        scale = self.thickness_factor(frame_index, empty)
        if pulse_scale != 1.0:
            scale = scale * pulse_scale
        if water_image is None:
            counts = self._sampler.draw(rng, scale, self.saturation_photons)
        else:
            counts = poisson_counts(np.asarray(water_image, dtype=np.float64) * scale, rng, self.saturation_photons)
        if signal_image is not None:
            add_poisson_counts(counts, signal_image, rng, self.saturation_photons)
        return counts

    def n_saturated(self, counts: np.ndarray) -> int:
        """Pixels of recorded ``counts`` at the saturation value."""
        return n_saturated(counts, self.saturation_photons)


@dataclass
class RecordedFrame:
    """One recorded frame: counts (uint32 (ss, fs)); signal (expected Bragg photons, float32 (ss, fs), None on
    empty frames); Bragg peaks (the :class:`~cxlspeaks.simulate.bragg.BraggFrame` columns, all crystals); ice spots
    (:data:`~cxlspeaks.simulate.ice.SPOT_COLUMNS`, never Bragg); the first crystal's quaternion and reciprocal
    axes (None on empty frames); the nuisance values; water_scale (expected water / the dataset's water image:
    pulse x thickness factor) and ice_photons (expected ice photons on the detector)."""

    counts: np.ndarray
    signal: np.ndarray | None
    peaks: pd.DataFrame
    ice_spots: pd.DataFrame
    quaternion: np.ndarray | None
    astar_bstar_cstar: np.ndarray | None
    nuisances: FrameNuisances
    water_scale: float
    ice_photons: float


class NuisanceRecorder:
    """Records frames with a dataset's nuisances (:mod:`.nuisances`): pulse x thickness scales the water, a moved
    beam centre moves the water with the detector (:meth:`water_image`), ice adds its rings, bad pixels come last.

    Frame values come from :func:`~cxlspeaks.simulate.nuisances.draw_frame_nuisances`; with every nuisance off a
    frame is recorded exactly as :meth:`PhotonRecorder.record` records it (same bytes).
    """

    def __init__(self, geometry: Geometry, beam: Beam, recorder: PhotonRecorder, nuisances: Nuisances = Nuisances(),
                 crystal_size_m: float = CrystalSample.size_m, water_backend: str = "builtin"):
        self.geometry, self.beam, self.recorder, self.nuisances = geometry, beam, recorder, nuisances
        self.crystal_size_m, self.water_backend = crystal_size_m, water_backend
        self.seed, self.dataset = recorder.seed, recorder.dataset
        self._ice: IceSimulator | None = None
        self._water_gradient: tuple[np.ndarray, np.ndarray] | None = None
        self.bad_pixels: BadPixels | None = None
        if nuisances.bad_pixels:
            self.bad_pixels = draw_bad_pixels(geometry.mask, self.seed, self.dataset, nuisances.dead_pixel_fraction,
                                              nuisances.hot_pixel_fraction, nuisances.noisy_pixel_fraction)

    def draw(self, nuisance_index: int, crystal: Crystal | None = None) -> FrameNuisances:
        """The values of frame ``nuisance_index`` (its index in the frames file); ``crystal`` None: an empty frame."""
        return draw_frame_nuisances(self.nuisances, self.seed, self.dataset, nuisance_index, self.crystal_size_m,
                                    self.beam.beam_radius_m, crystal)

    def ice(self, values: FrameNuisances, nuisance_index: int) -> IceFrame | None:
        """The frame's ice (photons scaled by its pulse), or None without ice."""
        if values.ice_kind == "none":
            return None
        n = self.nuisances
        if values.shifted:
            simulator = IceSimulator(shifted_geometry(self.geometry, values.beam_centre_px), self.beam,
                                     n.ice_crystallite_size_m, n.ice_spots_per_ring)
        else:
            if self._ice is None:
                self._ice = IceSimulator(self.geometry, self.beam, n.ice_crystallite_size_m, n.ice_spots_per_ring)
            simulator = self._ice
        rng = nuisance_rng(self.seed, self.dataset, nuisance_index, "ice_spots")
        return simulator.simulate(values.ice_kind, values.ice_thickness_m * values.pulse_scale, values.ice_spotty,
                                  rng)

    def water_image(self, values: FrameNuisances, exact: bool = False) -> np.ndarray | None:
        """The frame's expected water (photons per pixel before pulse and thickness, float32 (ss, fs)) on the
        detector shifted by its beam-centre offset (dx, dy) px; None when the beam centre has not moved.

        For |dx|, |dy| <= 1 (and ``exact`` False) it is the first-order expansion W0 + dx (W_x - W0) + dy (W_y - W0),
        W_x and W_y the water on the detector shifted by one pixel along x and y (computed once; W0 the dataset's
        image). The second-order error, ~ d^2 W'' / 2, measured against the exact image: at most 1.4e-3 of the
        image's maximum for offsets up to 1 px on the tiny detector's 1.2 mm pixels (it scales as the pixel size
        squared: ~5e-6 for the Eiger's 75 um), while an exact image costs a full water calculation per frame
        (3.4 s on the Eiger 4M here). Larger offsets, or ``exact``, compute the shifted detector's water exactly.
        """
        if not values.shifted:
            return None
        dx, dy = values.beam_centre_px
        if exact or max(abs(dx), abs(dy)) > 1.0:
            return expected_water(shifted_geometry(self.geometry, values.beam_centre_px), self.beam,
                                  self.recorder.water, self.water_backend)
        if self._water_gradient is None:
            at = {shift: expected_water(shifted_geometry(self.geometry, shift), self.beam, self.recorder.water,
                                        self.water_backend).astype(np.float64)
                  for shift in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))}
            self._water_gradient = (at[(1.0, 0.0)] - at[(0.0, 0.0)], at[(0.0, 1.0)] - at[(0.0, 0.0)])
        grad_x, grad_y = self._water_gradient
        image = self.recorder.background.astype(np.float64) + dx * grad_x + dy * grad_y
        return np.maximum(image, 0.0).astype(np.float32)

    def record(self, frame_index: int, values: FrameNuisances, signal_image: np.ndarray | None,
               empty: bool = False, nuisance_index: int | None = None) -> tuple[np.ndarray, IceFrame | None, float]:
        """(counts uint32 (ss, fs), the frame's ice or None, water_scale) for the expected Bragg ``signal_image``;
        ``frame_index``/``empty`` choose the noise stream as in :meth:`PhotonRecorder.record`, ``nuisance_index``
        (default ``frame_index``) the nuisance streams."""
        index = frame_index if nuisance_index is None else nuisance_index
        ice = self.ice(values, index)
        expected = signal_image
        if ice is not None:
            expected = ice.image if signal_image is None else signal_image + ice.image
        counts = self.recorder.record(frame_index, expected, empty, values.pulse_scale, self.water_image(values))
        if self.bad_pixels is not None:
            apply_bad_pixels(counts, self.bad_pixels, nuisance_rng(self.seed, self.dataset, index, "noisy_pixels"),
                             self.recorder.saturation_photons, self.nuisances.noisy_pixel_mean_counts,
                             self.nuisances.hot_pixel_counts)
        water_scale = self.recorder.thickness_factor(frame_index, empty) * values.pulse_scale
        return counts, ice, water_scale

    def record_empty(self, k: int, n_crystal_frames: int) -> RecordedFrame:
        """Empty frame ``k`` (index ``n_crystal_frames + k`` in the frames file): water, pulse, ice, bad pixels."""
        values = self.draw(n_crystal_frames + k)
        counts, ice, water_scale = self.record(k, values, None, empty=True, nuisance_index=n_crystal_frames + k)
        return RecordedFrame(counts, None, pd.DataFrame(), _spots(ice), None, None, values, water_scale,
                             _ice_photons(ice))


def _spots(ice: IceFrame | None) -> pd.DataFrame:
    return ice.spots if ice is not None else pd.DataFrame({c: [] for c in SPOT_COLUMNS})


def _ice_photons(ice: IceFrame | None) -> float:
    return float(ice.image.sum(dtype=np.float64)) if ice is not None else 0.0


class FrameSimulator:
    """Simulates the frames of one dataset with the chosen Bragg and water backends."""

    def __init__(self, geometry: Geometry, crystal: Crystal, beam: Beam, sample: CrystalSample = CrystalSample(),
                 water: WaterSheet = WaterSheet(), seed: int = 0, dataset: str = "default",
                 spot_sigma_px: float = 0.5, bragg_backend: str = "builtin", water_backend: str = "builtin",
                 background: np.ndarray | None = None, saturation_photons: int = EIGER4M_SATURATION_PHOTONS,
                 nuisances: Nuisances = Nuisances()):
        """``background``: a precomputed expected water image (e.g. the dataset's water file) to use as is;
        ``saturation_photons``: the detector's count cut-off (see :class:`PhotonRecorder`); ``nuisances``: the
        dataset's nuisance settings (:meth:`frame` applies them; the pattern_sim backend takes none that changes
        the Bragg image: pulse, crystal size, profile, extra crystals, beam centre)."""
        self.geometry, self.crystal, self.beam, self.sample, self.water = geometry, crystal, beam, sample, water
        self.seed, self.dataset, self.spot_sigma_px = seed, dataset, spot_sigma_px
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
        if self._pattern_sim is not None and nuisances.changes_bragg:
            raise ValueError("nuisances: pulse, crystal size, beam profile, extra crystals and beam centre need "
                             "bragg_backend: builtin")
        self.nuisance = NuisanceRecorder(geometry, beam, self.recorder, nuisances, sample.size_m, water_backend)

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

    def bragg(self, frame_index: int, values: FrameNuisances) -> tuple[BraggFrame, np.ndarray]:
        """(Bragg image and peaks of every crystal of the frame, the first crystal's quaternion).

        Crystal c is simulated at the dataset's pulse, as a cube of its own edge on the frame's (shifted) detector,
        then its photons (image, ``photons``, ``photons_total``) are multiplied by pulse_scale x overlap_c: the
        integrated intensity is linear in the fluence, and the simulator's ``min_photons`` cut-off then acts on
        the same reflections whatever the pulse. The first crystal has the frame's orientation, the others their
        drawn ones. A frame whose values are all neutral is :meth:`signal` itself (same bytes).
        """
        q, astar = self.orientation(frame_index)
        same_crystal = not values.shifted and values.crystal_size_m[0] == self.sample.size_m
        if same_crystal and values.n_crystals == 1 and values.pulse_scale * values.overlap[0] == 1.0:
            return self.signal(frame_index), q
        geometry = shifted_geometry(self.geometry, values.beam_centre_px)
        orientations = [astar] + [a for _, a in values.extra_orientations]
        images, tables = [], []
        for c, (astar_c, size, overlap) in enumerate(zip(orientations, values.crystal_size_m, values.overlap)):
            if c == 0 and same_crystal:
                frame = self.signal(frame_index)
            else:
                sample = dataclasses.replace(self.sample, size_m=size)
                simulator = BraggSimulator(geometry, self.crystal, self.beam, sample, spot_sigma_px=self.spot_sigma_px)
                frame = simulator.simulate(astar_c)
            scale = values.pulse_scale * overlap
            images.append(frame.image * np.float32(scale))
            tables.append(frame.peaks.assign(photons=frame.peaks["photons"] * scale,
                                             photons_total=frame.peaks["photons_total"] * scale))
        peaks = pd.concat(tables, ignore_index=True).sort_values("photons", ascending=False, kind="stable")
        return BraggFrame(image=np.sum(images, axis=0, dtype=np.float32), peaks=peaks.reset_index(drop=True),
                          astar_bstar_cstar=np.asarray(astar, dtype=float)), q

    def frame(self, frame_index: int) -> RecordedFrame:
        """Crystal frame ``frame_index`` with the dataset's nuisances: Bragg of every crystal, water, ice, bad
        pixels (see :class:`NuisanceRecorder`)."""
        values = self.nuisance.draw(frame_index, self.crystal)
        bragg, q = self.bragg(frame_index, values)
        counts, ice, water_scale = self.nuisance.record(frame_index, values, bragg.image)
        return RecordedFrame(counts, bragg.image, bragg.peaks, _spots(ice), q, bragg.astar_bstar_cstar, values,
                             water_scale, _ice_photons(ice))
