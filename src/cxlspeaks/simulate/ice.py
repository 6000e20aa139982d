"""Ice powder rings: hexagonal (Ih) and cubic (Ic) ice, smooth or spotty, in expected photons per pixel.

**Lattices.** Ice Ih: P6_3/mmc, a = 4.500 A, c = 7.338 A, oxygen on 4f (1/3, 2/3, z), (2/3, 1/3, z + 1/2),
(2/3, 1/3, -z), (1/3, 2/3, 1/2 - z) with z = 1/16 (ideal tetrahedra). These cell constants reproduce the ice-ring
list of MX software, 3.897 (100), 3.669 (002), 3.441 (101), 2.671 (102), 2.249 (110), 2.072 (103), 1.948 (200),
1.918 (112), 1.883 (201), 1.721 (202) A (e.g. the ``iceResolution`` list of Diamond's DAWN diffraction viewer; the
ice-ring masks of CrystFEL/Cheetah users use the same values); they match the lattice constants of Ih near 100 K
(Roettger et al. 1994, Acta Cryst. B50:644). Ice Ic: Fd-3m, a = 6.355 A (Dowell & Rinfret 1960, Nature 188:1144,
6.35 A), oxygen on the diamond sites (0, 0, 0) and (1/4, 1/4, 1/4) + fcc translations: rings 3.669 (111),
2.247 (220), 1.916 (311) A, on top of Ih's (002), (110) and (112). Hydrogens (disordered, 1 electron each) are left
out (ASSUMPTION); O scatters with the IT92 form factor (gemmi) and a Debye-Waller factor B = 1.5 A^2
(ASSUMPTION, the order of U_iso(O) ~ 0.02 A^2 of ice near 100 K).

**Ring photons** (powder diffraction, Warren 1969 "X-ray diffraction" ch. 4; Cullity's powder formula integrated
over the ring): a powder of thickness t in a pulse of N photons (fluence x illuminated volume = N t) sends

    N_ring = N t r_e^2 lambda^3 sum_ring |F_hkl|^2 / (4 V_cell^2 sin theta)

photons into the cone at 2 theta = 2 asin(lambda / 2 d) (the sum runs over every hkl of the ring, so it holds the
multiplicity), times the polarisation factor P of each direction. Pixel i of solid angle dOmega_i at 2theta_i gets

    I_i = N_ring P_i g(2theta_i - 2theta_ring) dOmega_i / (2 pi sin 2theta_i),

g a normalised Gaussian in 2 theta of variance sigma^2 = sigma_Scherrer^2 + sigma_bw^2 + sigma_div^2 + sigma_px^2:
Scherrer FWHM 0.94 lambda / (L cos theta) for grains of size L; the bandwidth's 2 tan theta sigma_lambda
(sigma_lambda = b / sqrt(12) for a tophat of full width b, FWHM / 2.3548 for a Gaussian); the divergence FWHM /
2.3548; and a pixel's angular size / sqrt(12) (so point sampling at pixel centres keeps the ring's photons).

**Spotty ice** (few large grains): a ring is K ~ Poisson(mu) spots at uniform random azimuths phi_k, each of
N_ring / mu photons spread over azimuth as a Gaussian of sigma_phi = sigma / sin 2theta (round spots as wide as the
ring); the 1 / (2 pi) of the smooth ring becomes sum_k g_phi(phi_i - phi_k) / mu, whose mean over the draw is again
1 / (2 pi). Every spot is listed (fs, ss where its centre ray meets the detector, photons = N_ring P / mu, d) and
labelled ice, never Bragg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from ..constants import CLASSICAL_ELECTRON_RADIUS_M, FWHM_PER_SIGMA
from ..geometry import Geometry, polarisation_factor
from .beam import Beam

ICE_IH_A_A, ICE_IH_C_A, ICE_IH_Z = 4.500, 7.338, 1.0 / 16.0
ICE_IC_A_A = 6.355
ICE_B_A2 = 1.5
SCHERRER_K = 0.94
#: The MX ice-ring list (A) that the Ih cell reproduces (see the module docstring).
ICE_RING_LIST_A = (3.897, 3.669, 3.441, 2.671, 2.249, 2.072, 1.948, 1.918, 1.883, 1.721)
SPOT_COLUMNS = ("fs", "ss", "photons", "d_A", "panel")


def _ih_cell() -> tuple[np.ndarray, np.ndarray]:
    a, c, z = ICE_IH_A_A, ICE_IH_C_A, ICE_IH_Z
    cell = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c]])
    sites = np.array([[1 / 3, 2 / 3, z], [2 / 3, 1 / 3, z + 0.5], [2 / 3, 1 / 3, -z], [1 / 3, 2 / 3, 0.5 - z]])
    return cell, sites


def _ic_cell() -> tuple[np.ndarray, np.ndarray]:
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    sites = np.concatenate([fcc, fcc + 0.25])
    return np.eye(3) * ICE_IC_A_A, sites


@lru_cache(maxsize=8)
def ice_rings(kind: str, d_min_A: float = 1.5) -> pd.DataFrame:
    """The rings of ``kind`` ("hexagonal" or "cubic") with d >= ``d_min_A``: columns d_A, f2_sum (sum over the
    ring's hkl of |F|^2, electrons^2 per cell), hkl (one index triple, text), cell_volume_A3; strongest d first.

    Raises ValueError for another kind.
    """
    if kind not in ("hexagonal", "cubic"):
        raise ValueError(f"ice kind must be 'hexagonal' or 'cubic', got {kind!r}")
    import gemmi

    cell, sites = _ih_cell() if kind == "hexagonal" else _ic_cell()
    recip = np.linalg.inv(cell).T                       # rows a*, b*, c* (1/A)
    n = int(math.ceil(max(np.linalg.norm(cell, axis=1)) / d_min_A)) + 1
    grid = np.arange(-n, n + 1)
    hkl = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    g = np.linalg.norm(hkl @ recip, axis=1)
    keep = g <= 1 / d_min_A
    hkl, g = hkl[keep], g[keep]
    stol2 = (g / 2) ** 2
    f_o = np.array([gemmi.Element("O").it92.calculate_sf(float(s)) for s in stol2]) * np.exp(-ICE_B_A2 * stol2)
    f2 = (f_o * np.abs(np.exp(2j * np.pi * hkl @ sites.T).sum(axis=1))) ** 2
    d = np.round(1 / g, 4)
    table = pd.DataFrame({"d_A": d, "f2": f2, "hkl": [" ".join(map(str, r)) for r in hkl]})
    rings = table[table["f2"] > 1e-6 * table["f2"].max()].groupby("d_A", sort=True)
    out = pd.DataFrame({"d_A": rings["f2"].sum().index, "f2_sum": rings["f2"].sum().to_numpy(),
                        "hkl": rings["hkl"].max().to_numpy()})
    out["cell_volume_A3"] = abs(np.linalg.det(cell))
    return out.sort_values("d_A", ascending=False, kind="stable").reset_index(drop=True)


def ring_photons(rings: pd.DataFrame, beam: Beam, thickness_m: float) -> np.ndarray:
    """N_ring (photons, before polarisation) per ring: N t r_e^2 lambda^3 sum|F|^2 / (4 V_cell^2 sin theta)."""
    lam = beam.wavelength_m
    sin_theta = lam / (2 * rings["d_A"].to_numpy() * 1e-10)
    v_cell = rings["cell_volume_A3"].to_numpy() * 1e-30
    return (beam.n_photons * thickness_m * CLASSICAL_ELECTRON_RADIUS_M ** 2 * lam ** 3
            * rings["f2_sum"].to_numpy() / (4 * v_cell ** 2 * sin_theta))


@dataclass(frozen=True)
class IceFrame:
    """A frame's ice: expected photons (float32, (ss, fs)) and, for spotty ice, the spots (:data:`SPOT_COLUMNS`)."""

    image: np.ndarray
    spots: pd.DataFrame


class IceSimulator:
    """Ice rings on one detector for one beam (see the module docstring); ``crystallite_size_m`` sets the width."""

    def __init__(self, geometry: Geometry, beam: Beam, crystallite_size_m: float = 1e-7,
                 spots_per_ring: float = 20.0):
        if not (crystallite_size_m > 0 and spots_per_ring > 0):
            raise ValueError("ice crystallite_size_m and spots_per_ring must be positive")
        self.geometry, self.beam = geometry, beam
        self.crystallite_size_m, self.spots_per_ring = crystallite_size_m, spots_per_ring
        self._two_theta = geometry.two_theta_rad
        pos = geometry.pixel_positions_m
        self._phi = np.arctan2(pos[..., 1], pos[..., 0])
        self._weight = (geometry.polarisation_factors(beam.polarisation_fraction) * geometry.solid_angles_sr
                        / (2 * np.pi * np.sin(np.maximum(self._two_theta, 1e-12))))
        self._weight[~geometry.mask] = 0.0
        pixel_m = 1.0 / geometry.panels[0].res
        self._sigma_px = pixel_m / geometry.clen_m / math.sqrt(12)
        d_min = max(0.5, geometry.d_min_A(beam.photon_energy_ev, beam.bandwidth) * 0.9)
        self._d_min = round(d_min, 2)

    def ring_sigma_rad(self, two_theta: np.ndarray) -> np.ndarray:
        """Standard deviation (rad) of a ring in 2 theta at ``two_theta`` (module docstring)."""
        beam, theta = self.beam, np.asarray(two_theta) / 2
        scherrer = SCHERRER_K * beam.wavelength_m / (self.crystallite_size_m * np.cos(theta)) / FWHM_PER_SIGMA
        sigma_lambda = beam.bandwidth / math.sqrt(12) if beam.spectrum == "tophat" else beam.spectrum_sigma
        bandwidth = 2 * np.tan(theta) * sigma_lambda
        return np.sqrt(scherrer ** 2 + bandwidth ** 2 + (beam.divergence_rad / FWHM_PER_SIGMA) ** 2
                       + self._sigma_px ** 2)

    def simulate(self, kind: str, thickness_m: float, spotty: bool = False,
                 rng: np.random.Generator | None = None) -> IceFrame:
        """Expected ice photons for a layer of ``thickness_m``; ``spotty`` draws the spots from ``rng``."""
        rings = ice_rings(kind, self._d_min)
        sin_theta = self.beam.wavelength_m / (2 * rings["d_A"].to_numpy() * 1e-10)
        rings = rings[sin_theta < 1].reset_index(drop=True)
        photons = ring_photons(rings, self.beam, thickness_m)
        two_theta_ring = 2 * np.arcsin(self.beam.wavelength_m / (2 * rings["d_A"].to_numpy() * 1e-10))
        sigmas = self.ring_sigma_rad(two_theta_ring)
        image = np.zeros(self.geometry.shape, dtype=np.float64)
        spots = []
        for n_ring, tt, sigma, d in zip(photons, two_theta_ring, sigmas, rings["d_A"]):
            near = np.abs(self._two_theta - tt) < 6 * sigma
            if not near.any():
                continue
            delta = self._two_theta[near] - tt
            radial = np.exp(-delta ** 2 / (2 * sigma ** 2)) / (sigma * math.sqrt(2 * math.pi))
            azimuthal = np.ones_like(delta)
            if spotty:
                if rng is None:
                    raise ValueError("spotty ice needs a random generator")
                phi_k = rng.random(rng.poisson(self.spots_per_ring)) * 2 * np.pi
                sigma_phi = sigma / math.sin(tt)
                dphi = np.angle(np.exp(1j * (self._phi[near][:, None] - phi_k[None, :])))
                azimuthal = (np.exp(-dphi ** 2 / (2 * sigma_phi ** 2)).sum(axis=1)
                             * 2 * np.pi / (sigma_phi * math.sqrt(2 * np.pi) * self.spots_per_ring))
                spots.append(self._spot_rows(phi_k, tt, n_ring, d))
            image[near] += n_ring * self._weight[near] * radial * azimuthal
        table = pd.concat(spots, ignore_index=True) if spots else pd.DataFrame({c: [] for c in SPOT_COLUMNS})
        return IceFrame(image=image.astype(np.float32), spots=table)

    def _spot_rows(self, phi: np.ndarray, two_theta: float, n_ring: float, d_A: float) -> pd.DataFrame:
        directions = np.column_stack([np.sin(two_theta) * np.cos(phi), np.sin(two_theta) * np.sin(phi),
                                      np.full(len(phi), np.cos(two_theta))])
        fs, ss, panel = self.geometry.ray_to_pixel(directions) if len(phi) else (np.zeros(0),) * 3
        photons = n_ring * polarisation_factor(directions, self.beam.polarisation_fraction) / self.spots_per_ring
        keep = np.asarray(panel) >= 0
        return pd.DataFrame({"fs": fs[keep], "ss": ss[keep], "photons": photons[keep], "d_A": d_A,
                             "panel": np.asarray(panel)[keep]})
