"""The detection bound: the best any peak finder can do for a reflection of known position and expected photons.

For every true reflection of a test frame, the expected Bragg photons per pixel s_i come from the frames file's
``/entry/data/signal`` and the expected water photons b_i from ``/entry/data/background`` x the frame's
``/entry/data/water_scale`` (1 when absent); the recorded counts are n_i ~ Poisson(s_i + b_i), independent.

**The test.** At a known position with a footprint F (a set of good pixels), the counts N = sum_{i in F} n_i are
Poisson(b) without the reflection (H0) and Poisson(s + b) with it (H1), s = sum_F s_i, b = sum_F b_i. By the
Neyman-Pearson lemma the most powerful level-alpha test of H0 against H1 rejects for a large likelihood ratio
(1 + s/b)^N e^(-s), which is increasing in N: the test "N >= k_alpha" is most powerful, and because the same
test serves every s > 0 it is uniformly most powerful (Karlin-Rubin: the Poisson family has a monotone likelihood
ratio in N). Non-randomised:

    k_alpha = min { k : P(Poisson(b) >= k) <= alpha },    P_detect = P(Poisson(s + b) >= k_alpha).

(With per-pixel s_i, b_i known, the Neyman-Pearson statistic is sum_i n_i ln(1 + s_i/b_i); the sum over the best
footprint is the same test when the spot's s_i/b_i is flat over F and close to it otherwise.)

**The footprint.** The window of ``window_px`` pixels either side of the reflection, its good pixels nearest to
this reflection (not to another of the frame), ranked by s_i/b_i (the Neyman-Pearson weight ln(1 + s_i/b_i) is
increasing in it). ``footprint="best"``: the top k pixels for every k = 1..``max_pixels``, the best P_detect
(each k with its own alpha); a number f in (0, 1]: the smallest top set (ranked by s_i) holding >= f of the
window's expected photons (0.5: half of them).

**The false-alarm level.** A finder that gives r false peaks per empty frame tests, in effect, every independent
candidate position of the frame; there are ~ n_good / |F| of them (good pixels / footprint size), so the level
per position that gives the whole frame the same r is alpha = r / (n_good / |F|). A finder with no false peak on
its n_empty empty frames gets r = 1 / (2 n_empty) (half a false peak over all of them), and one without any
empty frame r = 1; alpha is capped at 0.5.

The recall of the bound in a photon bin is the mean P_detect of its reflections: no finder with the same false
peak rate can beat it on the same reflections (up to its finite footprint and the candidate count estimate).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.stats import poisson

from ..io import BACKGROUND, DATA, SIGNAL, WATER_SCALE, open_h5

PHOTON_EDGES = (1.0, 3.0, 10.0, 30.0, np.inf)


def k_alpha(background, alpha) -> np.ndarray:
    """The smallest integer k with P(Poisson(background) >= k) <= alpha (element-wise; alpha in (0, 1))."""
    b, a = np.broadcast_arrays(np.asarray(background, np.float64), np.asarray(alpha, np.float64))
    k = poisson.isf(a, b) + 1.0              # isf: the smallest m with P(X > m) <= alpha, so k = m + 1
    k = np.where(np.isfinite(k), k, 1.0)
    for _ in range(3):                        # guard the float edge cases of isf
        k = np.where(poisson.sf(k - 1, b) > a, k + 1, k)
        k = np.where((k > 1) & (poisson.sf(k - 2, b) <= a), k - 1, k)
    return k.astype(np.int64)


def detection_probability(signal, background, alpha) -> np.ndarray:
    """P(Poisson(s + b) >= k_alpha(b)): the power of the uniformly most powerful level-alpha counts test."""
    s = np.asarray(signal, np.float64)
    b = np.asarray(background, np.float64)
    k = k_alpha(b, alpha)
    return poisson.sf(k - 1, s + b)


def reflection_sums(signal: np.ndarray, background: np.ndarray, good: np.ndarray, positions: np.ndarray,
                    window_px: int = 4, max_pixels: int = 25, counts: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """Per reflection: cumulative s and b over the top-k pixels ranked by s_i/b_i (``s_ratio``, ``b_ratio``) and
    by s_i (``s_signal``, ``b_signal``), (R, max_pixels) each, and the window's total expected photons
    ``s_window`` (R,). With the frame's recorded ``counts`` (ss, fs), also ``n_ratio`` and ``n_signal``: the
    recorded counts summed over the same top-k pixels."""
    positions = np.asarray(positions, np.float64).reshape(-1, 2)
    n = len(positions)
    names = ("s_ratio", "b_ratio", "s_signal", "b_signal") + (("n_ratio", "n_signal") if counts is not None else ())
    out = {name: np.zeros((n, max_pixels)) for name in names}
    out["s_window"] = np.zeros(n)
    if n == 0:
        return out
    shape = signal.shape
    offsets = np.arange(-window_px, window_px + 1)
    dss, dfs = np.meshgrid(offsets, offsets, indexing="ij")
    dss, dfs = dss.ravel(), dfs.ravel()
    tree = cKDTree(positions)
    centre = np.rint(positions).astype(np.int64)
    for r in range(n):
        ss = centre[r, 1] + dss
        fs = centre[r, 0] + dfs
        inside = (ss >= 0) & (ss < shape[0]) & (fs >= 0) & (fs < shape[1])
        ss, fs = ss[inside], fs[inside]
        keep = good[ss, fs]
        ss, fs = ss[keep], fs[keep]
        if ss.size == 0:
            continue
        if n > 1:                                 # pixels nearer to another reflection belong to that one
            _, nearest = tree.query(np.column_stack([fs, ss]).astype(np.float64))
            mine = nearest == r
            ss, fs = ss[mine], fs[mine]
        s = signal[ss, fs].astype(np.float64)
        b = background[ss, fs].astype(np.float64)
        out["s_window"][r] = s.sum()
        for key, rank in (("ratio", s / np.maximum(b, 1e-12)), ("signal", s)):
            order = np.argsort(-rank, kind="stable")[:max_pixels]
            cumulative = {"s": np.cumsum(s[order]), "b": np.cumsum(b[order])}
            if counts is not None:
                cumulative["n"] = np.cumsum(counts[ss, fs].astype(np.float64)[order])
            for prefix, c in cumulative.items():
                out[f"{prefix}_{key}"][r, :c.size] = c
                out[f"{prefix}_{key}"][r, c.size:] = c[-1] if c.size else 0
    return out


def _per_footprint_size(sums: dict[str, np.ndarray], n_good: int, false_per_frame: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(P_detect (R, max_pixels), alpha (max_pixels,)) of the top-k footprints ranked by s_i/b_i, k = 1..max_pixels,
    each at the level alpha_k = r k / n_good (capped at 0.5)."""
    k = np.arange(1, sums["s_ratio"].shape[1] + 1)
    alpha = np.minimum(false_per_frame * k / max(n_good, 1), 0.5)
    return detection_probability(sums["s_ratio"], sums["b_ratio"], alpha[None, :]), alpha


