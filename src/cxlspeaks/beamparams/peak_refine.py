"""Camera length, beam centre and photon energy of a hit from its Bragg spots, for a known cell and orientation.

Spot model (PHYSICS.md, the project's Bragg simulator :mod:`cxlspeaks.simulate.bragg`): reflection h has the lab
reciprocal vector g = R B h (B the columns a*, b*, c* in 1/m, R a small rotation refined from the given
orientation). In a polychromatic still it diffracts at its own Ewald wavelength

    lambda_g = -2 g_z / |g|^2,          k_out = g + z-hat / lambda_g,

so its spot lies where the ray along k_out meets the detector plane z = L:

    x = L k_out,x / k_out,z,  y = L k_out,y / k_out,z,   fs = x res - corner_x - 0.5 + d_fs,  ss = ... + d_ss

(raw convention, pixel centre at the integer index; (d_fs, d_ss) moves the beam centre). The spot *position* does
not depend on the central wavelength: lambda only decides which reflections fall in the band. So a least-squares
fit of the observed spot positions gives (L, beam centre, orientation), and the central wavelength is the mean of
the fitted lambda_g of the observed spots: for a tophat of full width w lambda_0 the lambda_g of excited reflections
are uniform over the band, so mean(lambda_g) estimates lambda_0 with standard error sd(lambda_g) / sqrt(n)
(= w lambda_0 / sqrt(12 n)); the orientation's uncertainty is propagated on top (lambda_g is steep in orientation:
d lambda_g / lambda_g ~ cot(theta) d phi).

The orientation and the Miller indices must come from somewhere: the frames file's truth (``astar, bstar, cstar``
and its peak list's h, k, l: an ORACLE, to be labelled as such) or an indexer (CrystFEL stream, then h, k, l by
rounding B^-1 g of each observed spot). Observed positions here are photon centroids of the recorded counts in a
small box (:func:`spot_centroids`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from ..constants import photon_energy_ev
from ..geometry import Geometry
from .water_fit import BeamEstimate


def _single_panel(geometry: Geometry):
    p = geometry.panels[0]
    if len(geometry.panels) != 1 or tuple(p.fs_vec) != (1.0, 0.0, 0.0) or tuple(p.ss_vec) != (0.0, 1.0, 0.0):
        raise ValueError("peak refinement needs one panel with fs along +x and ss along +y (the shipped Eigers)")
    return p


def predict_spots(hkl: np.ndarray, basis_per_m: np.ndarray, clen_m: float, geometry: Geometry,
                  d_fs: float = 0.0, d_ss: float = 0.0, rotvec: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fs, ss, lambda_g in m), each (n,), of reflections ``hkl`` (n, 3) for reciprocal axes ``basis_per_m``
    (3 x 3, columns a*, b*, c*, 1/m), rotated by ``rotvec`` (rad), at camera length ``clen_m`` with the beam
    centre moved by (d_fs, d_ss) pixels (module docstring). Reflections with g_z >= 0 get NaN."""
    p = _single_panel(geometry)
    basis = np.asarray(basis_per_m, dtype=float)
    if rotvec is not None:
        basis = Rotation.from_rotvec(rotvec).as_matrix() @ basis
    g = np.asarray(hkl, dtype=float) @ basis.T
    g2 = np.einsum("ij,ij->i", g, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(g[:, 2] < 0, -2 * g[:, 2] / g2, np.nan)
        k = g.copy()
        k[:, 2] += 1.0 / lam
        x = clen_m * k[:, 0] / k[:, 2]
        y = clen_m * k[:, 1] / k[:, 2]
    return x * p.res - p.corner_x - 0.5 + d_fs, y * p.res - p.corner_y - 0.5 + d_ss, lam


def spot_centroids(frame: np.ndarray, fs: np.ndarray, ss: np.ndarray, half_box: int = 2,
                   min_photons: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photon centroids (raw fs, ss) and photons of boxes of (2 half_box + 1)^2 pixels around (fs, ss) (n,);
    boxes off the array or with fewer than ``min_photons`` give NaN. The water under a box (~0.01 photons per
    pixel at the default flux) is not subtracted: at >= 10 photons it moves a centroid by < 0.03 px."""
    n_ss, n_fs = frame.shape
    cf = np.full(len(fs), np.nan)
    cs = np.full(len(fs), np.nan)
    tot = np.zeros(len(fs))
    off = np.arange(-half_box, half_box + 1)
    for k, (f, s) in enumerate(zip(np.rint(fs).astype(int), np.rint(ss).astype(int))):
        if f - half_box < 0 or s - half_box < 0 or f + half_box >= n_fs or s + half_box >= n_ss:
            continue
        box = np.asarray(frame[s - half_box:s + half_box + 1, f - half_box:f + half_box + 1], dtype=float)
        tot[k] = box.sum()
        if tot[k] >= min_photons:
            cf[k] = f + (box.sum(axis=0) * off).sum() / tot[k]
            cs[k] = s + (box.sum(axis=1) * off).sum() / tot[k]
    return cf, cs, tot


def miller_indices(fs: np.ndarray, ss: np.ndarray, basis_per_m: np.ndarray, photon_energy_ev_: float,
                   clen_m: float, geometry: Geometry) -> np.ndarray:
    """Nearest integer h, k, l (n, 3) of observed spots for an indexed orientation: g = k_out - k_in at the nominal
    wavelength, h = round(B^-1 g) (what an indexer assigns)."""
    p = _single_panel(geometry)
    lam = 12398.419843320026e-10 / photon_energy_ev_
    x = (np.asarray(fs) + 0.5 + p.corner_x) / p.res
    y = (np.asarray(ss) + 0.5 + p.corner_y) / p.res
    d = np.stack([x, y, np.full_like(x, clen_m)], axis=1)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    g = (d - np.array([0, 0, 1.0])) / lam
    return np.rint(g @ np.linalg.inv(np.asarray(basis_per_m)).T).astype(int)


def refine_from_spots(hkl: np.ndarray, fs_obs: np.ndarray, ss_obs: np.ndarray, basis_per_m: np.ndarray,
                      geometry: Geometry, clen_start_m: float, refine_orientation: bool = True,
                      method: str = "peak_refine") -> BeamEstimate:
    """Least squares over (ln L, d_fs, d_ss[, rotation vector]) of predicted vs observed spot positions (pixels),
    then lambda_0 = mean(lambda_g) (module docstring). ``hkl`` (n, 3) int, ``fs_obs, ss_obs`` (n,) raw pixels.

    Returns a :class:`BeamEstimate` (extra: d_fs, d_ss, rms_px, n_spots, rotation_deg). Raises ValueError with
    fewer than 6 usable spots (n finite observations with g_z < 0)."""
    hkl = np.asarray(hkl, dtype=float)
    ok = np.isfinite(fs_obs) & np.isfinite(ss_obs)
    _, _, lam0 = predict_spots(hkl, basis_per_m, clen_start_m, geometry)
    ok &= np.isfinite(lam0)
    if ok.sum() < 6:
        raise ValueError(f"peak refinement needs at least 6 indexed spots, got {int(ok.sum())}")
    hkl, fo, so = hkl[ok], np.asarray(fs_obs)[ok], np.asarray(ss_obs)[ok]
    n_par = 6 if refine_orientation else 3

    def unpack(x):
        rot = x[3:6] * 1e-3 if refine_orientation else None
        return np.exp(x[0]), x[1], x[2], rot

    def residuals(x):
        L, dfs, dss, rot = unpack(x)
        f, s, _ = predict_spots(hkl, basis_per_m, L, geometry, dfs, dss, rot)
        return np.nan_to_num(np.concatenate([f - fo, s - so]), nan=1e3)

    x0 = np.zeros(n_par)
    x0[0] = np.log(clen_start_m)
    fit = least_squares(residuals, x0, method="lm", x_scale=np.r_[1e-3, 1.0, 1.0, [1.0] * (n_par - 3)])
    res = fit.fun
    dof = max(len(res) - n_par, 1)
    s2 = float(res @ res / dof)
    cov = np.linalg.pinv(fit.jac.T @ fit.jac) * s2
    L, dfs, dss, rot = unpack(fit.x)
    _, _, lam = predict_spots(hkl, basis_per_m, L, geometry, dfs, dss, rot)
    lam_mean = float(np.mean(lam))
    var_spread = float(np.var(lam, ddof=1) / len(lam))
    # propagate the fitted parameters' covariance into mean(lambda_g) (numerical gradient)
    grad = np.zeros(n_par)
    for j in range(n_par):
        step = np.zeros(n_par)
        step[j] = 1e-6 if j == 0 else 1e-4
        l_p, fs_p, ss_p, rot_p = unpack(fit.x + step)
        _, _, lp = predict_spots(hkl, basis_per_m, l_p, geometry, fs_p, ss_p, rot_p)
        grad[j] = (np.mean(lp) - lam_mean) / step[j]
    var_lam = var_spread + float(grad @ cov @ grad)
    e = photon_energy_ev(lam_mean)
    return BeamEstimate(photon_energy_ev=e, clen_m=float(L), sigma_photon_energy_ev=e * np.sqrt(var_lam) / lam_mean,
                        sigma_clen_m=float(L * np.sqrt(cov[0, 0])), method=method, n_photons=0.0,
                        extra={"d_fs": float(dfs), "d_ss": float(dss), "rms_px": float(np.sqrt(np.mean(res ** 2))),
                               "n_spots": int(len(hkl)),
                               "rotation_deg": float(np.degrees(np.linalg.norm(rot))) if rot is not None else 0.0})
