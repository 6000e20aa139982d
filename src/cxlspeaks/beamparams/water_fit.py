"""Photon energy and camera length from the water ring: a Poisson maximum-likelihood fit of the expected water
profile, with its uncertainty from the Fisher information.

Model (the project's builtin water simulator, :mod:`cxlspeaks.simulate.water`, reborn's
``get_pad_solution_intensity``; PHYSICS.md): expected photons in profile bin b (:class:`ProfileBins`)

    mu_b(E, L, s) = s * S_w(q_b) * sum_{i in b} P_i dOmega_i,      q_b = 4 pi sin(theta_b) / lambda,
    2 theta_b = atan(rho_b / L),  lambda = h c / E,

with S_w the water scattering per molecule (Hura et al. 2003 PCCP 5:1981 spliced with Clark et al. 2010 PNAS
107:14003, :func:`water_structure_factor`), P_i dOmega_i the polarisation x solid-angle (obliquity) moments of
:mod:`.profile`, and s = r_e^2 N_photons t n_w the scale (1/sr per electron unit; thickness x pulse energy, a
nuisance). Counts per bin are Poisson(mu_b) (a sum of independent Poisson pixels). The log-likelihood with s
maximised analytically (s_hat = N / sum_b g_b, g = mu / s) is, up to a constant,

    l(E, L) = sum_b n_b ln g_b(E, L) - N ln sum_b g_b(E, L),         N = sum_b n_b.

To first order the ring fixes only lambda * L (r_ring ~ L q_max lambda / (2 pi)); the obliquity cos^3(2 theta), the
polarisation's dependence on sin^2(2 theta) = r^2 / (r^2 + L^2) (which knows L but not lambda) and the ring's shape
in 2 theta (tan vs sin) break the degeneracy weakly, so the fit runs in (a, u) = (ln E, ln(L / E)): u is sharp, a
is broad. The uncertainty is the inverse expected Fisher information I_jk = sum_b d_j mu_b d_k mu_b / mu_b over
(ln E, ln L, ln s) (Cramer-Rao; Kay 1993 ch. 3), so sigma_E = E sqrt(C_aa), sigma_L = L sqrt(C_cc); where the
profile likelihood along ln E (max over u per energy of the search grid) is wider than that (a flat or truncated
ridge, e.g. when the ring's maximum is off the detector), both sigmas are scaled up to its half-width at
l_max - 1/2 (Wilks; ``extra['profile_inflation']``).

Evaluating the model needs one PCHIP call over the bins (a few thousand numbers, ~0.1 ms), so no cached grid of
expected profiles is kept: the moment form already is the fast, exact-to-bin-width interpolation.

Hits: pixels whose counts are implausible under the fitted water (Poisson tail P(N >= n | mu_i) < ``alpha``; Bragg
spots) are masked with a ``dilate_px`` margin and the fit repeated (:func:`fit_water_frame`), so the same
estimator runs on hits and empties without knowing which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import binary_dilation
from scipy.optimize import minimize
from scipy.stats import poisson

from ..constants import CLASSICAL_ELECTRON_RADIUS_M, HC_EV_A
from ..geometry import Geometry
from ..simulate.water import WATER_PROFILE_25C, water_number_density, water_structure_factor
from .profile import ProfileBins

#: dS_w/dq (electron units * angstrom): the derivative of the same PCHIP interpolant water_structure_factor uses.
_S_W_SLOPE = PchipInterpolator(WATER_PROFILE_25C[:, 0], WATER_PROFILE_25C[:, 1]).derivative()


@dataclass(frozen=True)
class PriorBox:
    """The range searched (and the uniform prior in (ln E, ln L) of the bound): eV and m."""

    photon_energy_ev: tuple[float, float] = (5000.0, 9500.0)
    clen_m: tuple[float, float] = (0.10, 0.50)

    def __post_init__(self) -> None:
        (e0, e1), (l0, l1) = self.photon_energy_ev, self.clen_m
        if not (0 < e0 < e1 and 0 < l0 < l1):
            raise ValueError(f"prior box needs 0 < min < max, got energy {self.photon_energy_ev}, clen {self.clen_m}")

    @property
    def a_range(self) -> tuple[float, float]:
        return float(np.log(self.photon_energy_ev[0])), float(np.log(self.photon_energy_ev[1]))

    @property
    def c_range(self) -> tuple[float, float]:
        return float(np.log(self.clen_m[0])), float(np.log(self.clen_m[1]))


@dataclass
class BeamEstimate:
    """An estimate with 1-sigma uncertainties (eV, m); ``scale_per_sr`` is s; ``method`` names the estimator."""

    photon_energy_ev: float
    clen_m: float
    sigma_photon_energy_ev: float
    sigma_clen_m: float
    correlation: float = 0.0
    scale_per_sr: float = float("nan")
    loglike: float = float("nan")
    n_photons: float = 0.0
    method: str = "water_fit"
    extra: dict = field(default_factory=dict)


def nominal_scale_per_sr(n_photons: float, thickness_m: float, temperature_k: float = 298.15) -> float:
    """s = r_e^2 N_photons t n_w(T) (1/sr per electron unit), the prefactor of water_intensity."""
    return CLASSICAL_ELECTRON_RADIUS_M ** 2 * n_photons * thickness_m * water_number_density(temperature_k)


class WaterProfileModel:
    """Expected water photons per profile bin, g_b(E, L) = S_w(q_b) sum_{i in b} P_i dOmega_i (s = 1)."""

    def __init__(self, bins: ProfileBins, polarisation_fraction: float = 1.0):
        if not 0 <= polarisation_fraction <= 1:
            raise ValueError(f"polarisation_fraction must be in [0, 1], got {polarisation_fraction}")
        self.bins = bins
        self.polarisation_fraction = polarisation_fraction
        self.used = bins.n_pix > 0.5
        n_rad = bins.n_bins // bins.n_phi
        radial = (np.arange(bins.n_bins) // bins.n_phi)
        n_r = np.bincount(radial, bins.n_pix, minlength=n_rad)
        r2 = np.bincount(radial, bins.sum_r2_m2, minlength=n_rad)
        occupied = np.flatnonzero(n_r > 0.5)
        self._rho_radial = np.sqrt(r2[occupied] / n_r[occupied])
        self._radial_of_used = np.searchsorted(occupied, radial[self.used])
        self._rho_offset = np.sqrt(bins.rho2_m2[self.used]) - self._rho_radial[self._radial_of_used]

    def expected(self, photon_energy_ev, clen_m) -> np.ndarray:
        """g (k, n_used_bins) for k pairs of (E in eV, L in m); multiply by s for photons. S_w is evaluated once
        per radial bin at its mean radius rho_r and carried to each azimuth bin's own rho_b to first order,
        S_w(q_b) ~ S_w(q_r) + S_w'(q_r) dq/drho (rho_b - rho_r), dq/drho = (2 pi / lambda) cos(theta) L / R^2."""
        e = np.atleast_1d(np.asarray(photon_energy_ev, dtype=float))
        L = np.atleast_1d(np.asarray(clen_m, dtype=float))
        e, L = np.broadcast_arrays(e, L)
        geo = self.bins.geometric_factor(L, self.polarisation_fraction)[:, self.used]
        rho = self._rho_radial[None, :]
        theta = 0.5 * np.arctan2(rho, L[:, None])
        k4 = 4 * np.pi * e[:, None] / HC_EV_A
        q = k4 * np.sin(theta)
        slope = _S_W_SLOPE(np.clip(q, 0.0, WATER_PROFILE_25C[-1, 0])) * (
            0.5 * k4 * np.cos(theta) * L[:, None] / (rho ** 2 + L[:, None] ** 2))
        idx = self._radial_of_used
        s_w = water_structure_factor(q)[:, idx] + slope[:, idx] * self._rho_offset[None, :]
        return geo * s_w

    def profile_loglike(self, counts_used: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
        """l(E = e^a, L = e^c) with s profiled (module docstring), vectorised over (k,) parameter pairs."""
        g = self.expected(np.exp(a), np.exp(c))
        n = counts_used[None, :]
        total = counts_used.sum()
        with np.errstate(divide="ignore"):
            data = np.where(n > 0, n * np.log(np.maximum(g, 1e-300)), 0.0).sum(axis=1)
        return data - total * np.log(g.sum(axis=1))

    def fisher_covariance(self, photon_energy_ev: float, clen_m: float, scale: float,
                          step: float = 1e-5) -> np.ndarray:
        """Inverse expected Fisher information over (ln E, ln L, ln s), 3 x 3."""
        a, c = np.log(photon_energy_ev), np.log(clen_m)
        pts = np.array([[a + step, c], [a - step, c], [a, c + step], [a, c - step], [a, c]])
        g = scale * self.expected(np.exp(pts[:, 0]), np.exp(pts[:, 1]))
        jac = np.stack([(g[0] - g[1]) / (2 * step), (g[2] - g[3]) / (2 * step), g[4]])
        mu = np.maximum(g[4], 1e-300)
        info = (jac[:, None, :] * jac[None, :, :] / mu).sum(axis=2)
        return np.linalg.pinv(info)


def fit_water_profile(counts: np.ndarray, model: WaterProfileModel, prior: PriorBox = PriorBox(),
                      n_a: int = 13, u_step: float = 0.004, start: BeamEstimate | None = None) -> BeamEstimate:
    """Maximum-likelihood (E, L, s) from a frame's profile counts (float (n_bins,), ProfileBins.counts).

    A grid over (a, u) = (ln E, ln(L/E)) inside the prior box (n_a energies x steps of ``u_step``) finds the
    ridge; L-BFGS-B from the best grid point of each of the 3 best energies refines it. With ``start`` (an earlier
    fit of nearly the same counts) the grid is skipped, the refinement starts there and the profile-likelihood
    inflation of the start is kept. Raises ValueError when the profile holds no photons.
    """
    n = np.asarray(counts, dtype=float)[model.used]
    if not n.sum() > 0:
        raise ValueError("the profile holds no photons: cannot fit the water ring")
    a0, a1 = prior.a_range
    c0, c1 = prior.c_range
    if start is None:
        a_grid, a_flat, ll, starts = _search_grid(n, model, prior, n_a, u_step)
    else:
        starts = [(np.log(start.photon_energy_ev), np.log(start.clen_m))]
    scales = np.array([0.01, 0.001])

    def objective(x, origin):
        a = origin[0] + x[0] * scales[0]
        c = a + origin[1] + x[1] * scales[1]
        pen = 1e9 * (max(0.0, c0 - c) + max(0.0, c - c1) + max(0.0, a0 - a) + max(0.0, a - a1)) ** 2
        a_in, c_in = np.clip(a, a0 - 0.5, a1 + 0.5), np.clip(c, c0 - 0.5, c1 + 0.5)
        return -model.profile_loglike(n, np.atleast_1d(a_in), np.atleast_1d(c_in))[0] + pen

    best = None
    for a_s, c_s in starts:
        origin = np.array([a_s, c_s - a_s])
        res = minimize(objective, np.zeros(2), args=(origin,), method="L-BFGS-B",
                       options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 500})
        if best is None or res.fun < best[0]:
            best = (res.fun, origin[0] + res.x[0] * scales[0], origin[1] + res.x[1] * scales[1])
    _, a_hat, u_hat = best
    e_hat, l_hat = float(np.exp(a_hat)), float(np.exp(a_hat + u_hat))
    g = model.expected(e_hat, l_hat)[0]
    scale = float(n.sum() / g.sum())
    cov = model.fisher_covariance(e_hat, l_hat, scale)
    sa, sc = np.sqrt(max(cov[0, 0], 0)), np.sqrt(max(cov[1, 1], 0))
    if start is None:
        inflate = _profile_inflation(a_grid, a_flat, ll, a_hat, -best[0], sa)
    else:
        inflate = start.extra.get("profile_inflation", 1.0)
    fisher = {"fisher_sigma_ln_e": float(sa), "fisher_sigma_ln_l": float(sc)}
    corr = float(cov[0, 1] / max(sa * sc, 1e-300))
    sa, sc = sa * inflate, sc * inflate
    return BeamEstimate(photon_energy_ev=e_hat, clen_m=l_hat, sigma_photon_energy_ev=e_hat * sa,
                        sigma_clen_m=l_hat * sc, correlation=corr,
                        scale_per_sr=scale, loglike=float(-best[0]), n_photons=float(n.sum()),
                        extra={"profile_inflation": inflate, **fisher})


