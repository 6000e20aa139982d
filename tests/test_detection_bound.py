"""The detection bound on synthetic spots of known photons over a known background, against the Poisson test
computed independently with scipy.stats.poisson."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy.stats import poisson

from cxlspeaks.peaks.bound import (bound_probability, detection_bound, detection_probability, k_alpha,
                                   realized_detections, reflection_sums)
from cxlspeaks.io import BACKGROUND, SIGNAL, WATER_SCALE

SHAPE = (64, 80)


def gaussian_spot(photons: float, fs: float, ss: float, sigma: float = 0.7) -> np.ndarray:
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    g = np.exp(-((xx - fs) ** 2 + (yy - ss) ** 2) / (2 * sigma ** 2))
    return photons * g / g.sum()


def brute_k(b: float, alpha: float) -> int:
    k = 0
    while poisson.sf(k - 1, b) > alpha:       # P(Poisson(b) >= k) > alpha
        k += 1
    return k


@pytest.mark.parametrize("b", [0.0, 0.003, 0.05, 0.7, 4.0, 40.0])
@pytest.mark.parametrize("alpha", [1e-9, 1e-6, 1e-3, 0.2])
def test_k_alpha_is_the_smallest_count_at_the_level(b, alpha):
    assert k_alpha(b, alpha) == brute_k(b, alpha)


@pytest.mark.parametrize("photons", [1.5, 4.0, 12.0, 40.0])
@pytest.mark.parametrize("water", [0.002, 0.05, 0.5])
def test_half_photon_footprint_equals_the_independent_poisson_calculation(photons, water):
    signal = gaussian_spot(photons, 30.2, 20.6)
    background = np.full(SHAPE, water)
    good = np.ones(SHAPE, bool)
    good[:, 70:] = False                                    # masked pixels count neither as signal nor positions
    rate = 0.4                                              # false peaks per empty frame
    sums = reflection_sums(signal, background, good, np.array([[30.2, 20.6]]))
    got = bound_probability(sums, int(good.sum()), rate, footprint=0.5)[0]

    # independently: the fewest brightest pixels of the 9 x 9 window holding half the window's photons
    window = signal[16:25, 26:35].ravel()
    order = np.sort(window)[::-1]
    n = int(np.searchsorted(np.cumsum(order), 0.5 * window.sum() - 1e-12) + 1)
    s, b = order[:n].sum(), n * water
    alpha = rate / (good.sum() / n)
    k = brute_k(b, alpha)
    assert got == pytest.approx(poisson.sf(k - 1, s + b), rel=1e-9)
    # the best footprint can only do better, and more photons are easier to see
    best = bound_probability(sums, int(good.sum()), rate)[0]
    assert best >= got - 1e-12
    assert detection_probability(2 * s, b, alpha) >= detection_probability(s, b, alpha)


def test_a_lower_false_peak_rate_costs_detection():
    signal = gaussian_spot(5.0, 40.0, 30.0)
    sums = reflection_sums(signal, np.full(SHAPE, 0.05), np.ones(SHAPE, bool), np.array([[40.0, 30.0]]))
    p = [bound_probability(sums, SHAPE[0] * SHAPE[1], r)[0] for r in (10.0, 1.0, 0.01)]
    assert p[0] >= p[1] >= p[2] and p[0] > p[2]
    assert 0.0 < p[2] < 1.0


def test_pixels_nearer_another_reflection_are_not_counted():
    positions = np.array([[30.0, 20.0], [35.0, 20.0]])
    signal = gaussian_spot(10.0, 30.0, 20.0) + gaussian_spot(100.0, 35.0, 20.0)
    sums = reflection_sums(signal, np.full(SHAPE, 0.01), np.ones(SHAPE, bool), positions)
    assert sums["s_window"][0] == pytest.approx(10.0, rel=0.02)   # not the bright neighbour's 100 photons
    assert sums["s_window"][1] == pytest.approx(100.0, rel=0.02)


def test_bound_table_from_a_frames_file_uses_the_water_scale(tmp_path):
    path = tmp_path / "frames.h5"
    spots = [(20.0, 15.0, 2.0), (50.0, 15.0, 5.0), (20.0, 45.0, 15.0), (50.0, 45.0, 50.0)]
    signal = sum(gaussian_spot(p, fs, ss) for fs, ss, p in spots)
    with h5py.File(path, "w") as h5:
        h5.create_dataset(SIGNAL, data=np.stack([signal, signal]).astype(np.float32))
        h5.create_dataset(BACKGROUND, data=np.full(SHAPE, 0.05, np.float32))
        h5.create_dataset(WATER_SCALE, data=np.array([1.0, 20.0], np.float32))
    truth = pd.DataFrame([{"dataset": "d", "frame": f, "flux": "normal", "fs": fs, "ss": ss, "photons": p}
                          for f in (0, 1) for fs, ss, p in spots])
    rates = pd.DataFrame({"finder": ["x"], "flux": ["normal"], "false_per_empty_frame": [0.0], "n_empty": [4]})
    recall = pd.DataFrame({"finder": "x", "flux": "normal", "bin": ["1-3", "3-10", "10-30", ">=30"],
                           "recall": [0.0, 0.1, 0.5, 1.0]})
    good = {"d": np.ones(SHAPE, bool)}
    table = detection_bound(truth, {"d": path}, good, rates, recall, footprint=0.5)
    assert list(table["bin"]) == ["1-3", "3-10", "10-30", ">=30"] and (table["n_true"] == 2).all()
    assert table["false_rate_used"].iloc[0] == pytest.approx(0.5 / 4)          # no false peak: half of one
    assert table["finder_recall"].tolist() == [0.0, 0.1, 0.5, 1.0]
    assert table["bound_recall"].is_monotonic_increasing
    # frame 1 has 20 x the water: per reflection, the mean of the two frames' probabilities
    one = truth[truth["frame"] == 0].reset_index(drop=True)
    single = detection_bound(one, {"d": path}, good, rates, footprint=0.5)
    assert (table["bound_recall"] <= single["bound_recall"] + 1e-12).all()
    assert (table["bound_recall"] < single["bound_recall"] - 1e-6).any()


@pytest.mark.parametrize("photons,water", [(3.0, 0.005), (6.0, 0.05), (15.0, 0.5)])
def test_realized_detections_happen_as_often_as_the_bound_says(photons, water):
    """Over Poisson frames of one spot, the fraction the realised test detects is the bound's P_detect (within
    4 binomial standard errors), and a frame without the spot is detected at most at the test's level."""
    signal = gaussian_spot(photons, 40.3, 30.7)
    background = np.full(SHAPE, water)
    good = np.ones(SHAPE, bool)
    rate, n_frames = 0.5, 1500
    position = np.array([[40.3, 30.7]])
    p_bound = bound_probability(reflection_sums(signal, background, good, position), int(good.sum()), rate)[0]
    rng = np.random.default_rng(7)
    hits = empty = 0
    for _ in range(n_frames):
        counts = rng.poisson(signal + background)
        sums = reflection_sums(signal, background, good, position, counts=counts)
        hits += int(realized_detections(sums, int(good.sum()), rate)[0])
        sums0 = reflection_sums(signal, background, good, position, counts=rng.poisson(background))
        empty += int(realized_detections(sums0, int(good.sum()), rate)[0])
    se = np.sqrt(p_bound * (1 - p_bound) / n_frames)
    assert abs(hits / n_frames - p_bound) <= 4 * se + 1e-9
    assert 0.02 < p_bound < 0.999 or photons == 15.0        # the cases are not all trivially 0 or 1
    alpha_max = rate * 25 / good.sum()                     # the level of the largest footprint (25 pixels)
    assert empty / n_frames <= alpha_max + 4 / n_frames
