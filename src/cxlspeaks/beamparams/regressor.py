"""A learned regressor of ln(photon energy) and ln(camera length) on geometry-aware profile features.

Features (:func:`profile_features`): the frame's counts in ``n_radial`` rings of equal width in *metres* of radius
from the geometry's beam centre (so a moved beam centre or another pixel size leaves them unchanged) out to
``r_max_m``, split into two azimuth sectors (cos^2 phi >= 1/2, along the polarisation x, and < 1/2: their ratio
measures the polarisation factor 1 - cos^2(phi) sin^2(2 theta), i.e. the scattering angle and so L). Per
(ring, sector): ln((photons + 1/2) / pixels), minus the mean over features (the water thickness x pulse energy
scale cancels). Bragg spots are removed first: pixels whose counts have Poisson tail probability < ``alpha`` under
their ring's mean count are masked (grown by 2 px), as in :func:`.water_fit.outlier_pixels`. Rings without good
pixels take the training mean.

Model: kernel ridge regression (RBF kernel k(z, z') = exp(-gamma |z - z'|^2) on standardised features z; Hastie,
Tibshirani & Friedman, Elements of Statistical Learning, 2nd ed., sec. 5.8 / 12.3.7): prediction y(z) = ybar +
k(z, Z)^T (K + alpha I)^-1 (Y - ybar) for the targets ln(E / eV) and ln(L / m), with alpha and gamma chosen by
5-fold cross-validation. (A linear ridge cannot follow the ring moving across fixed radial bins: its
cross-validated rms on the default run was 9 % in E, 12 % in L.) The stated uncertainty of each target is the
root-mean-square of the held-out (cross-validated) residuals, so sigma_E = E * rms_a, sigma_L = L * rms_c. A regressor only knows the
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

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: RBF widths gamma = GAMMAS / n_features (features standardised, so ||z - z'||^2 ~ 2 n_features apart)
GAMMAS = (0.03, 0.1, 0.3, 1.0)

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
    """Kernel ridge of (ln E, ln L) on features: ``mean``/``scale`` standardise, ``train`` (n, n_feat) the
    standardised training features, ``dual`` (n, 2) the weights (K + alpha I)^-1 (Y - ybar), ``intercept`` (2,)
    ybar, ``gamma`` the RBF width, ``rms`` (2,) the cross-validated residual rms of (ln E, ln L)."""

    mean: np.ndarray
    scale: np.ndarray
    train: np.ndarray
    dual: np.ndarray
    intercept: np.ndarray
    rms: np.ndarray
    alpha: float
    gamma: float

    @staticmethod
    def _kernel(z1: np.ndarray, z2: np.ndarray, gamma: float) -> np.ndarray:
        d2 = (z1 * z1).sum(1)[:, None] + (z2 * z2).sum(1)[None, :] - 2 * z1 @ z2.T
        return np.exp(-gamma * np.maximum(d2, 0.0))

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
        for g0 in GAMMAS:
            gamma = g0 / z.shape[1]
            k_all = cls._kernel(z, z, gamma)
            for alpha in ALPHAS:
                resid = np.empty_like(y)
                for k in range(folds):
                    tr, te = fold != k, fold == k
                    ym = y[tr].mean(axis=0)
                    dual = np.linalg.solve(k_all[np.ix_(tr, tr)] + alpha * np.eye(tr.sum()), y[tr] - ym)
                    resid[te] = k_all[np.ix_(te, tr)] @ dual + ym - y[te]
                rms = np.sqrt((resid ** 2).mean(axis=0))
                if best is None or rms.sum() < best[0].sum():
                    best = (rms, alpha, gamma)
        rms, alpha, gamma = best
        ym = y.mean(axis=0)
        dual = np.linalg.solve(cls._kernel(z, z, gamma) + alpha * np.eye(len(z)), y - ym)
        return cls(mean=mean, scale=scale, train=z, dual=dual, intercept=ym, rms=rms, alpha=float(alpha),
                   gamma=float(gamma))

    def predict(self, features: np.ndarray) -> list[BeamEstimate]:
        """One estimate per row of (n, n_feat) features, with the cross-validated sigmas."""
        x = np.atleast_2d(np.asarray(features, dtype=float))
        x = np.where(np.isfinite(x), x, self.mean)
        y = self._kernel((x - self.mean) / self.scale, self.train, self.gamma) @ self.dual + self.intercept
        out = []
        for a, c in y:
            e, L = float(np.exp(a)), float(np.exp(c))
            out.append(BeamEstimate(photon_energy_ev=e, clen_m=L, sigma_photon_energy_ev=e * float(self.rms[0]),
                                    sigma_clen_m=L * float(self.rms[1]), method="kernel_ridge_regressor"))
        return out

    def save(self, path: str | Path) -> None:
        np.savez(path, mean=self.mean, scale=self.scale, train=self.train, dual=self.dual,
                 intercept=self.intercept, rms=self.rms, alpha=self.alpha, gamma=self.gamma)

    @classmethod
    def load(cls, path: str | Path) -> "RidgeRegressor":
        """A regressor saved by :meth:`save`; ValueError (one line) for a file that is not one."""
        try:
            d = np.load(path)
            return cls(**{k: d[k] for k in ("mean", "scale", "train", "dual", "intercept", "rms")},
                       alpha=float(d["alpha"]), gamma=float(d["gamma"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a saved regressor ({exc})") from None