def _search_grid(n: np.ndarray, model: WaterProfileModel, prior: PriorBox, n_a: int, u_step: float):
    """The (a, u) search grid: its energies, the points' a, their log-likelihoods and the 3 best starts."""
    a0, a1 = prior.a_range
    c0, c1 = prior.c_range
    a_grid = np.linspace(a0, a1, n_a)
    u_grid = np.arange(c0 - a1, c1 - a0 + u_step, u_step)
    A, U = np.meshgrid(a_grid, u_grid, indexing="ij")
    C = A + U
    inside = (C >= c0) & (C <= c1)
    a_flat, c_flat = A[inside], C[inside]
    ll = np.concatenate([model.profile_loglike(n, a_flat[k:k + 512], c_flat[k:k + 512])
                         for k in range(0, len(a_flat), 512)])
    best_per_a = {}
    for k in np.argsort(ll)[::-1]:
        best_per_a.setdefault(a_flat[k], (a_flat[k], c_flat[k]))
        if len(best_per_a) == n_a:
            break
    starts = sorted(best_per_a.values(), key=lambda p: -model.profile_loglike(n, *map(np.atleast_1d, p))[0])[:3]
    return a_grid, a_flat, ll, starts


def _profile_inflation(a_grid, a_flat, ll, a_hat, ll_hat, sa) -> float:
    """Half-width of {a: max_u l(a, u) >= l_max - 1/2} over the grid rows, in units of sa (at least 1)."""
    rows = np.array([ll[a_flat == a].max() if (a_flat == a).any() else -np.inf for a in a_grid] + [ll_hat])
    a_pts = np.append(a_grid, a_hat)
    inside_1s = a_pts[rows >= ll_hat - 0.5]
    half = 0.5 * (inside_1s.max() - inside_1s.min())
    return max(1.0, half / max(sa, 1e-12)) if len(inside_1s) > 1 else 1.0


