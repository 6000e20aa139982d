"""Azimuthal profiles of a frame's counts about the geometry's beam centre, and the moments that give the expected
water photons per profile bin for any (photon energy, camera length).

A detector whose panels lie in one plane perpendicular to the beam (every shipped geometry) puts pixel i at the lab
position (x_i, y_i, L) with L the camera length (clen + coffset) and (x, y) = (0, 0) the geometry's beam centre. Its
radius r_i = sqrt(x_i^2 + y_i^2), azimuth cos^2(phi_i) = x_i^2 / r_i^2, scattering angle
2 theta_i = atan(r_i / L), solid angle (flat pixel of area A, PHYSICS.md; Geometry.solid_angles_sr)

    dOmega_i = A cos(alpha_i) / R_i^2 = A L / (r_i^2 + L^2)^(3/2)            (the obliquity cos^3(2 theta) A / L^2)

and Thomson polarisation factor for a beam polarised along x by the fraction f (Geometry.polarisation_factors)

    P_i = 1 - [f x_i^2 + (1 - f) y_i^2] / (r_i^2 + L^2).

The profile groups good pixels into bins of radius (width ``bin_width_px`` pixels) and of cos^2(phi) (``n_phi``
equal bins; the polarisation makes the water ring brighter along y than along x, by a factor that depends on
sin^2(2 theta) = r^2 / (r^2 + L^2) alone, i.e. on L and not on the photon energy). Per bin b it keeps the pixel
count n_b, S2_b = sum r_i^2 and X2_b = sum x_i^2, so that for any L

    sum_{i in b} P_i dOmega_i ~= A L / (rho_b^2 + L^2)^(3/2) [n_b - (f X2_b + (1 - f) (S2_b - X2_b)) / (rho_b^2 + L^2)]

with rho_b^2 = S2_b / n_b (exact when the bin's pixels share one radius; the error is second order in the bin width
over the scale on which the water profile changes: against water_intensity summed over each bin, at most 4e-6
relative on the Eiger 4M with the default 2-pixel bins at 7 keV, 0.15 m; 2e-4 on the tiny detector's 1.2 mm pixels
with 0.25-pixel bins, tests/test_beamparams.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import BadRegion, Geometry


def _check_flat(geometry: Geometry) -> tuple[float, float, float]:
    """(distance L in m, pixel area in m^2, res in px/m) of a detector whose panels share one plane normal to the
    beam; ValueError (one line) otherwise."""
    if not geometry.is_resolved:
        raise ValueError("geometry has per-frame references (clen or photon energy paths); resolve it first")
    dist = {round(p.distance_m, 12) for p in geometry.panels}
    tilted = [p.name for p in geometry.panels if abs(p.fs_vec[2]) > 1e-9 or abs(p.ss_vec[2]) > 1e-9]
    res = {round(p.res, 6) for p in geometry.panels}
    if tilted or len(dist) != 1 or len(res) != 1:
        what = f"panel {tilted[0]} is tilted" if tilted else "panels differ in clen + coffset or res"
        raise ValueError(f"beamparams needs one flat detector plane normal to the beam: {what}")
    p = geometry.panels[0]
    area = float(np.linalg.norm(np.cross(p.fs_m(), p.ss_m())))
    return float(p.distance_m), area, float(p.res)


@dataclass
class ProfileBins:
    """The (radius, cos^2 phi) bins of one detector's good pixels.

    Attributes (all float64 unless said): ``pixel_bin`` int64 (ss, fs), the bin of every pixel (-1 for masked or
    off-panel pixels); ``n_pix``, ``sum_r2_m2``, ``sum_x2_m2`` (n_bins,): pixel count, sum r^2 and sum x^2 (m^2);
    ``radius_m`` (n_radial,): bin centres; ``clen_m`` the geometry's camera length, ``pixel_area_m2`` A,
    ``bin_width_m`` and ``n_phi``; bin b has radial index b // n_phi and azimuth index b % n_phi.
    """

    pixel_bin: np.ndarray
    n_pix: np.ndarray
    sum_r2_m2: np.ndarray
    sum_x2_m2: np.ndarray
    bin_width_m: float
    n_phi: int
    clen_m: float
    pixel_area_m2: float
    res_px_per_m: float

    @classmethod
    def from_geometry(cls, geometry: Geometry, bin_width_px: float = 2.0, n_phi: int = 4,
                      extra_mask: np.ndarray | None = None) -> "ProfileBins":
        """Bins of ``bin_width_px`` pixels in radius and ``n_phi`` in cos^2(phi) over ``geometry.mask`` (and
        ``extra_mask``, bool (ss, fs) True = usable, when given). ValueError for a non-positive width or n_phi."""
        if not bin_width_px > 0 or int(n_phi) < 1:
            raise ValueError(f"profile bins need bin_width_px > 0 and n_phi >= 1, got {bin_width_px}, {n_phi}")
        clen, area, res = _check_flat(geometry)
        pos = geometry.pixel_positions_m
        good = geometry.mask & np.isfinite(pos[..., 0])
        if extra_mask is not None:
            good = good & np.asarray(extra_mask, dtype=bool)
        x, y = pos[..., 0][good], pos[..., 1][good]
        r2 = x * x + y * y
        width = bin_width_px / res
        ir = np.floor(np.sqrt(r2) / width).astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            c2 = np.where(r2 > 0, x * x / r2, 0.0)
        iphi = np.minimum((c2 * n_phi).astype(np.int64), n_phi - 1)
        b = ir * n_phi + iphi
        n_bins = (int(b.max()) // n_phi + 1) * n_phi if b.size else n_phi
        pixel_bin = np.full(geometry.shape, -1, dtype=np.int64)
        pixel_bin[good] = b
        return cls(pixel_bin=pixel_bin, n_pix=np.bincount(b, minlength=n_bins).astype(float),
                   sum_r2_m2=np.bincount(b, r2, minlength=n_bins), sum_x2_m2=np.bincount(b, x * x, minlength=n_bins),
                   bin_width_m=width, n_phi=int(n_phi), clen_m=clen, pixel_area_m2=area, res_px_per_m=res)

    @property
    def n_bins(self) -> int:
        return len(self.n_pix)

    @property
    def rho2_m2(self) -> np.ndarray:
        """Mean r^2 of each bin's pixels (m^2); 0 for empty bins."""
        return np.where(self.n_pix > 0.5, self.sum_r2_m2 / np.maximum(self.n_pix, 1), 0.0)

    def without(self, drop: np.ndarray, geometry: Geometry) -> "ProfileBins":
        """A copy with the pixels where ``drop`` (bool (ss, fs)) is True taken out of their bins (e.g. around
        peaks); ``geometry`` is the detector the bins were made from (its pixel positions give r^2 and x^2)."""
        sel = np.asarray(drop, dtype=bool) & (self.pixel_bin >= 0)
        if not sel.any():
            return self
        b = self.pixel_bin[sel]
        pos = geometry.pixel_positions_m[sel]
        x2 = pos[:, 0] ** 2
        r2 = x2 + pos[:, 1] ** 2
        pixel_bin = self.pixel_bin.copy()
        pixel_bin[sel] = -1
        n = self.n_bins
        return ProfileBins(pixel_bin=pixel_bin, n_pix=self.n_pix - np.bincount(b, minlength=n),
                           sum_r2_m2=self.sum_r2_m2 - np.bincount(b, r2, minlength=n),
                           sum_x2_m2=self.sum_x2_m2 - np.bincount(b, x2, minlength=n), bin_width_m=self.bin_width_m,
                           n_phi=self.n_phi, clen_m=self.clen_m, pixel_area_m2=self.pixel_area_m2,
                           res_px_per_m=self.res_px_per_m)

    def counts(self, frame: np.ndarray) -> np.ndarray:
        """Photons per bin (float64 (n_bins,)) of a frame (ss, fs) over the bins' pixels (shape must match)."""
        frame = np.asarray(frame)
        if frame.shape != self.pixel_bin.shape:
            raise ValueError(f"frame shape {frame.shape} does not match the detector's {self.pixel_bin.shape}")
        sel = self.pixel_bin >= 0
        return np.bincount(self.pixel_bin[sel], frame[sel].astype(np.float64), minlength=self.n_bins)

    def geometric_factor(self, clen_m: np.ndarray, polarisation_fraction: float = 1.0) -> np.ndarray:
        """sum over each bin of P_i dOmega_i (sr) at camera length(s) ``clen_m`` (shape (k,) -> (k, n_bins)),
        the moment formula of the module docstring."""
        L = np.atleast_1d(np.asarray(clen_m, dtype=float))[:, None]
        d2 = self.rho2_m2[None, :] + L * L
        f = polarisation_fraction
        pol = self.n_pix - (f * self.sum_x2_m2 + (1 - f) * (self.sum_r2_m2 - self.sum_x2_m2)) / d2
        return self.pixel_area_m2 * L / d2 ** 1.5 * pol

    def two_theta_rad(self, clen_m: np.ndarray) -> np.ndarray:
        """Scattering angle of each bin's mean radius, atan(rho_b / L) ((k,) -> (k, n_bins))."""
        L = np.atleast_1d(np.asarray(clen_m, dtype=float))[:, None]
        return np.arctan2(np.sqrt(self.rho2_m2)[None, :], L)


