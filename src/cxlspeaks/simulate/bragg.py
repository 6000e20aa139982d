"""Bragg peaks of a still crystal in a polychromatic pulse, integrated per reflection over the spectrum.

Each reflection's lattice transform integrated exactly, instead of pattern_sim's per-pixel samples (random spikes
for a 10 um crystal's narrow lobes); PHYSICS.md, "Bragg peaks" and "Partial reflections".

For reflection h with lab reciprocal vector g = A* h (1/m), k_in = z-hat / lambda and relative wavelength
eps = lambda / lambda_0 - 1 (the spectrum S(eps), integral 1; :mod:`cxlspeaks.simulate.profile`):

* Excitation: at wavelength lambda the Ewald sphere passes at s(eps) = |g + z/lambda| - 1/lambda from g, and
  collects the projection of the crystal's lattice transform on the sphere normal, p(s) (normalised; the exact
  projection of a parallelepiped crystal's shape transform, sinc^2-like tails of mean e_1 / (2 pi^2 s^2),
  convolved with the mosaic spread; Warren 1969 ch. 3, Kirian et al. 2010 Opt. Express 18:5713).
* Photons: dOmega dlambda = lambda^4 d^3q / (2 sin^2 theta) turns the diffracted photons
  int dlambda Phi_lambda int dOmega r_e^2 P |F|^2 L(q) into
      N_hkl = Phi r_e^2 |F_hkl|^2 (V_xtal / V_cell^2) int d eps S(eps) P(eps) lambda(eps)^2 p(s(eps)),
  with Phi = N_photons / (pi r_beam^2) and P the polarisation factor of k_out at that wavelength. For a flat
  spectrum and a sharp profile this is the Laue integrated intensity
  Phi r_e^2 P |F|^2 V lambda^4 S / (2 lambda_0 V_cell^2 sin^2 theta) (:func:`laue_integrated_photons` with
  rho = S lambda / lambda_0). The integral runs over Gauss-Legendre nodes in wavelength
  (:func:`~cxlspeaks.simulate.profile.wavelength_nodes`: 64 in atan(s / core width) within 10 core widths of
  the core and 16 on either side; 16 over the band for a reflection excited by its far tails alone).
* Spot: at each node the diffracted ray is k_out = k n + delta, n the direction of g + z / lambda (the sphere
  point nearest g) and delta the in-plane centroid of the lattice transform on the sphere
  (:func:`~cxlspeaks.simulate.profile.slice_offset`: zero for a face-on cube, about s sum_i (d_i - c_i n) / e_1
  in the tails, where the faces' truncation rods cross the sphere), met with the spot's panel plane. The spot
  is the superposition over the excited wavelengths: its centre is the photon-weighted mean of the node
  positions (``fs``, ``ss``), ``wavelength_A`` the photon-weighted mean wavelength, and the weighted spread
  (mostly radial) is the streak. A reflection whose Bragg wavelength lies outside the band is still excited by
  its tails inside the band, and is drawn where those wavelengths send it. With mosaicity the blocks turned into
  the sphere carry a partial: the spot leans by E[u | s] sin theta along (sin theta n - g_hat) / cos theta
  (:func:`~cxlspeaks.simulate.profile.mosaic_lean`).
* partiality = rho * bandwidth with rho = int S p d eps (per unit relative wavelength): for a tophat the
  fraction of the reflection's excitation that falls in the band.
* Footprint: each spot is a 2-D Gaussian of standard deviation sqrt(sigma_psf^2 + (D res sigma_div)^2) pixels
  (D the crystal-to-spot distance, sigma_div = divergence FWHM / 2.3548), integrated exactly over each pixel with
  the error function and normalised to N_hkl over its box. A streak longer than ``streak_split_px`` (standard
  deviation) on a spot of at least ``streak_min_photons`` is drawn as three Gaussians, one per third of its
  photons along the wavelength, each widened by the spread within its third; other spots as one Gaussian widened
  along fs and ss by the streak's variance along each (centre and photons exact either way). Pixels in gaps or
  outside the spot's panel record nothing, so a peak's detected photons can be below N_hkl.
* A reflection owns the lattice transform within its reciprocal cell (|x_i| <= 1/2, excitation error below
  1 / (2 max_i |n . a_i|)); farther out the transform belongs to its neighbours (as in the brute-force sum and
  pattern_sim's nearest-hkl lookup).
* Reflections are kept when an upper bound of their photons (the profile's tail bound at the nearest
  excitation error in the band) reaches ``min_photons``; those left out carry less than that each.

Checked against a brute-force Monte-Carlo lattice sum and CrystFEL pattern_sim 0.10.2 (tests/test_partials.py).
Not modelled: the oblique-incidence stretch of spots, a slice's in-plane spread (only its centroid), the
sphere's curvature across the lobe.
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
from .beam import Beam, Spectrum
from .profile import (CORE_WIDTHS, DEFAULT_NODES, SIDE_NODES, core_width, excitation_error,
                      mosaic_lean, profile_density, shape_coefficients, slice_offset, wavelength_nodes)

PEAK_COLUMNS = ("fs", "ss", "photons", "photons_total", "h", "k", "l", "wavelength_A", "partiality", "panel")
#: Sub-spots a long streak is drawn with (thirds of its photons along the wavelength).
STREAK_PARTS = 3
#: Wavelength nodes of reflections excited by the smooth 1/s^2 tail alone (band > 30 core widths away).
TAIL_NODES = 16


@dataclass(frozen=True)
class CrystalSample:
    """The crystal in the beam: edges of ``size_m`` along a, b, c (a cube for orthogonal cells; volume size^3),
    Gaussian mosaic spread ``mosaicity_rad`` (FWHM of the orientation spread about each axis)."""

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

    ``peaks`` has one row per reflection whose spot centre lies on a panel: fs, ss (raw convention, pixel centre
    at the integer index; photon-weighted over the excited wavelengths), photons (expected photons on good
    pixels), photons_total (N_hkl), h, k, l, wavelength_A (photon-weighted excited wavelength), partiality
    (rho * bandwidth), panel (index). Rows are sorted by photons, strongest first.
    """

    image: np.ndarray
    peaks: pd.DataFrame
    astar_bstar_cstar: np.ndarray