def poisson_outliers(frame: np.ndarray, bins: ProfileBins, mean_per_bin: np.ndarray, alpha: float = 1e-5,
                     dilate_px: int = 2) -> np.ndarray:
    """bool (ss, fs): binned pixels whose counts have Poisson tail probability P(N >= n | mu_i) < alpha, with mu_i
    the mean per pixel of the pixel's bin (``mean_per_bin`` (n_bins,)), grown by ``dilate_px`` pixels (Bragg
    spots and their tails)."""
    cand = (frame >= 2) & (bins.pixel_bin >= 0)
    out = np.zeros(frame.shape, dtype=bool)
    if cand.any():
        mu = mean_per_bin[bins.pixel_bin[cand]]
        out[cand] = poisson.sf(frame[cand] - 1, np.maximum(mu, 1e-12)) < alpha
    if dilate_px > 0 and out.any():
        out = binary_dilation(out, structure=np.ones((2 * dilate_px + 1,) * 2, dtype=bool))
    return out & (bins.pixel_bin >= 0)


def outlier_pixels(frame: np.ndarray, bins: ProfileBins, model: WaterProfileModel, estimate: BeamEstimate,
                   alpha: float = 1e-5, dilate_px: int = 2) -> np.ndarray:
    """:func:`poisson_outliers` under the fitted water (mu_i the bin's expected photons per pixel)."""
    g = np.zeros(bins.n_bins)
    g[model.used] = estimate.scale_per_sr * model.expected(estimate.photon_energy_ev, estimate.clen_m)[0]
    return poisson_outliers(frame, bins, g / np.maximum(bins.n_pix, 1), alpha, dilate_px)


