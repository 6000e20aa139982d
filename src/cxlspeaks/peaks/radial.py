"""peakfinder8's radial statistics: step 1 of :mod:`.peakfinder8` (C ``fill_radial_bins``, ``compute_radial_stats``).

Radius bin = ``rint(r)`` (round half
to even, as C ``rint``). Per bin, start with an upper cut 1e9 and a lower cut -1e9; then ``iterations`` (5 in
C) times: over the masked pixels with ``lower < value < upper`` (both strict) compute ``offset`` = mean and
``sigma`` = sqrt(mean(value^2) - offset^2) (when that variance is negative through rounding, C keeps the
negative variance itself as sigma; reproduced), then ``upper = max(offset + min_snr sigma, adc_threshold)`` and
``lower = offset - min_snr sigma``. The ADC threshold is applied at *every* iteration (it caps the next
iteration's upper cut), not only at the end. A bin left with no pixel gets offset 0, sigma 0, upper = FLT_MAX
and lower = FLT_MIN (the smallest positive float, not -FLT_MAX: a C quirk that is reproduced; its effect is
that an all-zero bin, whose lower cut becomes 0 after the first iteration, ends with threshold FLT_MAX, i.e.
no peak can start in it). The final upper cut is the bin's peak threshold.

Zeros are implicit (counted per bin from the precomputed pixel counts) and small integer values enter as per-bin
histograms, so a sparse frame costs work proportional to its non-zero pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_FLT_MAX = float(np.finfo(np.float32).max)   # C FLT_MAX: upper cut of an empty radius bin
_FLT_MIN = float(np.finfo(np.float32).tiny)  # C FLT_MIN (smallest positive normal): lower cut of an empty bin
_INITIAL_CUT = 1e9                           # C's first-iteration cuts are +-1e9
_HIST_VALUES = 32                            # integer values 0..31 enter the radial statistics as histograms


class RadialStats(NamedTuple):
    offset: np.ndarray      # per radius bin, mean of the pixels kept by the last iteration
    sigma: np.ndarray       # per radius bin (C semantics: the variance itself when it came out negative)
    threshold: np.ndarray   # per radius bin, the peak threshold (last upper cut)
    count: np.ndarray       # per radius bin, pixels kept by the last iteration


def radial_stats(b: np.ndarray, v: np.ndarray, n_bins: int, n_mask_per_bin: np.ndarray, settings) -> RadialStats:
    """Iterative radial statistics from the masked non-zero pixels (bins b, values v); zeros are implicit:
    ``n_mask_per_bin`` (float64, ``n_bins``) counts the masked pixels of each bin. ``settings``: a
    :class:`~cxlspeaks.peaks.peakfinder8.Peakfinder8Settings` (iterations, min_snr, adc_threshold)."""
    s = settings
    nb = n_bins
    # Photon counts: the pixels holding a small integer k (0 <= k < _HIST_VALUES) are kept as a per-bin
    # histogram, so that each iteration costs O(bins) for them; other values are kept pixel by pixel. All sums
    # are the same as pixel-wise sums (exact for integers).
    small = (v >= 1) & (v < _HIST_VALUES)
    k = np.where(small, v, 0.0).astype(np.int64)
    small &= k == v
    hist = np.bincount(k[small] * nb + b[small], minlength=_HIST_VALUES * nb)
    hist = hist.reshape(_HIST_VALUES, nb).astype(np.float64)
    hist[0] = n_mask_per_bin - np.bincount(b, minlength=nb)      # zeros
    vals = np.arange(_HIST_VALUES, dtype=np.float64)[:, None]
    # Cumulative count, sum and sum of squares over the histogram values: the pixels with lower < k < upper
    # are k in [lo, hi), whose sums are differences of these (integers: exact, as the direct sums).
    cum = np.zeros((3, _HIST_VALUES + 1, nb))
    weights = np.stack([hist, hist * vals, hist * (vals * vals)])
    for j in range(_HIST_VALUES):                  # (np.cumsum along this axis is slower)
        np.add(cum[:, j], weights[:, j], out=cum[:, j + 1])
    rows = np.arange(nb)
    b, v = b[~small], v[~small]
    upper = np.full(nb, _INITIAL_CUT)
    lower = np.full(nb, -_INITIAL_CUT)
    v2 = v * v
    for _ in range(s.iterations):
        # (fmax/fmin drop a NaN cut: an empty range, as the comparisons with NaN)
        hi = np.fmin(np.fmax(np.ceil(upper), 0.0), _HIST_VALUES).astype(np.int64)
        lo = np.minimum(np.fmin(np.fmax(np.floor(lower) + 1, 0.0), _HIST_VALUES).astype(np.int64), hi)
        count, total, total2 = cum[:, hi, rows] - cum[:, lo, rows]
        if len(v):
            inside = (v < upper[b]) & (v > lower[b])
            bi = b[inside]
            count = np.bincount(bi, minlength=nb) + count
            total = np.bincount(bi, weights=v[inside], minlength=nb) + total
            total2 = np.bincount(bi, weights=v2[inside], minlength=nb) + total2
        empty = count == 0
        safe = np.where(empty, 1.0, count)
        offset = np.where(empty, 0.0, total / safe)
        var = total2 / safe - offset * offset
        # C: sigma = sqrt(var) only when var >= 0, otherwise the (negative) variance stays as sigma.
        sigma = np.where(empty, 0.0, np.where(var >= 0, np.sqrt(np.maximum(var, 0.0)), var))
        upper = np.where(empty, _FLT_MAX, np.maximum(offset + s.min_snr * sigma, s.adc_threshold))
        lower = np.where(empty, _FLT_MIN, offset - s.min_snr * sigma)
    return RadialStats(offset, sigma, upper, count)
