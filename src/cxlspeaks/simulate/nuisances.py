"""Shot-to-shot nuisances of real serial-crystallography frames: per-dataset settings and per-frame draws.

:class:`Nuisances` holds one dataset's settings (config ``nuisances:``); every nuisance is OFF by default, so a
dataset without the mapping keeps its bytes. :func:`draw_frame_nuisances` draws frame ``i``'s values from its own
random streams (one per nuisance, :func:`nuisance_rng`), so turning one nuisance on never changes another's draws.

Per frame (formulas; z are standard normal deviates):

* **Pulse photon number**: N = N_0 * pulse_scale, pulse_scale = exp(sigma_p z - sigma_p^2 / 2), log-normal with
  mean 1 (the dataset's ``n_photons`` stays the mean). Water, ice and Bragg photons all scale with N.
* **Crystal size**: L = L_0 exp(sigma_L z), log-normal with median L_0 (the dataset's ``crystal_size_m``); the
  Bragg simulator is rebuilt with L, so both V = L^3 and the reflection width 0.376 / L change.
* **Crystal position in the beam** (``beam_profile: gaussian``): the crystal centre sits at (x_0, y_0) =
  sigma_xy (z_x, z_y) from the beam axis; the beam is a round Gaussian of standard deviation
  sigma_b = r_beam / sqrt(2), so its peak fluence N / (2 pi sigma_b^2) equals the flat-top value N / (pi r^2) the
  Bragg simulator uses. The **overlap factor** is the mean fluence over the crystal's L x L cross-section
  relative to that value: f = prod_{u in (x_0, y_0)} (sigma_b sqrt(2 pi) / L) [Phi((u + L/2) / sigma_b) -
  Phi((u - L/2) / sigma_b)], Phi the normal CDF; f -> exp(-(x_0^2 + y_0^2) / r^2) for L << sigma_b. The cube is
  taken face-on to the beam whatever its orientation (ASSUMPTION). The water sheet is far wider than the beam, so
  its photons do not depend on the profile. ``beam_profile: flat`` (the default) is the current model: f = 1.
* **Water thickness**: the existing factor max(0, 1 + jitter z) (``water_thickness_jitter``), recorded here.
* **Multiple crystals**: n = 1 + Poisson(``extra_crystals_mean``) per crystal frame, each with its own size,
  position and a uniform random orientation; their Bragg images add (empty frames hold no crystal).
* **Ice** (:mod:`.ice`): a fraction ``ice_fraction`` of frames (crystal and empty alike) carries ice, cubic with
  probability ``ice_cubic_fraction`` (else hexagonal), spotty with probability ``ice_spotty_fraction`` (else
  smooth rings), of thickness t = ``ice_thickness_m`` exp(sigma_t z).
* **Beam centre**: the direct beam moves by (dx, dy) = sigma_c (z_x, z_y) pixels in lab x, y; the detector is
  translated by -(dx, dy) pixels (:func:`shifted_geometry`), which moves water, ice and Bragg together.

Defaults for a CXLS-like source (:data:`CXLS_LIKE`): the CXLS papers (Graves et al. 2014, "Compact x-ray source
based on burst-mode inverse Compton scattering at 100 kHz", Phys. Rev. ST Accel. Beams 17:120701; the CXLS design
reports) state the mean flux, spot size and bandwidth but no shot-to-shot statistics, so
every value in :data:`CXLS_LIKE` is an ASSUMPTION chosen from SFX practice (liquid-jet delivery): ~10 % rms pulse
energy jitter, a 30 % log-normal spread of crystal size, crystal centres spread by half the beam radius
(sigma_xy = r / 2 per axis), ~10 % of hits with a second crystal, ~5 % of frames with ice (half of it spotty, a
third cubic, a median 1 um of ice in the beam: on the Eiger 4M at 9.5 keV, 0.1 m, smooth Ih rings then peak at
~0.04 photons per pixel, twice the water ring), ~0.3 px beam pointing jitter and Eiger-like bad-pixel fractions
(dead 1e-4, hot 2e-5, noisy 1e-4).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from ..seeding import frame_rng

BEAM_PROFILES = ("flat", "gaussian")
ICE_KINDS = ("none", "hexagonal", "cubic")


def nuisance_rng(seed: int, dataset: str, frame_index: int, nuisance: str) -> np.random.Generator:
    """The random stream of one nuisance of one frame: :func:`~cxlspeaks.seeding.frame_rng` of the dataset name
    ``"<dataset>:nuisance:<nuisance>"`` (a stream of its own, as the splits' ``"<name>:<key>"``)."""
    return frame_rng(seed, f"{dataset}:nuisance:{nuisance}", frame_index, "noise")


@dataclass(frozen=True)
class Nuisances:
    """One dataset's nuisance settings; all off by default (every frame as without nuisances).

    pulse_sigma: log-normal sigma of the pulse photon number; crystal_size_sigma: log-normal sigma of the crystal
    edge; beam_profile: ``flat`` or ``gaussian``; crystal_offset_sigma_m: standard deviation (m) of the crystal
    centre's x and y from the beam axis (needs ``gaussian``); extra_crystals_mean: Poisson mean of crystals beyond
    the first; ice_fraction, ice_cubic_fraction, ice_spotty_fraction: probabilities per frame; ice_thickness_m:
    median ice thickness, ice_thickness_sigma its log-normal sigma; ice_crystallite_size_m: ice grain size (sets the
    ring width by Scherrer); ice_spots_per_ring: mean spots on a ring of spotty ice; beam_centre_sigma_px: standard
    deviation of the beam centre's x and y (pixels); dead/hot/noisy_pixel_fraction: of the good pixels;
    noisy_pixel_mean_counts: mean extra counts of a noisy pixel per frame; hot_pixel_counts: what a hot pixel reads
    (None: the saturation value). Bad values raise ValueError naming the key (``nuisances.KEY: ...``).
    """

    pulse_sigma: float = 0.0
    crystal_size_sigma: float = 0.0
    beam_profile: str = "flat"
    crystal_offset_sigma_m: float = 0.0
    extra_crystals_mean: float = 0.0
    ice_fraction: float = 0.0
    ice_cubic_fraction: float = 0.0
    ice_spotty_fraction: float = 0.0
    ice_thickness_m: float = 1e-6
    ice_thickness_sigma: float = 0.0
    ice_crystallite_size_m: float = 1e-7
    ice_spots_per_ring: float = 20.0
    beam_centre_sigma_px: float = 0.0
    dead_pixel_fraction: float = 0.0
    hot_pixel_fraction: float = 0.0
    noisy_pixel_fraction: float = 0.0
    noisy_pixel_mean_counts: float = 2.0
    hot_pixel_counts: int | None = None

    def __post_init__(self) -> None:
        unit = (0.0, 1.0)
        ranges = {"pulse_sigma": (0.0, 2.0), "crystal_size_sigma": (0.0, 2.0), "crystal_offset_sigma_m": (0.0, 1e-2),
                  "extra_crystals_mean": (0.0, 10.0), "ice_fraction": unit, "ice_cubic_fraction": unit,
                  "ice_spotty_fraction": unit, "ice_thickness_sigma": (0.0, 2.0), "beam_centre_sigma_px": (0.0, 100.0),
                  "dead_pixel_fraction": unit, "hot_pixel_fraction": unit, "noisy_pixel_fraction": unit,
                  "noisy_pixel_mean_counts": (0.0, 1e6)}
        for key, (lo, hi) in ranges.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"nuisances.{key}: {value!r} is not a number in [{lo:g}, {hi:g}]")
        for key in ("ice_thickness_m", "ice_crystallite_size_m", "ice_spots_per_ring"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"nuisances.{key}: {value!r} is not a positive number")
        if self.beam_profile not in BEAM_PROFILES:
            raise ValueError(f"nuisances.beam_profile: {self.beam_profile!r} is not one of {BEAM_PROFILES}")
        if self.crystal_offset_sigma_m > 0 and self.beam_profile != "gaussian":
            raise ValueError("nuisances.crystal_offset_sigma_m: an offset from the beam axis needs "
                             "beam_profile: gaussian (a flat-top beam has no profile)")
        if self.dead_pixel_fraction + self.hot_pixel_fraction + self.noisy_pixel_fraction > 1:
            raise ValueError("nuisances.dead_pixel_fraction: dead + hot + noisy pixel fractions exceed 1")
        if self.hot_pixel_counts is not None and (isinstance(self.hot_pixel_counts, bool) or
                                                  not isinstance(self.hot_pixel_counts, int) or
                                                  not 1 <= self.hot_pixel_counts <= 2**32 - 1):
            raise ValueError(f"nuisances.hot_pixel_counts: {self.hot_pixel_counts!r} is not an integer in 1 .. 2^32-1")

    @classmethod
    def from_mapping(cls, values: "Nuisances | dict | None") -> "Nuisances":
        """Settings from a config mapping (None: all off); an unknown key is a ValueError naming it."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"nuisances: expected a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"nuisances.{unknown[0]}: unknown nuisance setting")
        return cls(**values)

    @property
    def bad_pixels(self) -> bool:
        """Whether the dataset has a bad-pixel map (dead, hot or noisy pixels)."""
        return self.dead_pixel_fraction + self.hot_pixel_fraction + self.noisy_pixel_fraction > 0

    @property
    def changes_bragg(self) -> bool:
        """Whether a nuisance changes the Bragg image (pulse, size, profile, extra crystals, beam centre)."""
        return (self.pulse_sigma > 0 or self.crystal_size_sigma > 0 or self.beam_profile != "flat"
                or self.extra_crystals_mean > 0 or self.beam_centre_sigma_px > 0)

    @property
    def per_frame(self) -> bool:
        """Whether any per-frame nuisance is on (then the frames file records the values)."""
        return self.changes_bragg or self.ice_fraction > 0

    @property
    def enabled(self) -> bool:
        return self.per_frame or self.bad_pixels


#: CXLS-like defaults (every value an ASSUMPTION; see the module docstring).
CXLS_LIKE = Nuisances(pulse_sigma=0.1, crystal_size_sigma=0.3, beam_profile="gaussian", crystal_offset_sigma_m=2.5e-6,
                      extra_crystals_mean=0.1, ice_fraction=0.05, ice_cubic_fraction=0.3, ice_spotty_fraction=0.5,
                      ice_thickness_m=1e-6, ice_thickness_sigma=0.5, beam_centre_sigma_px=0.3,
                      dead_pixel_fraction=1e-4, hot_pixel_fraction=2e-5, noisy_pixel_fraction=1e-4)


@dataclass(frozen=True)
class FrameNuisances:
    """One frame's nuisance values. Per crystal (length n_crystals, 0 on empty frames): crystal_size_m (m),
    offset_m ((x, y) from the beam axis, m), overlap (fluence factor, 1 = on-axis flat-top), orientation
    ((w, x, y, z) quaternion, None = the frame's own orientation stream, used for the first crystal)."""

    pulse_scale: float = 1.0
    crystal_size_m: tuple[float, ...] = ()
    offset_m: tuple[tuple[float, float], ...] = ()
    overlap: tuple[float, ...] = ()
    ice_kind: str = "none"
    ice_spotty: bool = False
    ice_thickness_m: float = 0.0
    beam_centre_px: tuple[float, float] = (0.0, 0.0)
    extra_orientations: tuple = field(default=(), repr=False)

    @property
    def n_crystals(self) -> int:
        return len(self.crystal_size_m)

    @property
    def shifted(self) -> bool:
        return self.beam_centre_px != (0.0, 0.0)


def lognormal(z: float, sigma: float, mean_one: bool) -> float:
    """exp(sigma z - sigma^2/2) (mean 1) or exp(sigma z) (median 1); exactly 1.0 for sigma = 0."""
    if sigma == 0:
        return 1.0
    return float(math.exp(sigma * z - (sigma ** 2 / 2 if mean_one else 0.0)))


def gaussian_overlap(offset_m: tuple[float, float], crystal_size_m: float, beam_radius_m: float) -> float:
    """Mean fluence over an L x L crystal at ``offset_m`` (x, y) from the axis of a round Gaussian beam of
    sigma_b = r / sqrt(2), relative to the peak (= flat-top N / (pi r^2)) fluence (formula: module docstring)."""
    sigma = beam_radius_m / math.sqrt(2.0)
    half = crystal_size_m / 2
    factor = sigma * math.sqrt(2 * math.pi) / crystal_size_m
    return float(np.prod([factor * (ndtr((u + half) / sigma) - ndtr((u - half) / sigma)) for u in offset_m]))


def draw_frame_nuisances(nuisances: Nuisances, seed: int, dataset: str, frame_index: int, crystal_size_m: float,
                         beam_radius_m: float, crystal=None) -> FrameNuisances:
    """Frame ``frame_index``'s values; ``crystal`` None draws an empty frame (no crystal), otherwise a
    :class:`~cxlspeaks.crystal.Crystal` whose ``random_orientations`` gives the extra crystals' orientations.

    Empty frames are numbered after the crystal frames (index frames + k), so no two frames share a stream.
    """
    n = nuisances

    def rng(name: str) -> np.random.Generator:
        return nuisance_rng(seed, dataset, frame_index, name)

    pulse = lognormal(rng("pulse").standard_normal(), n.pulse_sigma, mean_one=True) if n.pulse_sigma else 1.0
    sizes, offsets, overlaps, orientations = [], [], [], []
    if crystal is not None:
        r = rng("crystals")
        n_crystals = 1 + (int(r.poisson(n.extra_crystals_mean)) if n.extra_crystals_mean > 0 else 0)
        for c in range(n_crystals):
            z_size, z_x, z_y = r.standard_normal(3)
            size = crystal_size_m * lognormal(z_size, n.crystal_size_sigma, mean_one=False)
            offset = (n.crystal_offset_sigma_m * z_x, n.crystal_offset_sigma_m * z_y)
            sizes.append(size)
            offsets.append((float(offset[0]), float(offset[1])))
            overlaps.append(gaussian_overlap(offset, size, beam_radius_m) if n.beam_profile == "gaussian" else 1.0)
            if c > 0:
                q, astar = crystal.random_orientations(r, 1)
                orientations.append((q[0], astar[0]))
    ice_kind, spotty, thickness = "none", False, 0.0
    if n.ice_fraction > 0:
        r = rng("ice")
        u_ice, u_cubic, u_spotty = r.random(3)
        z = r.standard_normal()
        if u_ice < n.ice_fraction:
            ice_kind = "cubic" if u_cubic < n.ice_cubic_fraction else "hexagonal"
            spotty = bool(u_spotty < n.ice_spotty_fraction)
            thickness = n.ice_thickness_m * lognormal(z, n.ice_thickness_sigma, mean_one=False)
    centre = (0.0, 0.0)
    if n.beam_centre_sigma_px > 0:
        dx, dy = n.beam_centre_sigma_px * rng("beam_centre").standard_normal(2)
        centre = (float(dx), float(dy))
    return FrameNuisances(pulse_scale=pulse, crystal_size_m=tuple(sizes), offset_m=tuple(offsets),
                          overlap=tuple(overlaps), ice_kind=ice_kind, ice_spotty=spotty, ice_thickness_m=thickness,
                          beam_centre_px=centre, extra_orientations=tuple(orientations))


def shifted_geometry(geometry, beam_centre_px: tuple[float, float]):
    """The detector translated by -(dx, dy) pixels in lab x, y (each panel's corner_x/corner_y, in its pixels), so
    the direct beam, and every ray with it, lands (dx, dy) pixels further along x and y; the same object for (0, 0).
    """
    dx, dy = beam_centre_px
    if dx == 0 and dy == 0:
        return geometry
    panels = [dataclasses.replace(p, corner_x=p.corner_x - dx, corner_y=p.corner_y - dy) for p in geometry.panels]
    return dataclasses.replace(geometry, panels=panels)


#: Per-frame values written to /entry/data/nuisances/<name> and the manifest (name -> (dtype, units/description)).
RECORDED = {
    "pulse_scale": (np.float32, "pulse photons / the dataset's n_photons (log-normal, mean 1)"),
    "water_scale": (np.float32, "expected water / background image: pulse_scale x water thickness factor"),
    "n_crystals": (np.uint8, "crystals in the beam (0 on empty frames)"),
    "crystal_size_m": (np.float32, "edge of the first crystal (m); 0 on empty frames"),
    "crystal_offset_x_m": (np.float32, "first crystal's x from the beam axis (m)"),
    "crystal_offset_y_m": (np.float32, "first crystal's y from the beam axis (m)"),
    "overlap": (np.float32, "first crystal's mean fluence / the flat-top fluence N / (pi r^2)"),
    "ice_kind": (np.uint8, "0 none, 1 hexagonal (Ih), 2 cubic (Ic)"),
    "ice_spotty": (np.uint8, "1: ice rings of random spots, 0: smooth rings"),
    "ice_thickness_m": (np.float32, "ice thickness (m), 0 without ice"),
    "ice_photons": (np.float32, "expected ice photons on the detector"),
    "beam_centre_dx_px": (np.float32, "direct-beam shift along lab x (pixels)"),
    "beam_centre_dy_px": (np.float32, "direct-beam shift along lab y (pixels)"),
}


def recorded_values(values: FrameNuisances, water_scale: float, ice_photons: float) -> dict[str, float]:
    """The :data:`RECORDED` values of one frame."""
    first = values.n_crystals > 0
    return {"pulse_scale": values.pulse_scale, "water_scale": water_scale, "n_crystals": values.n_crystals,
            "crystal_size_m": values.crystal_size_m[0] if first else 0.0,
            "crystal_offset_x_m": values.offset_m[0][0] if first else 0.0,
            "crystal_offset_y_m": values.offset_m[0][1] if first else 0.0,
            "overlap": values.overlap[0] if first else 0.0, "ice_kind": ICE_KINDS.index(values.ice_kind),
            "ice_spotty": int(values.ice_spotty), "ice_thickness_m": values.ice_thickness_m,
            "ice_photons": ice_photons, "beam_centre_dx_px": values.beam_centre_px[0],
            "beam_centre_dy_px": values.beam_centre_px[1]}