def shift_frame_and_geometry(frame: np.ndarray, geometry: Geometry, d_fs: int, d_ss: int
                             ) -> tuple[np.ndarray, Geometry]:
    """The frame and its detector after the pattern moved by (d_fs, d_ss) whole pixels on the array: the beam centre
    moves with it (every panel's corner_x -= d_fs, corner_y -= d_ss) and so do the bad regions given in pixels;
    the strip that enters from outside the array is masked. Shapes: frame (ss, fs) in, same shape out.

    A single-panel detector with fs along +x and ss along +y is required (ValueError otherwise), as in the shipped
    Eiger geometries, so that array shifts are lab translations.
    """
    if len(geometry.panels) != 1 or geometry.panels[0].fs_vec[:2] != (1.0, 0.0) \
            or geometry.panels[0].ss_vec[:2] != (0.0, 1.0):
        raise ValueError("shift_frame_and_geometry needs one panel with fs along +x and ss along +y")
    d_fs, d_ss = int(d_fs), int(d_ss)
    n_ss, n_fs = frame.shape
    out = np.zeros_like(frame)
    src_ss = slice(max(0, -d_ss), min(n_ss, n_ss - d_ss))
    dst_ss = slice(max(0, d_ss), min(n_ss, n_ss + d_ss))
    src_fs = slice(max(0, -d_fs), min(n_fs, n_fs - d_fs))
    dst_fs = slice(max(0, d_fs), min(n_fs, n_fs + d_fs))
    out[dst_ss, dst_fs] = frame[src_ss, src_fs]
    p = geometry.panels[0]
    regions = []
    for r in geometry.bad_regions:
        if not r.in_pixels:
            raise ValueError(f"bad region {r.name} is in lab coordinates; shift_frame_and_geometry needs pixel ones")
        regions.append(BadRegion(name=r.name, min_fs=r.min_fs + d_fs, max_fs=r.max_fs + d_fs,
                                 min_ss=r.min_ss + d_ss, max_ss=r.max_ss + d_ss, panel=r.panel))
    strips = [(0, d_fs - 1, 0, n_ss - 1) if d_fs > 0 else (n_fs + d_fs, n_fs - 1, 0, n_ss - 1),
              (0, n_fs - 1, 0, d_ss - 1) if d_ss > 0 else (0, n_fs - 1, n_ss + d_ss, n_ss - 1)]
    for k, (f0, f1, s0, s1) in enumerate(strips):
        if f0 <= f1 and s0 <= s1 and (d_fs, d_ss)[k] != 0:
            regions.append(BadRegion(name=f"bad_shift{k}", min_fs=f0, max_fs=f1, min_ss=s0, max_ss=s1,
                                     panel=p.name))
    moved = geometry.replace_panels(corner_x=p.corner_x - d_fs, corner_y=p.corner_y - d_ss)
    moved.bad_regions = regions
    return out, moved