def fit_water_frame(frame: np.ndarray, geometry: Geometry, bins: ProfileBins | None = None,
                    polarisation_fraction: float = 1.0, prior: PriorBox = PriorBox(), alpha: float = 1e-5,
                    dilate_px: int = 2, iterations: int = 2, extra_mask: np.ndarray | None = None) -> BeamEstimate:
    """The water fit of one frame (float (ss, fs) counts) on ``geometry``'s beam centre and good pixels: mask the
    pixels that are outliers against their bin's mean count, fit, mask the outliers against the fitted water
    (Bragg spots, :func:`outlier_pixels`), refit, ``iterations`` times. ``extra_mask`` (bool,
    True = drop) removes known pixels first (e.g. boxes around found peaks). ``extra['n_masked']`` counts the
    pixels dropped, ``extra['masked_pixels']`` is them (bool (ss, fs))."""
    bins = bins or ProfileBins.from_geometry(geometry)
    dropped = np.zeros(frame.shape, dtype=bool) if extra_mask is None else np.asarray(extra_mask, dtype=bool)
    work = bins.without(dropped, geometry)
    # before any fit: outliers against each bin's own mean count (model-free; the bright spots of a hit)
    pre = poisson_outliers(frame, work, work.counts(frame) / np.maximum(work.n_pix, 1), alpha, dilate_px)
    dropped |= pre
    work = work.without(pre, geometry)
    est = fit_water_profile(work.counts(frame), WaterProfileModel(work, polarisation_fraction), prior)
    for _ in range(iterations):
        bad = outlier_pixels(frame, work, WaterProfileModel(work, polarisation_fraction), est, alpha, dilate_px)
        new = bad & ~dropped
        if not new.any():
            break
        dropped |= new
        work = work.without(new, geometry)
        est = fit_water_profile(work.counts(frame), WaterProfileModel(work, polarisation_fraction), prior,
                                start=est)
    est.extra["n_masked"] = int(dropped.sum())
    est.extra["masked_pixels"] = dropped
    return est