def bound_probability(sums: dict[str, np.ndarray], n_good: int, false_per_frame: float,
                      footprint: str | float = "best") -> np.ndarray:
    """P_detect of every reflection of :func:`reflection_sums` at the level alpha = r |F| / n_good (capped 0.5)."""
    max_pixels = sums["s_ratio"].shape[1]
    if footprint == "best":
        p, _ = _per_footprint_size(sums, n_good, false_per_frame)
        return p.max(axis=1) if p.size else np.zeros(len(sums["s_window"]))
    fraction = float(footprint)
    if not 0 < fraction <= 1:
        raise ValueError(f"footprint must be 'best' or a fraction in (0, 1], got {footprint!r}")
    s_cum = sums["s_signal"]
    target = fraction * sums["s_window"][:, None]
    reached = s_cum >= target - 1e-12
    size = np.where(reached.any(axis=1), reached.argmax(axis=1), max_pixels - 1)   # index of the last pixel
    rows = np.arange(len(size))
    s, b = s_cum[rows, size], sums["b_signal"][rows, size]
    alpha = np.minimum(false_per_frame * (size + 1) / max(n_good, 1), 0.5)
    return detection_probability(s, b, alpha)


def frame_reflection_sums(frames_path, frame: int, truth: pd.DataFrame, good: np.ndarray, window_px: int = 4,
                          max_pixels: int = 25, with_counts: bool = False) -> dict[str, np.ndarray]:
    """:func:`reflection_sums` of one frame of a frames file (its signal, background x water_scale, good mask;
    ``with_counts``: and its recorded counts, ``/entry/data/data``)."""
    with open_h5(frames_path) as h5:
        signal = np.asarray(h5[SIGNAL][int(frame)], np.float32)
        background = np.asarray(h5[BACKGROUND][()], np.float32)
        scale = float(h5[WATER_SCALE][int(frame)]) if WATER_SCALE in h5 else 1.0
        counts = np.asarray(h5[DATA][int(frame)]) if with_counts else None
    positions = np.column_stack([truth["fs"].to_numpy(np.float64), truth["ss"].to_numpy(np.float64)])
    return reflection_sums(signal, background * scale, good, positions, window_px, max_pixels, counts)


def realized_detections(sums: dict[str, np.ndarray], n_good: int, false_per_frame: float) -> np.ndarray:
    """Which reflections the bound's test detects on the frame actually recorded (bool, (R,)).

    Per reflection, the footprint size k* of ``footprint="best"`` is chosen from the expected photons alone (the
    k with the largest P_detect at alpha_k = r k / n_good, capped at 0.5), so the choice does not look at the
    counts; the reflection is detected when the recorded counts of those k* pixels reach k_alpha(b_k*). Over
    Poisson realisations the detected fraction is :func:`bound_probability`'s P_detect (a test checks it), so
    the detected set is what a finder that knows every position and profile would report on this frame, without
    its false peaks. Needs ``sums`` from :func:`reflection_sums` with ``counts``; raises KeyError without them.
    """
    if sums["s_ratio"].shape[0] == 0:
        return np.zeros(0, dtype=bool)
    p, alpha = _per_footprint_size(sums, n_good, false_per_frame)
    best = p.argmax(axis=1)
    rows = np.arange(len(best))
    threshold = k_alpha(sums["b_ratio"][rows, best], alpha[best])
    return (sums["n_ratio"][rows, best] >= threshold) & (sums["s_ratio"][rows, best] > 0)


