"""Bragg peaks of a still crystal in a polychromatic pulse, integrated analytically per reflection.

This replaces CrystFEL pattern_sim's per-pixel sampling of the lattice transform (which, for a 10 um crystal,
samples a lobe far narrower than its 4 x 4 sub-pixel step and so returns random spikes) by each reflection's
integrated intensity, placed where its diffracted ray meets the detector (PHYSICS.md, "Bragg peaks").

For reflection h with lab reciprocal vector g = A* h (1/m) and k_in = z-hat / lambda:

* Ewald condition: g is in diffraction at lambda_g = -2 g_z / |g|^2 (g_z < 0); its relative wavelength offset
  from the centre of the spectrum is eps_g = lambda_g / lambda_0 - 1.
* Reciprocal-space profile of the reflection: a Gaussian of standard deviation
  sigma_r = sqrt((0.376 / L)^2 + (|g| eta)^2), where 0.376 / L matches the FWHM 0.886 / L of a cube's shape
  transform (edge L) and eta is the mosaic spread (standard deviation, rad). Moving the Ewald sphere by
  dk changes the excitation error by (g_z / k) dk, so in relative wavelength the profile has standard deviation
  sigma_eps = sigma_r / |g_z|.
* Spectral overlap rho (per unit relative wavelength): for a tophat of full width b,
  rho = [Phi_N((b/2 - eps_g) / sigma_eps) - Phi_N((-b/2 - eps_g) / sigma_eps)] / b, where the bracket is the
  partiality; for a Gaussian spectrum of FWHM b, rho = N(eps_g; 0, sqrt(sigma_s^2 + sigma_eps^2)), sigma_s = b/2.3548.
* Laue integrated intensity (photons): N_hkl = Phi r_e^2 P |F_hkl|^2 V_xtal lambda_g^3 rho / (2 V_cell^2 sin^2 theta)
  with Phi = N_photons / (pi r_beam^2), sin theta = lambda_g |g| / 2 and P the polarisation factor of k_out.
  For a tophat this is PHYSICS.md's N_hkl = Phi r_e^2 P |F|^2 V lambda^3 / (2 b V_cell^2 sin^2 theta) * partiality
  (its worked example, 0.737 photons for 1IC6 (13, 8, -6), is a test).
* Spot centre: the ray along k_out = g + z-hat / lambda_g meets the panel (ray-plane intersection).
* Spot footprint: an isotropic 2-D Gaussian of standard deviation sqrt(sigma_psf^2 + (D res sigma_div)^2) pixels
  (D the crystal-to-spot distance, sigma_div = divergence FWHM / 2.3548), integrated exactly over each pixel with
  the error function and normalised to N_hkl over its box; pixels in gaps or outside the spot's panel record
  nothing, so a peak's detected photons can be below N_hkl.

Not modelled (documented differences): radial streaking by bandwidth x mosaicity, the 1/cos(alpha) stretch of
spots at oblique incidence, and the wavelength dependence of the spot direction across a reflection's profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtr

from ..constants import CLASSICAL_ELECTRON_RADIUS_M, FWHM_PER_SIGMA
from ..crystal import Crystal
from ..geometry import Geometry, polarisation_factor
from .beam import Beam

#: Standard deviation of a cube's shape transform in units of 1 / edge length (FWHM 0.886 / L).
SHAPE_TRANSFORM_SIGMA_PER_INV_L = 0.886 / FWHM_PER_SIGMA

PEAK_COLUMNS = ("fs", "ss", "photons", "photons_total", "h", "k", "l", "wavelength_A", "partiality", "panel")


@dataclass(frozen=True)
class CrystalSample:
    """The crystal in the beam: a cube of edge ``size_m`` with Gaussian mosaic spread ``mosaicity_rad`` (FWHM)."""

    size_m: float = 10e-6
    mosaicity_rad: float = 0.0

    def __post_init__(self) -> None:
        if not (self.size_m > 0 and math.isfinite(self.size_m)):
            raise ValueError(f"crystal size_m must be positive, got {self.size_m!r}")
        if not 0 <= self.mosaicity_rad < 0.1:
            raise ValueError(f"crystal mosaicity_rad must be in [0, 0.1), got {self.mosaicity_rad!r}")

    @property
    def volume_m3(self) -> float:
        return self.size_m ** 3


@dataclass
class BraggFrame:
    """One simulated still: expected photons per pixel (float32, (ss, fs)), the true peaks and the orientation.

    ``peaks`` has one row per reflection whose ray meets a panel: fs, ss (raw convention, pixel centre at the
    integer index), photons (expected photons on good pixels), photons_total (N_hkl), h, k, l, wavelength_A
    (lambda_g), partiality (rho * bandwidth), panel (index). Rows are sorted by photons, strongest first.
    """

    image: np.ndarray
    peaks: pd.DataFrame
    astar_bstar_cstar: np.ndarray


class BraggSimulator:
    """Vectorised analytic Bragg simulator for one geometry, crystal, beam and sample (PHYSICS.md)."""

    def __init__(self, geometry: Geometry, crystal: Crystal, beam: Beam, sample: CrystalSample = CrystalSample(),
                 spot_sigma_px: float = 0.5, box_sigmas: float = 4.0, min_photons: float = 1e-6):
        if not spot_sigma_px > 0:
            raise ValueError(f"spot_sigma_px must be positive, got {spot_sigma_px}")
        self.geometry = geometry
        self.crystal = crystal
        self.beam = beam
        self.sample = sample
        self.spot_sigma_px = spot_sigma_px
        self.box_sigmas = box_sigmas
        self.min_photons = min_photons
        self._hkl = crystal.hkl.astype(np.float64)
        self._mask_flat = geometry.mask.ravel()
        self._shape = geometry.shape
        self._panel_bounds = np.array([[p.min_fs, p.max_fs, p.min_ss, p.max_ss] for p in geometry.panels])
        self._panel_res = np.array([p.res for p in geometry.panels])

    # ------------------------------------------------------------------ reflections
    def excited_reflections(self, astar_bstar_cstar: np.ndarray) -> pd.DataFrame:
        """Reflections in diffraction for an orientation, with N_hkl and spot centres (not yet rendered)."""
        beam = self.beam
        lam0 = beam.wavelength_m
        g = self._hkl @ np.asarray(astar_bstar_cstar, dtype=float).T          # (N, 3), 1/m
        g2 = np.einsum("ij,ij->i", g, g)
        gz = g[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            lam_g = np.where(gz < 0, -2 * gz / g2, np.nan)
        eps = lam_g / lam0 - 1
        sigma_r = np.sqrt((SHAPE_TRANSFORM_SIGMA_PER_INV_L / self.sample.size_m) ** 2
                          + g2 * (self.sample.mosaicity_rad / FWHM_PER_SIGMA) ** 2)
        with np.errstate(divide="ignore"):
            sigma_eps = sigma_r / np.abs(gz)
        half = beam.bandwidth / 2
        if beam.spectrum == "tophat":
            reach = half + 6 * sigma_eps
        else:
            reach = 6 * np.sqrt(beam.spectrum_sigma ** 2 + sigma_eps ** 2)
        sel = np.flatnonzero(np.abs(eps) < reach)
        g, g2, lam_g, eps, sigma_eps = g[sel], g2[sel], lam_g[sel], eps[sel], sigma_eps[sel]
        if beam.spectrum == "tophat":
            rho = (ndtr((half - eps) / sigma_eps) - ndtr((-half - eps) / sigma_eps)) / beam.bandwidth
        else:
            s2 = beam.spectrum_sigma ** 2 + sigma_eps ** 2
            rho = np.exp(-eps ** 2 / (2 * s2)) / np.sqrt(2 * np.pi * s2)
        k_out = g.copy()
        k_out[:, 2] += 1.0 / lam_g
        photons = laue_integrated_photons(
            fluence_per_m2=beam.fluence_per_m2, polarisation=polarisation_factor(k_out, beam.polarisation_fraction),
            f2=self.crystal.intensity[sel], crystal_volume_m3=self.sample.volume_m3,
            cell_volume_m3=self.crystal.volume_m3, wavelength_m=lam_g, sin2_theta=lam_g ** 2 * g2 / 4,
            spectral_overlap=rho)
        fs, ss, panel = self.geometry.ray_to_pixel(k_out)
        keep = (panel >= 0) & (photons >= self.min_photons)
        hkl = self.crystal.hkl[sel][keep]
        return pd.DataFrame({
            "fs": fs[keep], "ss": ss[keep], "photons_total": photons[keep],
            "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
            "wavelength_A": lam_g[keep] * 1e10, "partiality": rho[keep] * beam.bandwidth,
            "panel": panel[keep], "distance_m": self._distance_to_spot_m(fs[keep], ss[keep]),
        })

    def _distance_to_spot_m(self, fs: np.ndarray, ss: np.ndarray) -> np.ndarray:
        """Crystal-to-spot distance (m), from the nearest pixel centre (sets the divergence footprint)."""
        pos = self.geometry.pixel_positions_m
        ss_i = np.clip(np.rint(ss).astype(int), 0, self._shape[0] - 1)
        fs_i = np.clip(np.rint(fs).astype(int), 0, self._shape[1] - 1)
        return np.linalg.norm(pos[ss_i, fs_i], axis=1)

    # ------------------------------------------------------------------ rendering
    def spot_sigma_for(self, distance_m: np.ndarray, res: np.ndarray) -> np.ndarray:
        """Footprint standard deviation (pixels): sqrt(sigma_psf^2 + (D res divergence / 2.3548)^2)."""
        div_sigma = self.beam.divergence_rad / FWHM_PER_SIGMA
        return np.sqrt(self.spot_sigma_px ** 2 + (distance_m * res * div_sigma) ** 2)

    def render(self, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Expected-photon image of the spots in ``table`` and each spot's photons on good pixels."""
        n_ss, n_fs = self._shape
        image = np.zeros(n_ss * n_fs, dtype=np.float32)
        n = len(table)
        if n == 0:
            return image.reshape(self._shape), np.zeros(0)
        panel = table["panel"].to_numpy()
        sigma = self.spot_sigma_for(table["distance_m"].to_numpy(), self._panel_res[panel])
        half = int(math.ceil(self.box_sigmas * sigma.max()))
        offsets = np.arange(-half, half + 1)
        fs = table["fs"].to_numpy()
        ss = table["ss"].to_numpy()
        fs_idx = np.rint(fs).astype(np.int64)[:, None] + offsets          # (n, B)
        ss_idx = np.rint(ss).astype(np.int64)[:, None] + offsets
        w_fs = _pixel_integrals(fs_idx, fs, sigma)
        w_ss = _pixel_integrals(ss_idx, ss, sigma)
        bounds = self._panel_bounds[panel]
        ok_fs = (fs_idx >= bounds[:, [0]]) & (fs_idx <= bounds[:, [1]])
        ok_ss = (ss_idx >= bounds[:, [2]]) & (ss_idx <= bounds[:, [3]])
        weights = (w_ss[:, :, None] * w_fs[:, None, :]) * table["photons_total"].to_numpy()[:, None, None]
        flat = ss_idx[:, :, None] * n_fs + fs_idx[:, None, :]
        valid = ok_ss[:, :, None] & ok_fs[:, None, :]
        valid[valid] = self._mask_flat[flat[valid]]
        weights = np.where(valid, weights, 0.0)
        np.add.at(image, flat[valid], weights[valid].astype(np.float32))
        return image.reshape(self._shape), weights.sum(axis=(1, 2))

    def simulate(self, astar_bstar_cstar: np.ndarray) -> BraggFrame:
        """Expected-photon image and true peak list for one crystal orientation (lab reciprocal axes, 1/m)."""
        table = self.excited_reflections(astar_bstar_cstar)
        image, detected = self.render(table)
        table.insert(2, "photons", detected)
        table = table.drop(columns="distance_m")
        table = table[table["photons"] > 0].sort_values("photons", ascending=False, kind="stable")
        return BraggFrame(image=image, peaks=table.reset_index(drop=True)[list(PEAK_COLUMNS)],
                          astar_bstar_cstar=np.asarray(astar_bstar_cstar, dtype=float))


def laue_integrated_photons(fluence_per_m2, polarisation, f2, crystal_volume_m3, cell_volume_m3, wavelength_m,
                            sin2_theta, spectral_overlap):
    """Integrated photons of a reflection in a polychromatic still (Laue integrated intensity).

    N = Phi r_e^2 P |F|^2 V_xtal lambda^3 rho / (2 V_cell^2 sin^2 theta), with rho the spectral overlap per unit
    relative wavelength (partiality / bandwidth for a tophat). Arguments in SI units, |F|^2 in electrons^2.
    """
    return (fluence_per_m2 * CLASSICAL_ELECTRON_RADIUS_M ** 2 * polarisation * f2 * crystal_volume_m3
            * wavelength_m ** 3 * spectral_overlap / (2 * cell_volume_m3 ** 2 * sin2_theta))


def _pixel_integrals(pixel_index: np.ndarray, centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Fraction of a 1-D Gaussian (centre, sigma; raw convention) in each pixel, normalised over the box."""
    lo = (pixel_index - 0.5 - centre[:, None]) / sigma[:, None]
    w = ndtr(lo + 1.0 / sigma[:, None]) - ndtr(lo)
    return w / w.sum(axis=1, keepdims=True)
