"""peakfinder8: synthetic spots, every cut, the radial statistics and a loop-by-loop reference of the C steps."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import erf

from cxlspeaks.peaks.peakfinder8 import (
    CRYSTFEL_DEFAULTS,
    PEAK_COLUMNS,
    PHOTON_COUNTING,
    Peakfinder8,
    Peakfinder8Settings,
)

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)

#: Settings for the 0.05 photons/pixel test frames: a peak pixel needs >= 2 photons, a peak >= 2 such pixels.
SPOTS = Peakfinder8Settings(adc_threshold=1.5, min_snr=5.0, min_pix_count=2, max_pix_count=200, local_bg_radius=3,
                            min_res_px=0.0, max_res_px=math.inf)
#: For bright test features: a peak pixel needs >= 4 photons, which 0.05-0.3 photons/pixel noise never reaches here.
BRIGHT = dataclasses.replace(SPOTS, adc_threshold=3.5)


def centred_radius(shape, centre):
    ss, fs = np.indices(shape)
    return np.hypot(ss - centre[0], fs - centre[1])


def coarse_radius(shape, centre=None):
    """Radius / 10: bins 10 px wide, so that on a small test frame one bright feature cannot dominate its bin's
    statistics (on the 4 Mpx detector a bin holds thousands of pixels); for tests that are not about radii."""
    centre = centre if centre is not None else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    return centred_radius(shape, centre) / 10.0


def gaussian_spots(shape, centres, photons, sigma=1.0):
    """Expected counts of Gaussian spots integrated over each pixel (pixel i spans [i - 0.5, i + 0.5])."""
    img = np.zeros(shape)
    edges = [np.arange(n + 1) - 0.5 for n in shape]
    for (cs, cf), n in zip(centres, photons):
        a = np.diff(erf((edges[0] - cs) / (sigma * math.sqrt(2)))) / 2
        b = np.diff(erf((edges[1] - cf) / (sigma * math.sqrt(2)))) / 2
        img += n * np.outer(a, b)
    return img


def noisy_background(shape, level=0.05, seed=0):
    return np.random.default_rng(seed).poisson(level, shape)


# ---------------------------------------------------------------- loop-based references of the C steps
def reference_radial_stats(frame, bins, mask, s, n_bins):
    """compute_radial_stats/fill_radial_bins of peakfinder8.c, one pixel at a time, in float64."""
    pixels = [(int(bins[i, j]), float(frame[i, j])) for i, j in zip(*np.nonzero(mask))]
    upper, lower = [1e9] * n_bins, [-1e9] * n_bins
    offset, sigma = [0.0] * n_bins, [0.0] * n_bins
    for _ in range(s.iterations):
        count, total, total2 = [0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
        for b, v in pixels:
            if lower[b] < v < upper[b]:
                count[b] += 1
                total[b] += v
                total2[b] += v * v
        for b in range(n_bins):
            if count[b] == 0:
                offset[b], sigma[b], upper[b], lower[b] = 0.0, 0.0, FLT_MAX, FLT_MIN
            else:
                offset[b] = total[b] / count[b]
                var = total2[b] / count[b] - offset[b] ** 2
                sigma[b] = math.sqrt(var) if var >= 0 else var
                upper[b] = max(offset[b] + s.min_snr * sigma[b], s.adc_threshold)   # every iteration
                lower[b] = offset[b] - s.min_snr * sigma[b]
    return np.array(offset), np.array(sigma), np.array(upper)


def reference_peakfinder8(frame, radius, good, s, boxes):
    """process_panel/peak_search/search_in_ring of peakfinder8.c with Python loops (panels = (ss0, ss1, fs0, fs1))."""
    frame = np.asarray(frame, dtype=np.float64)
    bins = np.where(good, np.rint(radius), 0).astype(int)
    mask = good & (radius > s.min_res_px) & (radius < s.max_res_px)
    offset, _, thr = reference_radial_stats(frame, bins, mask, s, bins.max() + 1)
    w = 2 * s.local_bg_radius

    def above(i, j):
        return mask[i, j] and frame[i, j] > thr[bins[i, j]]

    peaks = []
    for s0, s1, f0, f1 in boxes:
        marked = np.zeros(frame.shape, dtype=bool)      # C's pix_in_peak_map, one per panel
        for i in range(s0 + 1, s1):                     # seeds skip the panel's border rows and columns
            for j in range(f0 + 1, f1):
                if marked[i, j] or not above(i, j):
                    continue
                region, k = [(i, j)], 0
                marked[i, j] = True
                while k < len(region):                  # flood through the 3 x 3 neighbourhood
                    a, c = region[k]
                    k += 1
                    for da in (-1, 0, 1):
                        for dc in (-1, 0, 1):
                            a2, c2 = a + da, c + dc
                            if s0 <= a2 <= s1 and f0 <= c2 <= f1 and not marked[a2, c2] and above(a2, c2):
                                marked[a2, c2] = True
                                region.append((a2, c2))
                if not s.min_pix_count <= len(region) <= s.max_pix_count:
                    continue
                weights = [frame[a, c] - offset[bins[a, c]] for a, c in region]
                sum_i = sum(weights)
                if abs(sum_i) < 1e-10:
                    continue
                ls = int(np.rint(sum(wt * a for wt, (a, _) in zip(weights, region)) / abs(sum_i) - s0))
                lf = int(np.rint(sum(wt * c for wt, (_, c) in zip(weights, region)) / abs(sum_i) - f0))
                n_bg, s_bg, s2_bg, bg_max = 0, 0.0, 0.0, 0.0
                for dss in range(-w, w):
                    for dfs in range(-w, w):
                        if not (0 <= ls + dss <= s1 - s0 and 0 <= lf + dfs <= f1 - f0):
                            continue
                        if math.sqrt(dfs * dfs + dss * dss) > w:
                            continue
                        a, c = ls + dss + s0, lf + dfs + f0
                        v = frame[a, c]
                        if v < thr[bins[a, c]] and not marked[a, c] and mask[a, c]:
                            n_bg, s_bg, s2_bg, bg_max = n_bg + 1, s_bg + v, s2_bg + v * v, max(bg_max, v)
                if n_bg:
                    lo = s_bg / n_bg
                    var = s2_bg / n_bg - lo * lo
                    sig = math.sqrt(var) if var >= 0 else 0.01
                else:
                    lo, sig = offset[bins[ls + s0, lf + f0]], 0.01
                values = [frame[a, c] for a, c in region]
                tot = sum(v - lo for v in values)
                raw = sum(values)
                pmax = max([0.0] + [v - lo for v in values])
                if abs(raw) < 1e-10:
                    continue
                cfs = sum(v * c for v, (_, c) in zip(values, region)) / abs(raw)
                css = sum(v * a for v, (a, _) in zip(values, region)) / abs(raw)
                snr = tot / sig if abs(sig) > 1e-10 else 0.0
                if snr < s.min_snr or pmax < bg_max - lo:
                    continue
                if cfs < f0 or cfs > f1 or css < s0 or css > s1:
                    continue
                peaks.append((cfs, css, tot, snr, len(region), pmax))
    peaks = peaks[:s.max_num_peaks]
    return pd.DataFrame(peaks, columns=["fs", "ss", "photons", "snr", "npix", "max_photons"])


def assert_same_peaks(found: pd.DataFrame, expected: pd.DataFrame):
    assert len(found) == len(expected), (found, expected)
    for col in expected.columns:
        np.testing.assert_allclose(found[col].to_numpy(), expected[col].to_numpy(), rtol=1e-9, atol=1e-9,
                                   err_msg=col)
    np.testing.assert_array_equal(found["score"].to_numpy(), found["snr"].to_numpy())


# ---------------------------------------------------------------- tests
def test_isolated_spots_found_with_centroids_and_photons():
    shape = (200, 200)
    centre = (100.3, 99.6)
    rng = np.random.default_rng(3)
    # 12 spots of 20-200 photons, one per radius (35-90 px) so that no radius bin holds two spots.
    radii = 35 + 5.0 * np.arange(12)
    angles = 2.39996 * np.arange(12)
    centres = np.stack([centre[0] + radii * np.sin(angles), centre[1] + radii * np.cos(angles)], axis=1)
    centres += rng.uniform(-0.5, 0.5, centres.shape)
    photons = rng.permutation(np.geomspace(20, 200, 12))
    frame = rng.poisson(0.05 + gaussian_spots(shape, centres, photons))
    pf = Peakfinder8(centred_radius(shape, centre), np.ones(shape, dtype=bool), SPOTS)
    found = pf.find(frame)

    assert list(found.columns) == list(PEAK_COLUMNS)
    assert len(found) == len(centres), found            # every spot, nothing else
    dist = np.hypot(found["ss"].to_numpy()[:, None] - centres[None, :, 0],
                    found["fs"].to_numpy()[:, None] - centres[None, :, 1])
    match = dist.argmin(axis=1)
    assert sorted(match) == list(range(len(centres)))
    err = dist.min(axis=1)
    n = photons[match]
    # Centroids of thresholded pixels from N Poisson photons scatter by ~sigma / sqrt(N) per axis (0.22 px at 20
    # photons, before the threshold drops the tails), so 0.3 px holds for the bright spots only.
    assert err[n >= 100].max() < 0.3, (n, err)
    assert err[n >= 40].max() < 0.6, (n, err)
    assert err.max() < 1.0, (n, err)
    # Integrated photons above the local background: the region holds the pixels >= 2 photons, i.e. most of a
    # bright spot and part of a faint one.
    ratio = found["photons"].to_numpy() / n
    assert np.all((ratio[n >= 100] > 0.8) & (ratio[n >= 100] < 1.15)), ratio
    assert np.all((ratio > 0.3) & (ratio < 1.3)), ratio
    assert np.all(found["snr"] >= SPOTS.min_snr)
    np.testing.assert_array_equal(found["score"], found["snr"])


def test_output_convention_single_pixel():
    shape = (40, 50)
    frame = noisy_background(shape, level=0.3, seed=0).astype(np.float64)
    frame[10, 20] = 30.0
    settings = dataclasses.replace(SPOTS, adc_threshold=10.0, min_pix_count=1)
    found = Peakfinder8(coarse_radius(shape), np.ones(shape, dtype=bool), settings).find(frame)
    assert len(found) == 1
    row = found.iloc[0]
    assert row["fs"] == 20.0 and row["ss"] == 10.0
    assert row["npix"] == 1
    for name, dtype in PEAK_COLUMNS.items():
        assert found[name].dtype == dtype, name


def test_hot_pixel_below_min_pix_count():
    shape = (100, 100)
    frame = noisy_background(shape, seed=1)
    frame[60, 35] = 40
    pf_args = (coarse_radius(shape), np.ones(shape, dtype=bool))
    assert len(Peakfinder8(*pf_args, BRIGHT).find(frame)) == 0
    found = Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, min_pix_count=1)).find(frame)
    assert len(found) == 1
    assert (found["ss"].iloc[0], found["fs"].iloc[0], found["npix"].iloc[0]) == (60.0, 35.0, 1)


def test_region_above_max_pix_count():
    shape = (120, 120)
    frame = noisy_background(shape, seed=2)
    frame[70:76, 30:36] = 20     # a 6 x 6 plateau: 36 pixels
    pf_args = (coarse_radius(shape), np.ones(shape, dtype=bool))
    assert len(Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, max_pix_count=35)).find(frame)) == 0
    found = Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, max_pix_count=36)).find(frame)
    assert len(found) == 1 and found["npix"].iloc[0] == 36
    assert found["ss"].iloc[0] == pytest.approx(72.5, abs=0.05)
    assert found["fs"].iloc[0] == pytest.approx(32.5, abs=0.05)


def test_masked_pixels_never_produce_or_contribute():
    shape = (120, 120)
    radius = coarse_radius(shape)
    spots = gaussian_spots(shape, [(30.2, 40.3), (90.4, 80.1)], [150.0, 150.0])
    frame = noisy_background(shape, seed=4) + np.rint(spots).astype(int)
    good = np.ones(shape, dtype=bool)
    good[85:96, 75:86] = False          # covers the second spot completely
    good[30, 41] = False                # one pixel of the first spot
    pf = Peakfinder8(radius, good, BRIGHT)
    found = pf.find(frame)
    assert len(found) == 1
    assert abs(found["ss"].iloc[0] - 30.2) < 0.5 and abs(found["fs"].iloc[0] - 40.3) < 0.5
    # Whatever masked pixels hold (huge values, NaN), the result is the same.
    other = frame.astype(np.float64)
    other[~good] = np.random.default_rng(5).uniform(0, 1e6, int((~good).sum()))
    other[86, 76] = np.nan
    pd.testing.assert_frame_equal(pf.find(other), found)
    # The masked pixel is not part of the region: unmasking it changes the peak.
    unmasked = Peakfinder8(radius, np.ones(shape, dtype=bool), BRIGHT).find(frame)
    first = unmasked.iloc[np.argmin(np.hypot(unmasked["ss"] - 30.2, unmasked["fs"] - 40.3))]
    assert first["npix"] == found["npix"].iloc[0] + 1


def test_resolution_window():
    shape = (160, 160)
    centre = (80.0, 80.0)
    radius = centred_radius(shape, centre)
    spot_r = [20.0, 45.0, 70.0]
    centres = [(centre[0] + r * math.sin(a), centre[1] + r * math.cos(a)) for r, a in zip(spot_r, [0.3, 2.0, 4.0])]
    frame = noisy_background(shape, seed=6) + np.rint(gaussian_spots(shape, centres, [150.0] * 3)).astype(int)
    good = np.ones(shape, dtype=bool)

    def radii_found(settings):
        found = Peakfinder8(radius, good, settings).find(frame)
        return sorted(np.rint(np.hypot(found["ss"] - centre[0], found["fs"] - centre[1])).astype(int))

    assert radii_found(BRIGHT) == [20, 45, 70]
    assert radii_found(dataclasses.replace(BRIGHT, min_res_px=30.0)) == [45, 70]
    assert radii_found(dataclasses.replace(BRIGHT, max_res_px=60.0)) == [20, 45]
    assert radii_found(dataclasses.replace(BRIGHT, min_res_px=30.0, max_res_px=60.0)) == [45]


def test_resolution_limits_are_strict():
    # C keeps min_res < r < max_res: a pixel exactly at either limit takes no part.
    shape = (30, 30)
    radius = np.full(shape, 10.0)
    radius[:, 15:] = 20.0
    frame = noisy_background(shape, level=0.3, seed=7)
    frame[7, 7] = frame[7, 22] = 50
    settings = dataclasses.replace(SPOTS, adc_threshold=10.0, min_pix_count=1)
    found = Peakfinder8(radius, np.ones(shape, dtype=bool), dataclasses.replace(settings, max_res_px=20.0)).find(frame)
    assert list(zip(found["ss"], found["fs"])) == [(7.0, 7.0)]
    found = Peakfinder8(radius, np.ones(shape, dtype=bool), dataclasses.replace(settings, min_res_px=10.0)).find(frame)
    assert list(zip(found["ss"], found["fs"])) == [(7.0, 22.0)]


def test_radial_statistics_match_loop_reference():
    shape = (64, 64)
    radius = centred_radius(shape, (31.7, 32.4))
    bins = np.rint(radius).astype(int)
    rng = np.random.default_rng(8)
    means = rng.uniform(0.02, 3.0, bins.max() + 1)
    frame = rng.poisson(means[bins]).astype(np.float64)
    frame[bins == 12] = 0.0                                    # an all-zero ring (collapses to FLT_MAX)
    frame[bins == 15] = 2.0                                    # a constant ring (zero sigma, oscillates)
    ring20 = bins == 20
    frame[ring20] = 10.0 + rng.normal(0.0, 1.0, int(ring20.sum()))
    frame[rng.integers(0, 64, 30), rng.integers(0, 64, 30)] += 200.0   # outliers the clipping removes
    good = rng.random(shape) > 0.05
    ring28 = np.flatnonzero((bins == 28).ravel() & good.ravel())
    frame.flat[ring28] = np.minimum(rng.poisson(0.05, len(ring28)), 1)
    frame.flat[ring28[0]] = 2.0                                # exactly at an ADC threshold of 2: left out (<)
    frame.flat[ring28[1]] = 40.0                               # the same for a threshold of 40
    for settings in (SPOTS, dataclasses.replace(SPOTS, adc_threshold=0.5, min_snr=3.0, iterations=4),
                     dataclasses.replace(SPOTS, adc_threshold=2.0),          # integer cut: value == cut is out
                     dataclasses.replace(SPOTS, adc_threshold=40.0),
                     dataclasses.replace(SPOTS, min_res_px=4.5, max_res_px=27.0)):
        pf = Peakfinder8(radius, good, settings)
        stats = pf._radial_stats(frame)
        mask = good & (radius > settings.min_res_px) & (radius < settings.max_res_px)
        offset, sigma, thr = reference_radial_stats(frame, bins, mask, settings, pf.n_bins)
        np.testing.assert_allclose(stats.offset, offset, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.threshold, thr, rtol=1e-9, atol=1e-9)
    stats = Peakfinder8(radius, good, dataclasses.replace(SPOTS, adc_threshold=2.0))._radial_stats(frame)
    assert stats.threshold[28] == 2.0 and stats.count[28] == len(ring28) - 2
    stats = Peakfinder8(radius, good, dataclasses.replace(SPOTS, adc_threshold=40.0))._radial_stats(frame)
    assert stats.threshold[28] == 40.0 and stats.count[28] == len(ring28) - 1
    stats = Peakfinder8(radius, good, SPOTS)._radial_stats(frame)
    assert stats.threshold[12] == FLT_MAX                      # an empty bin keeps C's FLT_MAX threshold
    assert stats.offset[20] == pytest.approx(10.0, abs=0.3)    # known ring mean and width
    assert stats.sigma[20] == pytest.approx(1.0, abs=0.2)
    # Poisson rings: offset near the ring mean (clipping at offset + 5 sigma removes the 200-photon outliers).
    for b in (25, 27):
        assert stats.offset[b] == pytest.approx(means[b], abs=4 * math.sqrt(means[b] / (bins == b).sum()) + 0.05)


@pytest.mark.parametrize("case", ["poisson", "dense_float", "negative_threshold"])
def test_matches_loop_reference_of_c_steps(case):
    shape = (44, 52)
    rng = np.random.default_rng({"poisson": 10, "dense_float": 11, "negative_threshold": 12}[case])
    radius = centred_radius(shape, (20.3, 26.1))
    panel = np.zeros(shape, dtype=int)
    panel[:, 26:] = 1
    panel[30:, :26] = 2
    boxes = [(0, 43, 26, 51) if p == 1 else (0, 29, 0, 25) if p == 0 else (30, 43, 0, 25) for p in (0, 1, 2)]
    good = rng.random(shape) > 0.03
    centres = rng.uniform([-1, -1], [45, 53], (25, 2))
    centres = np.vstack([centres, [(10.0, 25.5), (29.5, 10.0), (0.2, 40.0), (43.0, 5.0)]])  # on panel edges
    spots = gaussian_spots(shape, centres, rng.uniform(5, 300, len(centres)), sigma=1.2)
    if case == "poisson":
        frame = rng.poisson(0.2 + spots)
        settings = Peakfinder8Settings(adc_threshold=1.5, min_snr=4.0, min_pix_count=1, max_pix_count=15,
                                       local_bg_radius=2, min_res_px=2.0, max_res_px=30.0)
    elif case == "dense_float":
        frame = 5.0 + rng.normal(0.0, 1.0, shape) + spots
        settings = Peakfinder8Settings(adc_threshold=0.0, min_snr=3.0, min_pix_count=2, max_pix_count=40,
                                       local_bg_radius=3, min_res_px=0.0, max_res_px=math.inf, max_num_peaks=9)
    else:
        # Mostly -1: zeros are above a negative threshold, exercising the zero-candidate path.
        frame = rng.poisson(0.2 + spots) - 1
        settings = Peakfinder8Settings(adc_threshold=-5.0, min_snr=1.0, min_pix_count=2, max_pix_count=60,
                                       local_bg_radius=2, min_res_px=0.0, max_res_px=math.inf)
    pf = Peakfinder8(radius, good, settings, panel_index=panel)
    found = pf.find(frame)
    expected = reference_peakfinder8(frame, radius, good, settings, boxes)
    if case == "negative_threshold":
        assert (pf._radial_stats(frame).threshold < 0).sum() > 5
    assert len(expected) >= 3
    assert_same_peaks(found, expected)


def test_disc_centre_rounds_half_to_even_in_panel_coordinates():
    # Two equal pixels give a first-pass centroid at fs = 30.5, i.e. 5.5 in a panel starting at fs = 25: C's rint
    # gives 6 (panel fs 31), not rint(30.5) = 30. The disc centre moves the local background. A +-1 checkerboard
    # in one radius bin makes the radial offset exactly 0, so that the centroid is exactly 30.5.
    shape = (30, 50)
    frame = np.where(np.indices(shape).sum(axis=0) % 2 == 0, 1.0, -1.0)
    frame[12, 30:32] = 40.0
    radius = np.full(shape, 7.0)
    panel = np.zeros(shape, dtype=int)
    panel[:, 25:] = 1
    found = Peakfinder8(radius, np.ones(shape, dtype=bool), BRIGHT, panel_index=panel).find(frame)
    expected = reference_peakfinder8(frame, radius, np.ones(shape, dtype=bool), BRIGHT,
                                     [(0, 29, 0, 24), (0, 29, 25, 49)])
    assert_same_peaks(found, expected)
    assert len(found) == 1 and found["fs"].iloc[0] == 30.5


def test_empty_background_disc_uses_radial_offset():
    # A 5 x 5 plateau covers the whole disc of local_bg_radius 1 (offsets -2..1, radius <= 2): C then takes the
    # radial offset of the centroid pixel's bin as local offset and sigma 0.01.
    shape = (60, 60)
    frame = noisy_background(shape, level=0.3, seed=21)
    frame[8:13, 8:13] = 12
    settings = dataclasses.replace(BRIGHT, local_bg_radius=1, adc_threshold=8.0)
    pf = Peakfinder8(coarse_radius(shape), np.ones(shape, dtype=bool), settings)
    found = pf.find(frame)
    assert len(found) == 1 and found["npix"].iloc[0] == 25
    offset = pf._radial_stats(frame).offset[int(np.rint(coarse_radius(shape)[10, 10]))]
    assert found["photons"].iloc[0] == pytest.approx(25 * (12 - offset), rel=1e-12)
    assert found["snr"].iloc[0] == pytest.approx(found["photons"].iloc[0] / 0.01, rel=1e-12)
    assert found["max_photons"].iloc[0] == pytest.approx(12 - offset, rel=1e-12)


def test_max_num_peaks_cap_and_order():
    # Panel numbers: right half 0, left half 1 -> the right half is searched first; within a panel, raster order.
    # The cap applies to the total, as in C (each panel call is capped and a running remainder caps the sum).
    shape = (60, 80)
    panel = np.ones(shape, dtype=int)
    panel[:, 40:] = 0
    centres = [(ss, fs) for ss in (10.3, 30.1, 49.8) for fs in (10.2, 28.9, 50.4, 69.7)]
    frame = noisy_background(shape, seed=13) + np.rint(gaussian_spots(shape, centres, [120.0] * 12)).astype(int)
    pf_args = (coarse_radius(shape), np.ones(shape, dtype=bool))
    found = Peakfinder8(*pf_args, BRIGHT, panel_index=panel).find(frame)
    order = [(round(ss), round(fs)) for ss, fs in zip(found["ss"], found["fs"])]
    right = [(10, 50), (10, 70), (30, 50), (30, 70), (50, 50), (50, 70)]
    left = [(10, 10), (10, 29), (30, 10), (30, 29), (50, 10), (50, 29)]
    assert order == right + left
    capped = Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, max_num_peaks=8), panel_index=panel).find(frame)
    pd.testing.assert_frame_equal(capped, found.iloc[:8])
    capped = Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, max_num_peaks=3), panel_index=panel).find(frame)
    pd.testing.assert_frame_equal(capped, found.iloc[:3])


def test_regions_never_cross_panels():
    shape = (40, 40)
    frame = noisy_background(shape, seed=14)
    frame[6:10, 18:22] = 30                    # a 4 x 4 block split by the panel edge at fs = 20
    panel = np.zeros(shape, dtype=int)
    panel[:, 20:] = 1
    pf_args = (coarse_radius(shape), np.ones(shape, dtype=bool))
    whole = Peakfinder8(*pf_args, BRIGHT).find(frame)
    assert list(whole["npix"]) == [16]
    split = Peakfinder8(*pf_args, BRIGHT, panel_index=panel).find(frame)
    assert list(split["npix"]) == [8, 8]
    np.testing.assert_allclose(split["fs"], [18.5, 20.5])
    panel[:, 20] = -1                          # negative panel number: no panel, the pixels take no part
    gap = Peakfinder8(*pf_args, BRIGHT, panel_index=panel).find(frame)
    assert list(gap["npix"]) == [8]            # fs 21 is now panel 1's first column: never a seed


def test_regions_on_panel_border_are_not_seeded():
    # C starts regions only at pixels off the first/last row and column of a panel.
    shape = (40, 40)
    frame = noisy_background(shape, seed=15)
    frame[0, 10:13] = 30                       # only on the first row: never found
    frame[20, 39] = frame[21, 39] = 30         # only on the last column: never found
    frame[39, 20:22] = frame[38, 21] = 30      # touches an interior pixel: found, border pixels included
    found = Peakfinder8(coarse_radius(shape), np.ones(shape, dtype=bool), BRIGHT).find(frame)
    assert len(found) == 1
    assert found["npix"].iloc[0] == 3 and found["ss"].iloc[0] == pytest.approx((39 + 39 + 38) / 3)


def test_zero_local_sigma_gives_zero_snr():
    # Background photons only on the left; a spot on the right whose whole background disc is zero has local
    # sigma 0, and C then sets its SNR to 0: rejected by any min_snr > 0, kept with min_snr = 0.
    shape = (60, 60)
    frame = np.zeros(shape, dtype=np.int64)
    frame[:, :20] = noisy_background((60, 20), level=0.3, seed=16)
    frame[30:32, 45:47] = 25
    pf_args = (coarse_radius(shape), np.ones(shape, dtype=bool))
    assert len(Peakfinder8(*pf_args, BRIGHT).find(frame)) == 0
    found = Peakfinder8(*pf_args, dataclasses.replace(BRIGHT, min_snr=0.0)).find(frame)
    assert len(found) == 1 and found["snr"].iloc[0] == 0.0 and found["photons"].iloc[0] == 100.0
    frame[28, 49] = 1                          # one photon inside the disc: sigma > 0, the spot is found
    found = Peakfinder8(*pf_args, BRIGHT).find(frame)
    assert len(found) == 1 and found["snr"].iloc[0] > 100


def test_any_real_dtype_and_empty_result():
    shape = (50, 50)
    frame = noisy_background(shape, seed=17)
    frame[20:22, 30:32] = 40
    pf = Peakfinder8(coarse_radius(shape), np.ones(shape, dtype=bool), BRIGHT)
    ref = pf.find(frame)
    assert len(ref) == 1
    for dtype in (np.uint16, np.int32, np.float32, np.float64):
        pd.testing.assert_frame_equal(pf.find(frame.astype(dtype)), ref)
    pd.testing.assert_frame_equal(pf.find(np.asfortranarray(frame)), ref)
    empty = pf.find(np.zeros(shape))
    assert len(empty) == 0 and list(empty.columns) == list(PEAK_COLUMNS)
    assert all(empty[name].dtype == dtype for name, dtype in PEAK_COLUMNS.items())


def test_bad_input():
    shape = (30, 40)
    good = np.ones(shape, dtype=bool)
    good[0, 0] = False
    pf = Peakfinder8(centred_radius(shape, (15.0, 20.0)), good, SPOTS)
    with pytest.raises(ValueError, match=r"\(40, 30\).*\(30, 40\)"):
        pf.find(np.zeros((40, 30)))
    frame = np.zeros(shape)
    frame[0, 0] = np.nan                       # NaN in a bad pixel is fine
    assert len(pf.find(frame)) == 0
    frame[5, 7] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*ss=5, fs=7"):
        pf.find(frame)
    with pytest.raises(ValueError, match="real numbers"):
        pf.find(np.zeros(shape, dtype=complex))
    with pytest.raises(ValueError, match="good has shape"):
        Peakfinder8(np.zeros(shape), np.ones((3, 3), dtype=bool), SPOTS)
    with pytest.raises(ValueError, match="finite and >= 0"):
        Peakfinder8(np.full(shape, np.nan), np.ones(shape, dtype=bool), SPOTS)
    panel = np.zeros(shape, dtype=int)
    panel[5:10, 5:10] = 1
    with pytest.raises(ValueError, match="panel 0 .*rectangle"):
        Peakfinder8(np.zeros(shape), np.ones(shape, dtype=bool), SPOTS, panel_index=panel)


@pytest.mark.parametrize("field, value", [("min_pix_count", 0), ("max_pix_count", 1.5), ("local_bg_radius", 0),
                                          ("min_snr", -1.0), ("adc_threshold", math.nan), ("iterations", 0),
                                          ("max_num_peaks", 0), ("min_res_px", -1.0), ("max_res_px", 0.0)])
def test_settings_validation(field, value):
    with pytest.raises(ValueError, match=f"^Peakfinder8Settings.{field} "):
        dataclasses.replace(SPOTS, **{field: value})


def test_presets():
    assert (CRYSTFEL_DEFAULTS.adc_threshold, CRYSTFEL_DEFAULTS.min_snr, CRYSTFEL_DEFAULTS.min_pix_count,
            CRYSTFEL_DEFAULTS.max_pix_count, CRYSTFEL_DEFAULTS.local_bg_radius, CRYSTFEL_DEFAULTS.min_res_px,
            CRYSTFEL_DEFAULTS.max_res_px, CRYSTFEL_DEFAULTS.max_num_peaks, CRYSTFEL_DEFAULTS.iterations) == (
        800.0, 5.0, 2, 200, 3, 0.0, 1200.0, 2048, 5)
    assert PHOTON_COUNTING.max_res_px == math.inf and PHOTON_COUNTING.min_pix_count == 2
    assert PHOTON_COUNTING.adc_threshold > 1.0   # below 1 photon, sparse radius bins collapse (see module notes)