def false_rate_used(false_per_empty_frame: float, n_empty: int) -> float:
    """The false-peak rate r of the alpha rule: the measured one; 1/(2 n_empty) when it is 0; 1 without empty
    frames (or when unknown)."""
    r = float(false_per_empty_frame) if false_per_empty_frame is not None else float("nan")
    if not np.isfinite(r) or n_empty <= 0:
        return 1.0
    return r if r > 0 else 0.5 / n_empty


def bound_table(reflections: pd.DataFrame, sums: dict[str, np.ndarray], n_good: dict, rates: pd.DataFrame,
                recall: pd.DataFrame | None = None, footprint: str | float = "best",
                edges: Sequence[float] = PHOTON_EDGES) -> pd.DataFrame:
    """Recall of the bound per finder, flux and photon bin, beside the finder's own recall.

    ``reflections``: one row per true reflection (dataset, frame, flux, photons), aligned with ``sums`` (arrays
    concatenated over frames); ``n_good``: good pixels per dataset; ``rates``: finder, flux,
    false_per_empty_frame, n_empty; ``recall``: :func:`cxlspeaks.peaks.matching.recall_by_photons` by finder and flux.
    Columns: finder, flux, bin, lo, hi, n_true, bound_recall, finder_recall, false_per_empty_frame,
    false_rate_used (r of the alpha rule), alpha_per_pixel (r / n_good: the level of a one-pixel footprint; a
    footprint of |F| pixels gets |F| times it).
    """
    edges = np.asarray(edges, np.float64)
    photons = reflections["photons"].to_numpy(np.float64)
    datasets = reflections["dataset"].to_numpy()
    rows = []
    for rate in rates.itertuples(index=False):
        r = false_rate_used(rate.false_per_empty_frame, int(rate.n_empty))
        of_flux = reflections["flux"].to_numpy() == rate.flux
        p = np.full(len(reflections), np.nan)
        for dataset in np.unique(datasets[of_flux]):
            sel = of_flux & (datasets == dataset)
            part = {k: v[sel] for k, v in sums.items()}
            p[sel] = bound_probability(part, int(n_good[dataset]), r, footprint)
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = of_flux & (photons >= lo) & (photons < hi)
            label = f">={lo:g}" if np.isinf(hi) else f"{lo:g}-{hi:g}"
            finder_recall = float("nan")
            if recall is not None:
                match = recall[(recall["finder"] == rate.finder) & (recall["flux"] == rate.flux)
                               & (recall["bin"] == label)]
                if len(match):
                    finder_recall = float(match["recall"].iloc[0])
            n_good_med = float(np.median([n_good[d] for d in np.unique(datasets[of_flux])])) if of_flux.any() \
                else float("nan")
            rows.append({"finder": rate.finder, "flux": rate.flux, "bin": label, "lo": float(lo), "hi": float(hi),
                         "n_true": int(in_bin.sum()),
                         "bound_recall": float(p[in_bin].mean()) if in_bin.any() else float("nan"),
                         "finder_recall": finder_recall,
                         "false_per_empty_frame": float(rate.false_per_empty_frame),
                         "false_rate_used": r, "alpha_per_pixel": min(r / n_good_med, 0.5)})
    return pd.DataFrame(rows, columns=["finder", "flux", "bin", "lo", "hi", "n_true", "bound_recall",
                                       "finder_recall", "false_per_empty_frame", "false_rate_used",
                                       "alpha_per_pixel"])


def detection_bound(truth: pd.DataFrame, frames: dict, good: dict, rates: pd.DataFrame,
                    recall: pd.DataFrame | None = None, footprint: str | float = "best", window_px: int = 4,
                    max_pixels: int = 25) -> pd.DataFrame:
    """The bound table (:func:`bound_table`) from a truth table of one finder's matching (dataset, frame, flux,
    fs, ss, photons per true reflection, :func:`cxlspeaks.peaks.matching.match_frames`), the frames files and good masks
    per dataset."""
    truth = truth[truth["photons"] >= PHOTON_EDGES[0]].reset_index(drop=True)
    parts, order = [], []
    for (dataset, frame), group in truth.groupby(["dataset", "frame"], sort=True):
        parts.append(frame_reflection_sums(frames[dataset], int(frame), group, good[dataset], window_px,
                                           max_pixels))
        order.append(group.index.to_numpy())
    index = np.concatenate(order) if order else np.empty(0, np.int64)
    sums = {k: (np.concatenate([p[k] for p in parts]) if parts
                else np.zeros((0, max_pixels)) if k != "s_window" else np.zeros(0))
            for k in ("s_ratio", "b_ratio", "s_signal", "b_signal", "s_window")}
    reflections = truth.loc[index].reset_index(drop=True)
    n_good = {d: int(np.count_nonzero(m)) for d, m in good.items()}
    return bound_table(reflections, sums, n_good, rates, recall, footprint)
