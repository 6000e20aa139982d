"""A learned regressor of ln(photon energy) and ln(camera length) on geometry-aware profile features.

Features (:func:`profile_features`): the frame's counts in ``n_radial`` rings of equal width in *metres* of radius
from the geometry's beam centre (so a moved beam centre or another pixel size leaves them unchanged) out to
``r_max_m``, split into two azimuth sectors (cos^2 phi >= 1/2, along the polarisation x, and < 1/2: their ratio
measures the polarisation factor 1 - cos^2(phi) sin^2(2 theta), i.e. the scattering angle and so L). Per
(ring, sector): ln((photons + 1/2) / pixels), minus the mean over features (the water thickness x pulse energy
scale cancels). Bragg spots are removed first: pixels whose counts have Poisson tail probability < ``alpha`` under
their ring's mean count are masked (grown by 2 px), as in :func:`.water_fit.outlier_pixels`. Rings without good
pixels take the training mean.

Model: ridge regression (Hoerl & Kennard 1970) on standardised features, targets ln(E / eV) and ln(L / m), the
penalty chosen by 5-fold cross-validation; the stated uncertainty of each target is the root-mean-square of the
held-out (cross-validated) residuals, so sigma_E = E * rms_a, sigma_L = L * rms_c. A regressor only knows the
(E, L) it was trained on: trained on the 3 x 3 design it interpolates between (and cannot extrapolate beyond)
those values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.stats import poisson

from ..geometry import Geometry
from .water_fit import BeamEstimate

ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def profile_features(frame: np.ndarray, geometry: Geometry, n_radial: int = 48, r_max_m: float = 0.16,
                     alpha: float = 1e-5) -> np.ndarray:
    """float64 (2 n_radial,) features of one frame (ss, fs) counts (module docstring); NaN for empty rings."""
    pos = geometry.pixel_positions_m
    good = geometry.mask & np.isfinite(pos[..., 0])
    if frame.shape != good.shape:
        raise ValueError(f"frame shape {frame.shape} does not match the detector's {good.shape}")
    x, y = pos[..., 0][good], pos[..., 1][good]
    r2 = x * x + y * y
    ring = np.floor(np.sqrt(r2) / (r_max_m / n_radial)).astype(np.int64)
    inside = ring < n_radial
    sector = (x * x >= 0.5 * r2).astype(np.int64)
    b = np.where(inside, ring * 2 + sector, 2 * n_radial)
    n = np.asarray(frame, dtype=float)[good]
    npix = np.bincount(b, minlength=2 * n_radial + 1)
    mean = np.bincount(b, n, minlength=2 * n_radial + 1) / np.maximum(npix, 1)
    bad = np.zeros(n.shape, dtype=bool)
    cand = n >= 2
    bad[cand] = poisson.sf(n[cand] - 1, np.maximum(mean[b[cand]], 1e-12)) < alpha
    if bad.any():
        img = np.zeros(good.shape, dtype=bool)
        img[good] = bad
        bad = binary_dilation(img, structure=np.ones((5, 5), dtype=bool))[good]
    keep = ~bad
    npix = np.bincount(b[keep], minlength=2 * n_radial + 1)[:2 * n_radial].astype(float)
    counts = np.bincount(b[keep], n[keep], minlength=2 * n_radial + 1)[:2 * n_radial]
    feat = np.where(npix > 0, np.log((counts + 0.5) / np.maximum(npix, 1)), np.nan)
    return feat - np.nanmean(feat)


@dataclass
class RidgeRegressor:
    """Ridge of (ln E, ln L) on features; ``mean``/``scale`` standardise, ``coef`` (n_feat, 2), ``intercept`` (2,),
    ``rms`` (2,) the cross-validated residual rms of (ln E, ln L), ``alpha`` the chosen penalty."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    rms: np.ndarray
    alpha: float

    @staticmethod
    def _solve(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        xm, ym = x.mean(axis=0), y.mean(axis=0)
        xc = x - xm
        coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
        return coef, ym - xm @ coef

    @classmethod
    def fit(cls, features: np.ndarray, photon_energy_ev: np.ndarray, clen_m: np.ndarray, seed: int = 0,
            folds: int = 5) -> "RidgeRegressor":
        """Train on (n, n_feat) features against (n,) energies (eV) and camera lengths (m). ValueError with fewer
        than 2 * folds frames."""
        x = np.asarray(features, dtype=float)
        if len(x) < 2 * folds:
            raise ValueError(f"the regressor needs at least {2 * folds} training frames, got {len(x)}")
        y = np.column_stack([np.log(photon_energy_ev), np.log(clen_m)])
        seen = np.isfinite(x).sum(axis=0)
        mean = np.where(seen > 0, np.where(np.isfinite(x), x, 0.0).sum(axis=0) / np.maximum(seen, 1), 0.0)
        x = np.where(np.isfinite(x), x, mean)
        scale = x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        fold = np.random.default_rng(seed).permutation(len(z)) % folds
        best = None
        for alpha in ALPHAS:
            resid = np.empty_like(y)
            for k in range(folds):
                coef, icpt = cls._solve(z[fold != k], y[fold != k], alpha)
                resid[fold == k] = z[fold == k] @ coef + icpt - y[fold == k]
            rms = np.sqrt((resid ** 2).mean(axis=0))
            if best is None or rms.sum() < best[0].sum():
                best = (rms, alpha)
        coef, icpt = cls._solve(z, y, best[1])
        return cls(mean=mean, scale=scale, coef=coef, intercept=icpt, rms=best[0], alpha=float(best[1]))

    def predict(self, features: np.ndarray) -> list[BeamEstimate]:
        """One estimate per row of (n, n_feat) features, with the cross-validated sigmas."""
        x = np.atleast_2d(np.asarray(features, dtype=float))
        x = np.where(np.isfinite(x), x, self.mean)
        y = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        out = []
        for a, c in y:
            e, L = float(np.exp(a)), float(np.exp(c))
            out.append(BeamEstimate(photon_energy_ev=e, clen_m=L, sigma_photon_energy_ev=e * float(self.rms[0]),
                                    sigma_clen_m=L * float(self.rms[1]), method="ridge_regressor"))
        return out

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, coef=self.coef, intercept=self.intercept, rms=self.rms,
                 alpha=self.alpha)

    @classmethod
    def load(cls, path: str | Path) -> "RidgeRegressor":
        try:
            d = np.load(path)
            return cls(**{k: d[k] for k in ("mean", "scale", "coef", "intercept", "rms")}, alpha=float(d["alpha"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a saved ridge regressor ({exc})") from None
