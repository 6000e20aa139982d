"""peakfinder8: Bragg-peak search by radial-statistics thresholding (Barty et al., Cheetah), vectorised with numpy.

peakfinder8 is the peak finder of Cheetah (A. Barty et al., "Cheetah: software for high-throughput reduction and
analysis of serial femtosecond X-ray diffraction data", J. Appl. Cryst. 47, 1118-1131, 2014), also used by
CrystFEL's indexamajig (``--peaks=peakfinder8``) and by OnDA Monitor. This module reproduces the steps of CrystFEL
``libcrystfel/src/peakfinder8.c`` at tag 0.10.2 (the full, not the ``--peakfinder8-fast``, mode), read from the
source; it is an independent numpy/scipy implementation, not a translation of that code. All intensities are in
the frame's units (photons for this package's frames), all lengths in pixels.

Steps (C names in brackets)
---------------------------
0. **Mask** (``create_peakfinder_mask``). A pixel takes part when it is good and ``min_res < r < max_res``
   (both strict), r being its distance from the beam axis. The mask applies to every later step: radial
   statistics, peak pixels and background pixels.
1. **Radial statistics** (``fill_radial_bins``, ``compute_radial_stats``): per radius bin an offset, sigma and
   peak threshold from iterated cuts; the rules and C's quirks are in :mod:`.radial`.
2. **Peak search** (``process_panel``, ``peak_search``). Pixels with ``value > threshold`` of their own bin
   (strict) form 8-connected regions (C floods from a seed through the 3 x 3 neighbourhood), never crossing a
   panel edge. C seeds a region only from pixels that are not on the first/last row or column of their panel,
   scanning each panel in raster order (ss, then fs); a region whose pixels all lie on the panel border is
   therefore never found, and regions are reported in the raster order of their seed (first non-border pixel).
   Regions with ``npix < min_pix_count`` or ``npix > max_pix_count`` are dropped; so are regions whose
   ``sum(value - radial offset)`` is below 1e-10 in magnitude.
3. **Local background** (``search_in_ring``). The window is centred on the region's first-pass centroid
   (weights ``value - radial offset``) rounded with ``rint`` in panel coordinates. Despite C's name "ring" it is a
   *disc*: with ``w = 2 local_bg_radius``, offsets (dss, dfs) in ``[-w, w - 1]`` (asymmetric, as the C loop
   bounds) with ``dss^2 + dfs^2 <= w^2`` - there is no inner radius; ``local_bg_radius`` only sets w. A pixel in
   the disc counts when it is inside the panel, masked in and ``value < threshold`` of its bin (strict; this
   also excludes every pixel of every region, which C tracks with its peak map). local offset = their mean,
   local sigma = sqrt(mean(value^2) - offset^2); a negative variance gives sigma 0.01; with no pixel at all the
   local offset is the radial offset of the centroid pixel's bin and sigma 0.01. ``background max`` = the
   largest counted value, floored at 0.
4. **Integration and cuts**. photons = ``sum(value - local offset)`` over the region; max_photons =
   ``max(0, max(value) - local offset)`` (C's ``max_i``, background-subtracted, floored at 0); the centroid is
   weighted by the *raw* values, ``sum(value * index) / |sum(value)|`` (region dropped when ``|sum(value)|`` <
   1e-10). SNR = photons / local sigma - the per-pixel sigma, *not* sigma sqrt(npix). When
   ``|local sigma| <= 1e-10`` C sets SNR = 0: on photon-counting frames an all-zero background disc (likely for a
   compact spot at 0.002 photons/pixel: a disc of radius 6 holds ~0.2 photons) has sigma exactly 0, so such a
   peak gets SNR 0 and fails any ``min_snr > 0`` (reproduced; a larger ``local_bg_radius`` makes it rarer).
   Cuts, in C's order: SNR < min_snr; ``max_photons < background max - local offset``; centroid outside the
   panel.
5. **Peak cap**. Panels are processed in ascending panel number; the kept peaks are the first ``max_num_peaks``
   of the (panel, seed raster order) list. In C the cap is on the *total* over the frame (each panel call is
   capped at max_num_peaks and a running "remaining" count caps the sum), so this module caps the total too.

Output positions use the raw convention of this package (pixel centre at the integer index); CrystFEL adds 0.5.

Deviations from C, and why
--------------------------
* Arithmetic is float64 throughout (C: float32 sums and thresholds); results can differ only for values within
  float32 rounding of a cut.
* The radius of each pixel is the caller's ``radius_px`` (pixel-centre distance). C's ``compute_radius_maps``
  uses the distance of the pixel *corner* with x and y truncated to integers, so a few pixels may fall in a
  neighbouring bin compared with CrystFEL.
* C's region flood reads one entry past the end of its pixel list (``p <= num_pix_in_peak``); entries never
  written are zero, i.e. panel pixel (0, 0), so an above-threshold region touching the panel's 2 x 2 corner is
  merged into the first region flooded in that panel. That is a memory-use bug depending on the history of the
  scratch buffer; it is not reproduced (regions are exact 8-connected components).
* If the first-pass centroid rounds outside its panel (possible only with mixed-sign weights), the fallback
  local offset reads the nearest pixel of the panel (C would read outside the panel's array).
* No saturation cut (C's ``use_saturated``, true by default in indexamajig, with the panel's ``max_adu``).
* Only the full mode: the ``--peakfinder8-fast`` reservoir sampling of 100 pixels per radius bin is not offered.
* 8-connected regions are labelled with ``scipy.sparse.csgraph.connected_components`` on the above-threshold
  pixels only (a handful on a photon-counting frame) instead of ``scipy.ndimage.label`` on the whole frame; the
  components are the same, per panel.

Photon-counting frames
----------------------
Two C behaviours matter at 0.002-0.05 photons/pixel. (a) Radial statistics: if ``offset + min_snr sigma`` of a
bin falls below 1 photon (it does below ~0.04 photons/pixel with min_snr 5) and ``adc_threshold < 1``, the next
iteration keeps only the zeros, sigma becomes 0, the bin empties and oscillates between FLT_MAX and odd values;
an ``adc_threshold`` above 1 photon keeps the 1-photon pixels in the statistics and avoids this. A bin whose
pixels are all zero always ends at FLT_MAX. (b) Local background: see the SNR rule of step 4.

Speed: per geometry, the radius bin, mask and panel maps are computed once (``Peakfinder8.__init__``). Per frame
the work is done on the non-zero masked pixels only - zeros are counted per bin from the precomputed pixel counts,
and small integer values enter the radial iterations as per-bin histograms whose cumulative sums give each
iteration's in-range count, sum and sum of squares per bin - so a sparse photon-counting frame costs one pass over
the frame to find its non-zero pixels (none when the caller passes them: ``find(frame, nonzero=...)``) plus work
proportional to their number; above-threshold pixels are grouped with a sparse graph, and the background discs of
all peaks are gathered at once with precomputed offsets (about 4-7 ms per 4.5 Mpx Eiger frame on one core at
0.01-0.05 photons/pixel with 40 spots when given the non-zero pixels, 3-5 ms more when it finds them itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .radial import RadialStats, radial_stats

__all__ = ["CRYSTFEL_DEFAULTS", "PEAK_COLUMNS", "PHOTON_COUNTING", "Peakfinder8", "Peakfinder8Settings"]

#: Output columns and dtypes of :meth:`Peakfinder8.find`.
PEAK_COLUMNS = {"fs": np.float64, "ss": np.float64, "photons": np.float64, "snr": np.float64,
                "npix": np.int64, "max_photons": np.float64, "score": np.float64}

_TINY = 1e-10                                # C's "is zero" tolerance for sums and sigma
_NO_LOCAL_SIGMA = 0.01                       # C's local sigma when the disc is empty or its variance negative


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class Peakfinder8Settings:
    """peakfinder8 parameters (indexamajig names in brackets); lengths in pixels, intensities in frame units."""

    adc_threshold: float        # [--threshold] lowest per-pixel threshold, applied at every radial iteration
    min_snr: float              # [--min-snr] radial cut width (sigmas) and the peak SNR cut
    min_pix_count: int          # [--min-pix-count]
    max_pix_count: int          # [--max-pix-count]
    local_bg_radius: int        # [--local-bg-radius] background disc radius is 2 * local_bg_radius
    min_res_px: float           # [--min-res] pixels with r <= min_res_px are ignored (0: only r = 0 itself)
    max_res_px: float           # [--max-res] pixels with r >= max_res_px are ignored; math.inf = whole frame
    max_num_peaks: int = 2048   # total over the frame (indexamajig passes 2048)
    iterations: int = 5         # radial-statistics iterations (fixed at 5 in C)

    def __post_init__(self) -> None:
        for name in ("adc_threshold", "min_snr"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value):
                raise ValueError(f"Peakfinder8Settings.{name} must be a finite number, got {value!r}")
        if self.min_snr < 0:
            raise ValueError(f"Peakfinder8Settings.min_snr must be >= 0, got {self.min_snr!r}")
        for name, low in (("min_pix_count", 1), ("max_pix_count", 1), ("local_bg_radius", 1),
                          ("max_num_peaks", 1), ("iterations", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"Peakfinder8Settings.{name} must be an integer >= {low}, got {value!r}")
        if self.max_pix_count < self.min_pix_count:
            raise ValueError(f"Peakfinder8Settings.max_pix_count ({self.max_pix_count}) must be >= "
                             f"min_pix_count ({self.min_pix_count})")
        if not _is_real(self.min_res_px) or not math.isfinite(self.min_res_px) or self.min_res_px < 0:
            raise ValueError(f"Peakfinder8Settings.min_res_px must be a finite number >= 0, got {self.min_res_px!r}")
        if not _is_real(self.max_res_px) or math.isnan(self.max_res_px) or self.max_res_px <= self.min_res_px:
            raise ValueError(f"Peakfinder8Settings.max_res_px must be > min_res_px ({self.min_res_px}), "
                             f"got {self.max_res_px!r}")


#: indexamajig 0.10.2 defaults (src/indexamajig.c): --threshold=800 --min-snr=5 --min-pix-count=2
#: --max-pix-count=200 --local-bg-radius=3 --min-res=0 --max-res=1200; 2048 peaks (process_image.c).
CRYSTFEL_DEFAULTS = Peakfinder8Settings(adc_threshold=800.0, min_snr=5.0, min_pix_count=2, max_pix_count=200,
                                        local_bg_radius=3, min_res_px=0.0, max_res_px=1200.0)

#: The setting for integer photon-count frames (water background ~0.002-0.05 photons/pixel), tuned on 56 training
#: frames of the default configuration (8 each of datasets 01, 03, 05, 07, 09, low, extreme) over thresholds 0.5 /
#: 1.5 / 2.5, min-pix 1 / 2 / 3 and min-snr 3 / 5 for the best F1 on reflections of >= 3 and >= 10 photons at
#: every flux level: a peak needs at least two connected pixels of >= 2 photons (offset + 5 sigma is below
#: 1.5 photons at these backgrounds, so the ADC threshold decides; keep it above 1, see the module notes), the
#: whole frame is searched. F1 (>= 3 / >= 10 photons) there: normal 0.92 / 0.96, low 0.79 / 0.95, extreme
#: 0.51 / 0.82, against 0.87 / 0.92, 0.59 / 0.79, 0.29 / 0.58 for threshold 3 with min-pix 1 (the setting of
#: the project targets (TARGETS.md of the planning docs)). An isolated peak whose background disc holds no photon at all gets SNR 0 and is
#: dropped (C's rule; spot tails usually put photons in the disc).
PHOTON_COUNTING = Peakfinder8Settings(adc_threshold=1.5, min_snr=5.0, min_pix_count=2, max_pix_count=200,
                                      local_bg_radius=3, min_res_px=0.0, max_res_px=math.inf)


def _empty_peaks() -> pd.DataFrame:
    return pd.DataFrame({name: np.zeros(0, dtype=dt) for name, dt in PEAK_COLUMNS.items()})


class Peakfinder8:
    """Per-detector precomputation + the finder.

    ``radius_px``: (ss, fs) distance of each pixel centre from the beam axis in pixels (finite and >= 0 where
    good). ``good``: (ss, fs) bool, True = usable pixel. ``panel_index``: (ss, fs) int panel number; each panel
    (number >= 0) must fill a rectangle of the array, as CrystFEL panels do; negative = no panel (ignored);
    None = the whole array is one panel. Panels are processed in ascending number.
    """

    def __init__(self, radius_px: np.ndarray, good: np.ndarray, settings: Peakfinder8Settings,
                 panel_index: np.ndarray | None = None):
        if not isinstance(settings, Peakfinder8Settings):
            raise TypeError(f"settings must be a Peakfinder8Settings, got {type(settings).__name__}")
        radius = np.asarray(radius_px, dtype=np.float64)
        good = np.asarray(good)
        if radius.ndim != 2:
            raise ValueError(f"radius_px must be 2-D (ss, fs), got shape {radius.shape}")
        if good.shape != radius.shape:
            raise ValueError(f"good has shape {good.shape}, radius_px has shape {radius.shape}")
        if good.dtype != np.bool_:
            raise ValueError(f"good must be a bool array, got dtype {good.dtype}")
        self.settings = settings
        self.shape = radius.shape
        n_ss, n_fs = self.shape
        good = good.copy()

        # Panels: rank 0..n-1 in ascending panel number, each one a full rectangle [ss0, ss1] x [fs0, fs1].
        if panel_index is None:
            self._panel_rank = None
            self._panel_box = np.array([[0, n_ss - 1, 0, n_fs - 1]], dtype=np.int64)
        else:
            panel_index = np.asarray(panel_index)
            if panel_index.shape != self.shape:
                raise ValueError(f"panel_index has shape {panel_index.shape}, radius_px has shape {self.shape}")
            if not np.issubdtype(panel_index.dtype, np.integer):
                raise ValueError(f"panel_index must be an integer array, got dtype {panel_index.dtype}")
            in_panel = panel_index >= 0                # negative panel numbers: no panel
            good &= in_panel
            sizes = np.bincount(panel_index[in_panel].ravel()) if in_panel.any() else np.zeros(0, np.int64)
            numbers = np.flatnonzero(sizes)            # panel numbers in use, ascending
            lut = np.full(len(sizes), -1, dtype=np.int32)
            lut[numbers] = np.arange(len(numbers), dtype=np.int32)
            rank = np.where(in_panel, lut[np.where(in_panel, panel_index, 0)], -1)
            boxes = []
            for k, sl in enumerate(ndimage.find_objects(rank + 1)):
                box = (sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1)
                if (box[1] - box[0] + 1) * (box[3] - box[2] + 1) != sizes[numbers[k]]:
                    raise ValueError(f"panel {numbers[k]} of panel_index does not fill a rectangle of the array")
                boxes.append(box)
            self._panel_box = np.array(boxes, dtype=np.int64).reshape(-1, 4)
            self._panel_rank = rank.astype(np.int32).ravel()

        bad_r = good & ~(np.isfinite(radius) & (radius >= 0))
        if bad_r.any():
            ss, fs = np.argwhere(bad_r)[0]
            raise ValueError(f"radius_px must be finite and >= 0 at good pixels; (ss={ss}, fs={fs}) is "
                             f"{radius[ss, fs]!r}")
        self._good = good.ravel()
        bins = np.zeros(self.shape, dtype=np.int64)
        bins[good] = np.rint(radius[good]).astype(np.int64)
        with np.errstate(invalid="ignore"):
            mask = good & (radius > settings.min_res_px) & (radius < settings.max_res_px)
        self._mask = mask.ravel()
        self.n_bins = int(bins.max()) + 1             # bins of every good pixel (disc pixels look them up)
        # int32 when it holds every bin: half the memory traffic of the per-frame look-ups
        self._bins = bins.ravel().astype(np.int32) if self.n_bins < 2 ** 26 else bins.ravel()
        self._n_mask_per_bin = np.bincount(self._bins[self._mask], minlength=self.n_bins).astype(np.float64)

        # Background disc offsets: [-w, w - 1] both ways, dss^2 + dfs^2 <= w^2, w = 2 local_bg_radius.
        w = 2 * settings.local_bg_radius
        dss, dfs = np.meshgrid(np.arange(-w, w), np.arange(-w, w), indexing="ij")
        keep = dss ** 2 + dfs ** 2 <= w ** 2
        self._disc_dss = dss[keep].astype(np.int64)
        self._disc_dfs = dfs[keep].astype(np.int64)

    # ------------------------------------------------------------------ radial statistics
    def _radial_stats_sparse(self, b: np.ndarray, v: np.ndarray) -> RadialStats:
        """Iterative radial statistics from the masked non-zero pixels (bins b, values v); zeros are implicit."""
        return radial_stats(b, v, self.n_bins, self._n_mask_per_bin, self.settings)

    def _prepare(self, frame, nonzero=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Validate a frame; return its flat view and the flat index, bin and float64 value of masked non-zeros
        (``nonzero``: the caller's (flat index, value) of every non-zero pixel, see :meth:`find`)."""
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"frame has shape {frame.shape}, expected {self.shape} (the detector's shape)")
        if not (np.issubdtype(frame.dtype, np.integer) or np.issubdtype(frame.dtype, np.floating)
                or frame.dtype == np.bool_):
            raise ValueError(f"frame must hold real numbers, got dtype {frame.dtype}")
        flat = frame.ravel()
        if nonzero is None:
            nz = np.flatnonzero(flat != 0)             # NaN and inf are non-zero, so they are all in here
            values = flat[nz]
        else:
            nz, values = nonzero
        if np.issubdtype(frame.dtype, np.floating):
            bad = ~np.isfinite(values)
            if bad.any():
                bad_good = nz[bad][self._good[nz[bad]]]
                if len(bad_good):
                    ss, fs = divmod(int(bad_good[0]), self.shape[1])
                    raise ValueError(f"frame has {len(bad_good)} NaN/inf value(s) at good pixels, first at "
                                     f"(ss={ss}, fs={fs})")
        keep = self._mask[nz]
        nz = nz[keep]
        return flat, nz, self._bins[nz], values[keep].astype(np.float64)

    def _radial_stats(self, frame: np.ndarray) -> RadialStats:
        """Per radius bin: offset, sigma, threshold and pixel count after the iterations (for tests, plots)."""
        _, _, b, v = self._prepare(frame)
        return self._radial_stats_sparse(b, v)

    # ------------------------------------------------------------------ peak search
    def find(self, frame: np.ndarray, nonzero: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
        """Peaks of one (ss, fs) frame: columns fs, ss, photons, snr, npix, max_photons, score (see module).

        ``nonzero``: when the caller already has them, the ascending flat indices of *every* non-zero pixel of
        ``frame`` and their values (``frame.ravel()[index]``), which saves the pass over the frame that finds them;
        the result is the same."""
        s = self.settings
        n_fs = self.shape[1]
        flat, nz, b, v = self._prepare(frame, nonzero)
        stats = self._radial_stats_sparse(b, v)
        threshold, roffset = stats.threshold, stats.offset

        # Pixels above their bin's threshold. Zeros can only be above a negative threshold (rare: a negative
        # adc_threshold); then the zero pixels of those bins join the candidates.
        above = v > threshold[b]
        cand, cv = nz[above], v[above]
        if (threshold[self._n_mask_per_bin > 0] < 0).any():
            cand_zero = np.flatnonzero(self._mask & (flat == 0) & (threshold[self._bins] < 0))
            if len(cand_zero):
                cand = np.concatenate([cand, cand_zero])
                cv = np.concatenate([cv, np.zeros(len(cand_zero))])
                order = np.argsort(cand, kind="stable")
                cand, cv = cand[order], cv[order]
        n = len(cand)
        if n == 0:
            return _empty_peaks()
        cb = self._bins[cand]
        css, cfs = np.divmod(cand, n_fs)
        cpan = self._panel_rank[cand] if self._panel_rank is not None else np.zeros(n, dtype=np.int32)

        # 8-connected components among the candidates, never across a panel edge or the array's fs edges.
        rows, cols = [], []
        for dss, dfs in ((0, 1), (1, -1), (1, 0), (1, 1)):
            target = cand + dss * n_fs + dfs
            pos = np.minimum(np.searchsorted(cand, target), n - 1)
            ok = (cand[pos] == target) & (cfs + dfs >= 0) & (cfs + dfs < n_fs)
            if self._panel_rank is not None:
                ok &= cpan[pos] == cpan
            rows.append(np.flatnonzero(ok))
            cols.append(pos[ok])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
        n_reg, comp = connected_components(graph, directed=False)

        box = self._panel_box[cpan]                    # (n, 4): ss0, ss1, fs0, fs1 of each candidate's panel
        npix = np.bincount(comp, minlength=n_reg)
        reg_panel = np.zeros(n_reg, dtype=np.int64)
        reg_panel[comp] = cpan
        # Seed = first pixel in raster order not on its panel's border; regions without one are never seeded.
        interior = np.flatnonzero((css > box[:, 0]) & (css < box[:, 1]) & (cfs > box[:, 2]) & (cfs < box[:, 3]))
        seed = np.full(n_reg, -1, dtype=np.int64)
        first_regions, first_at = np.unique(comp[interior], return_index=True)   # cand is sorted: first = seed
        seed[first_regions] = cand[interior[first_at]]

        # First pass (radial offsets): sum and centroid, used for the background disc centre.
        w1 = cv - roffset[cb]
        sum1 = np.bincount(comp, weights=w1, minlength=n_reg)
        keep = ((seed >= 0) & (npix >= s.min_pix_count) & (npix <= s.max_pix_count)
                & (np.abs(sum1) >= _TINY))
        regions = np.flatnonzero(keep)
        if len(regions) == 0:
            return _empty_peaks()
        regions = regions[np.lexsort((seed[regions], reg_panel[regions]))]   # panel, then seed raster order
        rbox = self._panel_box[reg_panel[regions]]
        norm1 = np.abs(sum1[regions])
        com1_fs = np.bincount(comp, weights=w1 * cfs, minlength=n_reg)[regions] / norm1
        com1_ss = np.bincount(comp, weights=w1 * css, minlength=n_reg)[regions] / norm1
        # rint in panel coordinates (round half to even is not invariant under odd shifts).
        c_ss = (np.rint(com1_ss - rbox[:, 0]) + rbox[:, 0]).astype(np.int64)
        c_fs = (np.rint(com1_fs - rbox[:, 2]) + rbox[:, 2]).astype(np.int64)

        # Background disc of every region at once.
        d_ss = c_ss[:, None] + self._disc_dss[None, :]
        d_fs = c_fs[:, None] + self._disc_dfs[None, :]
        inside = ((d_ss >= rbox[:, 0:1]) & (d_ss <= rbox[:, 1:2]) & (d_fs >= rbox[:, 2:3]) & (d_fs <= rbox[:, 3:4]))
        d_idx = np.where(inside, d_ss * n_fs + d_fs, 0)
        d_val = flat[d_idx].astype(np.float64)
        with np.errstate(invalid="ignore"):
            counted = inside & self._mask[d_idx] & (d_val < threshold[self._bins[d_idx]])
        d_val = np.where(counted, d_val, 0.0)
        n_bg = counted.sum(axis=1)
        s_bg = d_val.sum(axis=1)
        s2_bg = (d_val * d_val).sum(axis=1)
        bg_max = np.maximum(np.where(counted, d_val, -np.inf).max(axis=1), 0.0)
        has_bg = n_bg > 0
        safe_n = np.where(has_bg, n_bg, 1)
        local_offset = s_bg / safe_n
        local_var = s2_bg / safe_n - local_offset ** 2
        local_sigma = np.where(has_bg & (local_var >= 0), np.sqrt(np.maximum(local_var, 0.0)), _NO_LOCAL_SIGMA)
        # Empty disc: radial offset of the (rounded first-pass) centroid pixel's bin.
        cen = np.clip(c_ss, rbox[:, 0], rbox[:, 1]) * n_fs + np.clip(c_fs, rbox[:, 2], rbox[:, 3])
        local_offset = np.where(has_bg, local_offset, roffset[self._bins[cen]])

        # Second pass (local offset): integrated intensity, raw-weighted centroid, maximum.
        reg_pos = np.full(n_reg, -1, dtype=np.int64)
        reg_pos[regions] = np.arange(len(regions))
        pix = np.flatnonzero(reg_pos[comp] >= 0)
        pr = reg_pos[comp[pix]]
        pv = cv[pix]
        m = len(regions)
        photons = np.bincount(pr, weights=pv - local_offset[pr], minlength=m)
        raw = np.bincount(pr, weights=pv, minlength=m)
        raw_fs = np.bincount(pr, weights=pv * cfs[pix], minlength=m)
        raw_ss = np.bincount(pr, weights=pv * css[pix], minlength=m)
        vmax = np.full(m, -np.inf)
        np.maximum.at(vmax, pr, pv)
        max_photons = np.maximum(vmax - local_offset, 0.0)
        ok = np.abs(raw) >= _TINY
        norm = np.where(ok, np.abs(raw), 1.0)
        com_fs, com_ss = raw_fs / norm, raw_ss / norm
        # SNR with the per-pixel local sigma; C sets it to 0 when |sigma| <= 1e-10, which happens whenever the
        # whole background disc has one value (e.g. all zero photons): such a peak fails any min_snr > 0.
        sig_ok = np.abs(local_sigma) > _TINY
        snr = np.where(sig_ok, photons / np.where(sig_ok, local_sigma, 1.0), 0.0)
        ok &= snr >= s.min_snr
        ok &= ~(max_photons < bg_max - local_offset)
        ok &= ((com_fs >= rbox[:, 2]) & (com_fs <= rbox[:, 3]) & (com_ss >= rbox[:, 0]) & (com_ss <= rbox[:, 1]))
        sel = np.flatnonzero(ok)[:s.max_num_peaks]
        return pd.DataFrame({
            "fs": com_fs[sel].astype(np.float64),
            "ss": com_ss[sel].astype(np.float64),
            "photons": photons[sel].astype(np.float64),
            "snr": snr[sel].astype(np.float64),
            "npix": npix[regions[sel]].astype(np.int64),
            "max_photons": max_photons[sel].astype(np.float64),
            "score": snr[sel].astype(np.float64),
        })
