"""The oracle bound on photon energy and camera length from one frame's counts: the posterior over (E, L).

Likelihood (PHYSICS.md, the dataset's own recording model): the counts n_i of good pixel i are independent
Poisson(mu_i) with

    mu_i(E, L, s) = s w_i(E, L) + B_i,     w_i = P_i dOmega_i S_w(q_i)       (:mod:`.water_fit`, :mod:`.profile`)

where s (thickness x pulse energy, the nuisance) is profiled out (maximised per (E, L)) and B_i is the frame's
expected Bragg image when it is given (the frames file's ``signal``: an oracle, known exactly and held at the truth,
so the Bragg spots neither help nor hurt; without it a hit's spots count as water, and the result says so).
Prior: uniform in (ln E, ln L) on :class:`PriorBox`. Posterior mean and standard deviation of E and L come from a
grid in (a, u) = (ln E, ln(L/E)) spanning +-``width_sigmas`` Fisher standard deviations about the maximum (clipped
to the prior box; each a-row's u-range re-centred on its own maximum), and the 3 x 3 oracle class is the maximum
likelihood point among the design's (E, L) grid.

For empties the profiled and the marginalised likelihood (flat prior in ln s: integral of s^(N-1) e^(-s T) ds =
Gamma(N) / T^N) differ by a constant, so the profile is the exact marginal; for hits it is the profile.

Sufficient statistics: water pixels are grouped in radial bins of ``bin_width_px`` and ``n_phi`` cos^2(phi) bins
(:class:`ProfileBins`); within a bin the pixels' w_i share S_w(q) and the obliquity to O(bin width^2), so the
binned Poisson likelihood equals the per-pixel one up to a constant (tested on the tiny detector). Pixels with
B_i > ``signal_floor`` are kept one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import HC_EV_A
from ..geometry import Geometry
from ..simulate.water import water_structure_factor
from .profile import ProfileBins
from .water_fit import PriorBox, WaterProfileModel, fit_water_profile

#: The design's photon energies (eV) and camera lengths (m): the 3 x 3 grid of datasets 01..09.
DESIGN_ENERGIES_EV = (6000.0, 7000.0, 8000.0)
DESIGN_CLENS_M = (0.15, 0.25, 0.35)


@dataclass
class BoundResult:
    """Posterior of one frame: means and standard deviations (eV, m), the maximum, the 3 x 3 oracle class
    (index into DESIGN_ENERGIES_EV, DESIGN_CLENS_M), the posterior mass on the grid's edge (a check that the grid
    covers the posterior: should be << 1) and whether the Bragg image was modelled."""

    photon_energy_ev: float
    clen_m: float
    sd_photon_energy_ev: float
    sd_clen_m: float
    map_photon_energy_ev: float
    map_clen_m: float
    class_energy: int
    class_clen: int
    edge_mass: float
    bragg_modelled: bool
    extra: dict = field(default_factory=dict)


def pixel_water(x_m: np.ndarray, y_m: np.ndarray, area_m2: float, e_ev: np.ndarray, clen_m: np.ndarray,
                polarisation_fraction: float) -> np.ndarray:
    """w_i = P_i dOmega_i S_w(q_i) of pixels at (x, y) (m,) for (k,) parameter pairs -> (k, m)."""
    L = np.asarray(clen_m, dtype=float)[:, None]
    r2 = (x_m * x_m + y_m * y_m)[None, :]
    d2 = r2 + L * L
    f = polarisation_fraction
    pol = 1 - (f * x_m[None, :] ** 2 + (1 - f) * y_m[None, :] ** 2) / d2
    theta = 0.5 * np.arctan2(np.sqrt(r2), L)
    q = 4 * np.pi * np.sin(theta) * np.asarray(e_ev, dtype=float)[:, None] / HC_EV_A
    return area_m2 * L / d2 ** 1.5 * pol * water_structure_factor(q)


class WaterBound:
    """The bound for one detector; :meth:`posterior` per frame."""

    def __init__(self, geometry: Geometry, polarisation_fraction: float = 1.0, prior: PriorBox = PriorBox(),
                 bin_width_px: float = 0.5, n_phi: int = 8, n_a: int = 41, n_u: int = 31, width_sigmas: float = 6.0,
                 signal_floor: float = 1e-4):
        self.geometry = geometry
        self.f = polarisation_fraction
        self.prior = prior
        self.bins = ProfileBins.from_geometry(geometry, bin_width_px, n_phi)
        self.fit_bins = ProfileBins.from_geometry(geometry)
        self.n_a, self.n_u, self.width = n_a, n_u, width_sigmas
        self.signal_floor = signal_floor

    # ------------------------------------------------------------------ likelihood on a set of points
    def _loglike(self, bins: ProfileBins, counts: np.ndarray, a: np.ndarray, c: np.ndarray,
                 bragg: tuple | None) -> np.ndarray:
        """Profiled log-likelihood (up to a constant) at (k,) points (a, c) = (ln E, ln L)."""
        n_phi = bins.n_phi
        n_rad = bins.n_bins // n_phi
        npix = bins.n_pix[:n_rad * n_phi].reshape(n_rad, n_phi)
        q_mom = (self.f * bins.sum_x2_m2 + (1 - self.f) * (bins.sum_r2_m2 - bins.sum_x2_m2))[:n_rad * n_phi]
        q_mom = q_mom.reshape(n_rad, n_phi)
        n_r = npix.sum(axis=1)
        used = n_r > 0.5
        rho2 = bins.sum_r2_m2[:n_rad * n_phi].reshape(n_rad, n_phi).sum(axis=1)[used] / n_r[used]
        cnt = counts[:n_rad * n_phi].reshape(n_rad, n_phi)[used]
        npix, q_mom, n_r = npix[used], q_mom[used], n_r[used]
        nz_r, nz_p = np.nonzero(cnt > 0)
        n_nz = cnt[nz_r, nz_p]
        cnt_r = cnt.sum(axis=1)
        out = np.empty(len(a))
        for k0 in range(0, len(a), 64):
            e = np.exp(a[k0:k0 + 64])
            L = np.exp(c[k0:k0 + 64])[:, None]
            d2 = rho2[None, :] + L * L
            radial = self.bins.pixel_area_m2 * L / d2 ** 1.5 * water_structure_factor(
                4 * np.pi * np.sin(0.5 * np.arctan2(np.sqrt(rho2)[None, :], L)) * e[:, None] / HC_EV_A)
            total = (radial * (n_r[None, :] - q_mom.sum(axis=1)[None, :] / d2)).sum(axis=1)
            pol = npix[nz_r, nz_p][None, :] - q_mom[nz_r, nz_p][None, :] / d2[:, nz_r]
            data = (cnt_r[None, :] * np.log(radial)).sum(axis=1) + (n_nz * np.log(np.maximum(pol, 1e-300))).sum(axis=1)
            n_w = cnt.sum()
            if bragg is None:
                out[k0:k0 + 64] = data - n_w * np.log(total)
                continue
            x, y, n_k, b_k = bragg
            w = pixel_water(x, y, self.bins.pixel_area_m2, e, L[:, 0], self.f)
            tot = total[:, None]
            s = np.full((len(e), 1), max(n_w, 1.0)) / tot
            for _ in range(8):   # Newton on d l / d s = n_w / s - T + sum_k (n_k w_k / mu_k - w_k) = 0
                mu = s * w + b_k[None, :]
                grad = n_w / s - tot + (n_k[None, :] * w / mu - w).sum(axis=1, keepdims=True)
                curv = n_w / s ** 2 + (n_k[None, :] * w ** 2 / mu ** 2).sum(axis=1, keepdims=True)
                s = np.maximum(s + grad / curv, 0.1 * s)
            mu = s * w + b_k[None, :]
            ll = n_w * np.log(s[:, 0]) + data - s[:, 0] * total
            out[k0:k0 + 64] = ll + (n_k[None, :] * np.log(mu) - mu).sum(axis=1)
        return out

    def _grid(self, bins, counts, bragg, a_grid, centre, s_u_a):
        """Log-likelihood on rows a_grid (n_a,) x u = centre_k + s_u_a * t (t in +-width, n_u); each row whose
        maximum lies in its outer quarter is re-centred on it (up to 3 passes). Returns A, C, ll (n_a, n_u);
        ll is -inf outside the prior's camera-length range."""
        c0, c1 = self.prior.c_range
        t = np.linspace(-self.width, self.width, self.n_u)
        for _ in range(3):
            U = centre[:, None] + s_u_a * t[None, :]
            A = np.broadcast_to(a_grid[:, None], U.shape)
            C = A + U
            ll = self._loglike(bins, counts, A.ravel(), C.ravel(), bragg).reshape(U.shape)
            ll = np.where((C >= c0) & (C <= c1), ll, -np.inf)
            j = np.argmax(ll, axis=1)
            off = np.abs(t[j]) > 0.5 * self.width
            if not off.any():
                break
            centre = np.where(off, U[np.arange(len(j)), j], centre)
        return A, C, ll

    # ------------------------------------------------------------------ posterior
    def posterior(self, frame: np.ndarray, signal: np.ndarray | None = None,
                  drop: np.ndarray | None = None) -> BoundResult:
        """The posterior of one frame (float (ss, fs) counts) with the frame's Bragg image ``signal`` (expected
        photons (ss, fs), or None: water only); ``drop`` (bool (ss, fs)) leaves pixels out. Without ``signal`` and
        with ``drop`` = the water fit's outlier mask (``extra['masked_pixels']``) this is no oracle: the
        Bayesian (posterior-mean) water estimator, which on a flat ridge beats the maximum-likelihood fit."""
        bins, bragg, sel = self.bins, None, None
        fit_bins = self.fit_bins
        if drop is not None:
            bins = bins.without(drop, self.geometry)
            fit_bins = fit_bins.without(drop, self.geometry)
        if signal is not None:
            sel = (np.asarray(signal) > self.signal_floor) & (bins.pixel_bin >= 0)
            if sel.any():
                pos = self.geometry.pixel_positions_m[sel]
                bragg = (pos[:, 0], pos[:, 1], np.asarray(frame, dtype=float)[sel],
                         np.asarray(signal, dtype=float)[sel])
                bins = bins.without(sel, self.geometry)
        counts = bins.counts(frame)
        if bragg is not None:
            fit_bins = fit_bins.without(sel, self.geometry)
        start = fit_water_profile(fit_bins.counts(frame), WaterProfileModel(fit_bins, self.f), self.prior)
        a_hat, c_hat = np.log(start.photon_energy_ev), np.log(start.clen_m)
        sa = max(start.extra["fisher_sigma_ln_e"], 1e-5)
        sc = max(start.extra["fisher_sigma_ln_l"], 1e-5)
        cov_ac = start.correlation * sa * sc
        s_au = cov_ac - sa ** 2                         # u = c - a
        slope = s_au / sa ** 2
        s_u_a = np.sqrt(max(sa ** 2 + sc ** 2 - 2 * cov_ac - s_au ** 2 / sa ** 2, 1e-12))
        a0, a1 = self.prior.a_range
        half = self.width * sa * start.extra["profile_inflation"]
        full = 2 * half > (a1 - a0) / 4
        a_grid = np.linspace(a0, a1, self.n_a) if full else np.linspace(max(a0, a_hat - half),
                                                                           min(a1, a_hat + half), self.n_a)
        A, C, ll = self._grid(bins, counts, bragg, a_grid, (c_hat - a_hat) + slope * (a_grid - a_hat), s_u_a)
        w = np.exp(ll - ll.max())
        w /= w.sum()
        mean_a = float((w * A).sum())
        sd_a = float(np.sqrt((w * (A - mean_a) ** 2).sum()))
        if full and sd_a < 2 * (a_grid[1] - a_grid[0]):   # posterior narrower than the rows: zoom in
            centre = np.interp(mean_a, a_grid, (C - A)[np.arange(len(a_grid)), np.argmax(ll, axis=1)])
            zoom = self.width * max(sd_a, 1e-5)
            a_grid = np.linspace(max(a0, mean_a - zoom), min(a1, mean_a + zoom), self.n_a)
            A, C, ll = self._grid(bins, counts, bragg, a_grid, centre + slope * (a_grid - mean_a), s_u_a)
        w = np.exp(ll - ll.max())
        w /= w.sum()
        e, L = np.exp(A), np.exp(C)
        mean_e, mean_l = float((w * e).sum()), float((w * L).sum())
        sd_e = float(np.sqrt((w * (e - mean_e) ** 2).sum()))
        sd_l = float(np.sqrt((w * (L - mean_l) ** 2).sum()))
        edge = float(w[0].sum() + w[-1].sum() + w[:, 0].sum() + w[:, -1].sum()) if len(a_grid) > 1 else 1.0
        if a_grid[0] <= a0 + 1e-12 or a_grid[-1] >= a1 - 1e-12:   # a prior edge is not a grid truncation
            edge -= float(w[0].sum() if a_grid[0] <= a0 + 1e-12 else 0) + float(
                w[-1].sum() if a_grid[-1] >= a1 - 1e-12 else 0)
        k = np.unravel_index(np.argmax(ll), ll.shape)
        ce, cl = np.meshgrid(np.log(DESIGN_ENERGIES_EV), np.log(DESIGN_CLENS_M), indexing="ij")
        cls = self._loglike(bins, counts, ce.ravel(), cl.ravel(), bragg)
        ie, il = np.unravel_index(int(np.argmax(cls)), ce.shape)
        return BoundResult(photon_energy_ev=mean_e, clen_m=mean_l, sd_photon_energy_ev=sd_e, sd_clen_m=sd_l,
                           map_photon_energy_ev=float(e[k]), map_clen_m=float(L[k]), class_energy=int(ie),
                           class_clen=int(il), edge_mass=max(edge, 0.0), bragg_modelled=bragg is not None,
                           extra={"n_bragg_pixels": 0 if bragg is None else len(bragg[2])})