class BraggSimulator:
    """Vectorised Bragg simulator for one geometry, crystal, beam and sample (module docstring, PHYSICS.md).

    ``n_nodes``: wavelength nodes in a reflection's core window; ``min_photons``: reflections whose photon bound
    is below it are left out; ``streak_split_px``, ``streak_min_photons``: streaks with a larger standard
    deviation (pixels) on spots of at least that many photons are drawn as sub-spots.
    """

    def __init__(self, geometry: Geometry, crystal: Crystal, beam: Beam, sample: CrystalSample = CrystalSample(),
                 spot_sigma_px: float = 0.5, box_sigmas: float = 4.0, min_photons: float = 1e-3,
                 n_nodes: int = DEFAULT_NODES, streak_split_px: float = 0.5, streak_min_photons: float = 1.0):
        if not spot_sigma_px > 0:
            raise ValueError(f"spot_sigma_px must be positive, got {spot_sigma_px}")
        if not min_photons > 0:
            raise ValueError(f"min_photons must be positive, got {min_photons}")
        if int(n_nodes) < 8:
            raise ValueError(f"n_nodes must be >= 8, got {n_nodes}")
        self.geometry = geometry
        self.crystal = crystal
        self.beam = beam
        self.sample = sample
        self.spot_sigma_px = spot_sigma_px
        self.box_sigmas = box_sigmas
        self.min_photons = min_photons
        self.n_nodes = int(n_nodes)
        self.streak_split_px = streak_split_px
        self.streak_min_photons = streak_min_photons
        self.spectrum = Spectrum.from_beam(beam)
        self._hkl = crystal.hkl.astype(np.float64)
        self._mask_flat = geometry.mask.ravel()
        self._shape = geometry.shape
        self._panel_bounds = np.array([[p.min_fs, p.max_fs, p.min_ss, p.max_ss] for p in geometry.panels])
        self._panel_res = np.array([p.res for p in geometry.panels])
        self._max_two_theta = geometry.max_two_theta_rad()
        self._panel_corner = np.array([p.corner_m() for p in geometry.panels])
        self._panel_normal = np.array([np.cross(p.fs_m(), p.ss_m()) for p in geometry.panels])
        self._panel_inverse = np.array([np.linalg.pinv(np.c_[p.fs_m(), p.ss_m()]) for p in geometry.panels])
        self._panel_origin = np.array([[p.min_fs - 0.5, p.min_ss - 0.5] for p in geometry.panels])
        #: Phi r_e^2 V_xtal / V_cell^2 (photons per e^2 per m^-2 ... times lambda^2 p d eps).
        self._scale = (beam.fluence_per_m2 * CLASSICAL_ELECTRON_RADIUS_M ** 2 * sample.volume_m3
                       / crystal.volume_m3 ** 2)

    # ------------------------------------------------------------------ reflections
    def _candidates(self, g: np.ndarray, astar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reflections whose photon bound reaches ``min_photons``: (indices, core width (1/m), nearest |s| in the
        band (1/m)). The bound: S_max max(d eps/ds) lambda_max^2 times twice the mean tail
        (e1 / 2 pi^2)(1/s_near - 1/s_far) of the profile (its fringes at most double it), e1 along the Bragg
        direction with 5 % to spare for the band; a mosaic spread moves s_near in by 8 sigma."""
        lam0 = self.beam.wavelength_m
        spec = self.spectrum
        s_lo = excitation_error(g, 1.0 / (lam0 * (1 + spec.lo)))
        s_hi = excitation_error(g, 1.0 / (lam0 * (1 + spec.hi)))
        inside = (s_lo <= 0) & (s_hi >= 0)
        s_near = np.where(inside, 0.0, np.minimum(np.abs(s_lo), np.abs(s_hi)))
        # no cell reaches farther than sqrt(3) / (2 sigma_min(a, b, c)) from its lattice point
        cell_max = math.sqrt(3) / (2 * np.linalg.svd(self._real_axes, compute_uv=False).min())
        # and no spot leaves at less than 2 theta at the band's short end (+ 0.02 rad for tail offsets)
        sin_theta = 0.5 * lam0 * (1 + spec.lo) * np.sqrt(np.einsum("ij,ij->i", g, g))
        reach = np.sin(0.5 * min(self._max_two_theta + 0.02, np.pi))
        pre = np.flatnonzero((s_near < cell_max) & (sin_theta < reach))
        g, s_lo, s_hi, s_near, inside = g[pre], s_lo[pre], s_hi[pre], s_near[pre], inside[pre]
        s_far = np.maximum(np.abs(s_lo), np.abs(s_hi))
        g2 = np.einsum("ij,ij->i", g, g)
        n_ref = g + np.array([0.0, 0.0, 1.0 / lam0])
        n_ref /= np.linalg.norm(n_ref, axis=1, keepdims=True)
        sigma_m = np.sqrt(g2) * self.sample.mosaicity_rad / FWHM_PER_SIGMA
        shape = shape_coefficients(n_ref, astar, self.sample.size_m)
        width = core_width(shape, sigma_m)
        e1 = 1.05 * shape.e1
        s_eff = s_near - 8 * sigma_m
        lam_max = lam0 * (1 + spec.hi)
        gz = g[:, 2]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sg = s_lo - 8 * sigma_m - gz                   # d eps / ds is largest at the band's short end
            deps_ds = (sg * sg + g2 - gz * gz) / (2 * sg * sg) * lam_max ** 2 / lam0
            tail = e1 / np.pi ** 2 * (1 / s_eff - 1 / (s_far + 8 * sigma_m))
            p_peak = e1 / (np.pi ** 2 * s_eff ** 2)
            bound = np.minimum(spec.max_density * deps_ds * tail, p_peak)
            bound = np.where((s_eff <= 4 * width) | (sg <= 0) | ~np.isfinite(bound), np.inf, bound)
        photons_bound = self._scale * self.crystal.intensity[pre] * lam_max ** 2 * bound
        ok = np.flatnonzero(photons_bound >= self.min_photons)
        ok = ok[s_near[ok] < self._cell_half_width(n_ref[ok])]
        return pre[ok], width[ok], s_near[ok]

    def excited_reflections(self, astar_bstar_cstar: np.ndarray) -> pd.DataFrame:
        """Reflections excited by the spectrum for an orientation, with N_hkl, spot centres and streaks (not yet
        rendered); columns as :class:`BraggFrame` ``peaks`` plus distance_m and the streak's node table."""
        table, _ = self._excited(np.asarray(astar_bstar_cstar, dtype=float))
        return table

    def _excited(self, astar: np.ndarray) -> tuple[pd.DataFrame, dict]:
        self._real_axes = np.linalg.inv(astar).T                                       # columns a, b, c (m)
        g_all = self._hkl @ astar.T                                                   # (N, 3), 1/m
        sel, width, s_near = self._candidates(g_all, astar)
        core = s_near < CORE_WIDTHS * width      # the band reaches the core window: resolve the core
        groups = [self._integrate(astar, sel[rows], g_all[sel[rows]], width[rows], n_core, n_side)
                  for rows, n_core, n_side in ((core, self.n_nodes, SIDE_NODES), (~core, 0, TAIL_NODES))]
        n_nodes = max(grp["fs"].shape[1] for grp in groups)
        nodes = {key: np.concatenate([_pad(grp[key], n_nodes) for grp in groups]) for key in ("fs", "ss")}
        nodes["weight"] = np.concatenate([np.pad(grp["weight"], ((0, 0), (0, n_nodes - grp["weight"].shape[1])))
                                          for grp in groups])
        table = pd.concat([grp["table"] for grp in groups], ignore_index=True)
        return table, nodes

    def _integrate(self, astar, sel, g, width, n_core, n_side) -> dict:
        """Photons, spot centres and node positions of the reflections ``sel`` (rows of g) over K nodes."""
        beam, sample = self.beam, self.sample
        g2 = np.einsum("ij,ij->i", g, g)
        n_ref = g + np.array([0.0, 0.0, 1.0 / beam.wavelength_m])
        n_ref /= np.linalg.norm(n_ref, axis=1, keepdims=True)
        s, k, eps, weight_s, deps_ds = wavelength_nodes(g, beam.wavelength_m, self.spectrum, width, n_core,
                                                        n_side, s_cell=self._cell_half_width(n_ref))
        normals = g[:, None, :] + k[..., None] * np.array([0.0, 0.0, 1.0])            # (N, K, 3)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        shape = shape_coefficients(normals, astar, sample.size_m)
        cos_theta = np.sqrt(np.clip(1 - g2[:, None] / (4 * k * k), 0, 1))
        sigma_m = np.sqrt(g2)[:, None] * (sample.mosaicity_rad / FWHM_PER_SIGMA) * cos_theta
        profile = profile_density(s, shape, sigma_m)
        overlap = weight_s * self.spectrum.density(eps) * profile                      # S p ds
        overlap = np.where(np.isfinite(overlap) & (overlap > 0), overlap, 0.0)
        # the slice's centroid: the foot point g - s n on the sphere plus the in-plane offset of L(q - g) on the
        # plane q - g = -s n + q_perp (offset at -s: the profile is even, the offset odd in s)
        k_out = k[..., None] * normals + slice_offset(-s, normals, astar, shape, profile, sigma_m)
        if sample.mosaicity_rad > 0:           # the mosaic blocks turned into the sphere lean the spot
            sin_theta = np.sqrt(g2)[:, None] / (2 * k)
            g_hat = g / np.sqrt(g2)[:, None]
            lean = mosaic_lean(s, shape, sigma_m, profile) * sin_theta / cos_theta ** 2
            k_out += lean[..., None] * (sin_theta[..., None] * normals - g_hat[:, None, :])
        lam = 1.0 / k
        w = overlap * deps_ds * lam ** 2 * polarisation_factor(k_out, beam.polarisation_fraction)
        wsum = w.sum(axis=1)
        photons = self._scale * self.crystal.intensity[sel] * wsum
        wsum = np.where(wsum > 0, wsum, 1.0)
        _, _, panel = self.geometry.ray_to_pixel(np.einsum("nk,nkj->nj", w, k_out) / wsum[:, None])
        idx = np.flatnonzero((panel >= 0) & (photons >= self.min_photons))
        panel = panel[idx]
        node_fs, node_ss = self._on_panel(k_out[idx], panel)
        wk = w[idx] / wsum[idx, None]
        fs = (wk * node_fs).sum(axis=1)
        ss = (wk * node_ss).sum(axis=1)
        hkl = self.crystal.hkl[sel][idx]
        table = pd.DataFrame({
            "fs": fs, "ss": ss, "photons_total": photons[idx],
            "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
            "wavelength_A": (wk * lam[idx]).sum(axis=1) * 1e10,
            "partiality": overlap[idx].sum(axis=1) * beam.bandwidth,
            "panel": panel, "distance_m": self._distance_to_spot_m(fs, ss),
        })
        return {"table": table, "fs": node_fs, "ss": node_ss, "weight": wk}

    def _cell_half_width(self, normals: np.ndarray) -> np.ndarray:
        """Distance (1/m) from a reciprocal lattice point along ``normals`` (..., 3) to the edge of its cell
        |x_i| <= 1/2 (x_i = q . a_i): 1 / (2 max_i |n . a_i|), a_i the real axes."""
        return 0.5 / np.abs(normals @ self._real_axes).max(axis=-1)

    def _on_panel(self, k_out: np.ndarray, panel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (fs, ss) where rays along ``k_out`` (N, K, 3) meet the plane of each row's panel (N,)."""
        corner = self._panel_corner[panel][:, None, :]
        normal = self._panel_normal[panel][:, None, :]
        t = np.einsum("nij,nij->ni", corner, normal) / np.einsum("nkj,nij->nk", k_out, normal)
        rel = t[..., None] * k_out - corner                                          # (N, K, 3)
        uv = np.einsum("nab,nkb->nka", self._panel_inverse[panel], rel)
        origin = self._panel_origin[panel][:, None, :]
        return uv[..., 0] + origin[..., 0], uv[..., 1] + origin[..., 1]

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

    def _sub_spots(self, table: pd.DataFrame, nodes: dict) -> tuple[np.ndarray, ...]:
        """Gaussians that draw each spot: (row, fs, ss, photons, sigma_fs, sigma_ss), the streak split into
        thirds or folded into the widths along fs and ss (footprint^2 + the photons' variance along each)."""
        fs_c, ss_c = table["fs"].to_numpy(), table["ss"].to_numpy()
        w, nfs, nss = nodes["weight"], nodes["fs"], nodes["ss"]
        var_fs = (w * (nfs - fs_c[:, None]) ** 2).sum(axis=1)
        var_ss = (w * (nss - ss_c[:, None]) ** 2).sum(axis=1)
        base2 = self.spot_sigma_for(table["distance_m"].to_numpy(),
                                    self._panel_res[table["panel"].to_numpy()]) ** 2
        total = table["photons_total"].to_numpy()
        split = (np.sqrt(var_fs + var_ss) > self.streak_split_px) & (total >= self.streak_min_photons)
        keep = ~split
        parts = [(np.flatnonzero(keep), fs_c[keep], ss_c[keep], total[keep], np.sqrt(base2[keep] + var_fs[keep]),
                  np.sqrt(base2[keep] + var_ss[keep]))]
        if split.any():
            ws, fss, sss = w[split], nfs[split], nss[split]
            cum = np.cumsum(ws, axis=1) - 0.5 * ws
            third = np.minimum((cum * STREAK_PARTS).astype(int), STREAK_PARTS - 1)
            for j in range(STREAK_PARTS):
                wj = np.where(third == j, ws, 0.0)
                mass = wj.sum(axis=1)
                ok = mass > 0
                mj = np.where(ok, mass, 1.0)
                fj = (wj * fss).sum(axis=1) / mj
                sj = (wj * sss).sum(axis=1) / mj
                vf = (wj * (fss - fj[:, None]) ** 2).sum(axis=1) / mj
                vs = (wj * (sss - sj[:, None]) ** 2).sum(axis=1) / mj
                parts.append((np.flatnonzero(split)[ok], fj[ok], sj[ok], total[split][ok] * mass[ok],
                              np.sqrt(base2[split][ok] + vf[ok]), np.sqrt(base2[split][ok] + vs[ok])))
        out = [np.concatenate([p[i] for p in parts]) for i in range(6)]
        return (out[0].astype(np.int64),) + tuple(out[1:])

    def render(self, table: pd.DataFrame, nodes: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Expected-photon image of the spots in ``table`` and each spot's photons on good pixels.

        ``nodes`` (from the simulator) carries each spot's wavelength-node positions and weights, which draw its
        streak; without it each spot is one Gaussian at its centre."""
        n_ss, n_fs = self._shape
        n = len(table)
        if n == 0:
            return np.zeros(self._shape, dtype=np.float32), np.zeros(0)
        if nodes is None:
            nodes = {"fs": table["fs"].to_numpy()[:, None], "ss": table["ss"].to_numpy()[:, None],
                     "weight": np.ones((n, 1))}
        row, fs, ss, photons, sigma_fs, sigma_ss = self._sub_spots(table, nodes)
        panel = table["panel"].to_numpy()[row]
        half = np.ceil(self.box_sigmas * np.maximum(sigma_fs, sigma_ss)).astype(np.int64)
        pixels, values, on_good = [], [], np.zeros(len(row))
        for h in np.unique(half):                                   # one box size at a time
            m = np.flatnonzero(half == h)
            pix, wts, on_good[m] = self._box_weights(fs[m], ss[m], sigma_fs[m], sigma_ss[m], photons[m], panel[m],
                                                     int(h))
            pixels.append(pix)
            values.append(wts)
        image = np.bincount(np.concatenate(pixels), weights=np.concatenate(values), minlength=n_ss * n_fs)
        detected = np.bincount(row, weights=on_good, minlength=n)
        return image.astype(np.float32).reshape(self._shape), detected

    def _box_weights(self, fs, ss, sigma_fs, sigma_ss, photons, panel, half):
        """Photons of Gaussian spots in a (2 half + 1)^2 box: (flat pixel index, photons) of good pixels and each
        spot's photons on good pixels."""
        n_fs = self._shape[1]
        offsets = np.arange(-half, half + 1)
        fs_idx = np.rint(fs).astype(np.int64)[:, None] + offsets          # (m, B)
        ss_idx = np.rint(ss).astype(np.int64)[:, None] + offsets
        w_fs = _pixel_integrals(fs_idx, fs, sigma_fs)
        w_ss = _pixel_integrals(ss_idx, ss, sigma_ss)
        bounds = self._panel_bounds[panel]
        ok_fs = (fs_idx >= bounds[:, [0]]) & (fs_idx <= bounds[:, [1]])
        ok_ss = (ss_idx >= bounds[:, [2]]) & (ss_idx <= bounds[:, [3]])
        weights = (w_ss[:, :, None] * w_fs[:, None, :]) * photons[:, None, None]
        flat = ss_idx[:, :, None] * n_fs + fs_idx[:, None, :]
        valid = ok_ss[:, :, None] & ok_fs[:, None, :]
        valid[valid] = self._mask_flat[flat[valid]]
        weights = np.where(valid, weights, 0.0)
        return flat[valid], weights[valid], weights.sum(axis=(1, 2))

    def simulate(self, astar_bstar_cstar: np.ndarray) -> BraggFrame:
        """Expected-photon image and true peak list for one crystal orientation (lab reciprocal axes, 1/m)."""
        astar = np.asarray(astar_bstar_cstar, dtype=float)
        table, nodes = self._excited(astar)
        image, detected = self.render(table, nodes)
        table.insert(2, "photons", detected)
        table = table.drop(columns="distance_m")
        table = table[table["photons"] > 0].sort_values("photons", ascending=False, kind="stable")
        return BraggFrame(image=image, peaks=table.reset_index(drop=True)[list(PEAK_COLUMNS)],
                          astar_bstar_cstar=astar)


def laue_integrated_photons(fluence_per_m2, polarisation, f2, crystal_volume_m3, cell_volume_m3, wavelength_m,
                            sin2_theta, spectral_overlap):
    """Integrated photons of a reflection in a polychromatic still (Laue integrated intensity).

    N = Phi r_e^2 P |F|^2 V_xtal lambda^3 rho / (2 V_cell^2 sin^2 theta), with rho the spectral overlap per unit
    relative wavelength (partiality / bandwidth for a tophat). Arguments in SI units, |F|^2 in electrons^2.
    (The simulator integrates the spectrum itself; for a flat spectrum S its N equals this with
    rho = S lambda / lambda_0, the exact Jacobian of relative wavelength.)
    """
    return (fluence_per_m2 * CLASSICAL_ELECTRON_RADIUS_M ** 2 * polarisation * f2 * crystal_volume_m3
            * wavelength_m ** 3 * spectral_overlap / (2 * cell_volume_m3 ** 2 * sin2_theta))


def _pad(nodes: np.ndarray, n: int) -> np.ndarray:
    """Pad (N, K) node values to (N, n) by repeating the last column (padded weights are then set to zero)."""
    if nodes.shape[1] == n:
        return nodes
    out = np.repeat(nodes[:, -1:], n, axis=1)
    out[:, :nodes.shape[1]] = nodes
    return out


def _pixel_integrals(pixel_index: np.ndarray, centre: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Fraction of a 1-D Gaussian (centre, sigma; raw convention) in each pixel, normalised over the box."""
    lo = (pixel_index - 0.5 - centre[:, None]) / sigma[:, None]
    w = ndtr(lo + 1.0 / sigma[:, None]) - ndtr(lo)
    return w / w.sum(axis=1, keepdims=True)
