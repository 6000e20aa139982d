"""The peak network: targets, loss, centroids from photons, and a short training that finds known spots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxlspeaks.peaks.network import (CropSet, NetworkPeakFinder, PeakNet, PeakNetConfig, centernet_focal_loss,
                                     fit_peaknet, refine_peaks, target_heatmap)


def gaussian_spots(shape, spots, sigma_px, rng, background=0.01):
    """Poisson counts of Gaussian spots (fs, ss, photons; raw convention) on a flat background: each photon lands
    at a Gaussian offset from its spot centre and is counted in the pixel whose centre is nearest."""
    frame = rng.poisson(background, size=shape).astype(np.float32)
    for fs, ss, photons in spots:
        n = rng.poisson(photons)
        x = np.rint(fs + rng.normal(0, sigma_px, n)).astype(int)
        y = np.rint(ss + rng.normal(0, sigma_px, n)).astype(int)
        inside = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
        np.add.at(frame, (y[inside], x[inside]), 1)
    return frame


def random_spots(rng, shape, n, photons=(30, 300), margin=10, min_separation=12):
    spots = []
    while len(spots) < n:
        fs, ss = rng.uniform(margin, shape[1] - margin), rng.uniform(margin, shape[0] - margin)
        if all(np.hypot(fs - a, ss - b) > min_separation for a, b, _ in spots):
            spots.append((fs, ss, rng.uniform(*photons)))
    return spots


def test_target_heatmap_marks_the_cell_that_holds_each_centre():
    heat = target_heatmap(np.array([5.4, 17.6]), np.array([2.0, 30.9]), (8, 8), cell=4)
    # raw pixel 5.4 lies in pixels 5 -> cell 1; 17.6 rounds into pixel 18 -> cell 4; ss 2.0 -> cell 0; 30.9 -> 7
    assert heat[0, 1] == 1.0 and heat[7, 4] == 1.0
    assert (heat == 1.0).sum() == 2
    # neighbours: exp(-d^2 / (2 sigma^2)) in cells, sigma 0.8
    assert heat[1, 1] == pytest.approx(np.exp(-1 / (2 * 0.8 ** 2)), rel=1e-6)
    assert heat[4, 0] < 1e-4


def test_focal_loss_rewards_the_right_heatmap_and_ignores_invalid_cells():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 3, 4] = 1.0
    valid = torch.ones_like(target, dtype=torch.bool)
    good = torch.full_like(target, -8.0)
    good[0, 0, 3, 4] = 8.0
    bad = -good
    assert centernet_focal_loss(good, target, valid) < 1e-3 < centernet_focal_loss(bad, target, valid)
    # a confident false peak in a cell without good pixels costs nothing
    spurious = good.clone()
    spurious[0, 0, 0, 0] = 8.0
    valid[0, 0, 0, 0] = False
    assert centernet_focal_loss(spurious, target, valid) == pytest.approx(float(centernet_focal_loss(good, target,
                                                                                                    valid)))


def test_refined_centroid_is_the_photon_centre_to_a_fraction_of_a_pixel():
    rng = np.random.default_rng(3)
    shape = (96, 96)
    spots = [(20.3, 30.7, 400.0), (60.85, 70.15, 400.0), (70.5, 20.25, 400.0)]
    frame = gaussian_spots(shape, spots, 1.5, rng)
    good = np.ones(shape, bool)
    # start one to two pixels off, as a 4-pixel cell centre is
    start_fs = np.array([s[0] for s in spots]) + np.array([1.6, -1.2, 0.9])
    start_ss = np.array([s[1] for s in spots]) + np.array([-1.4, 1.5, 1.1])
    table = refine_peaks(frame, good, start_ss, start_fs)
    error = np.hypot(table["fs"] - [s[0] for s in spots], table["ss"] - [s[1] for s in spots])
    # photon-counting limit: sigma / sqrt(N) = 1.5 / 20 = 0.075 px per axis
    assert error.max() < 0.3
    # photons within 4 px of a sigma-1.5 spot: 1 - exp(-4^2 / (2 * 1.5^2)) = 0.97 of the spot's recorded photons
    recorded = np.array([frame[round(ss) - 6:round(ss) + 7, round(fs) - 6:round(fs) + 7].sum() for fs, ss, _ in spots])
    assert np.allclose(table["photons"], 0.97 * recorded, rtol=0.04)
    assert (table["snr"] > 15).all()


def test_refinement_ignores_masked_pixels():
    rng = np.random.default_rng(4)
    shape = (48, 48)
    frame = gaussian_spots(shape, [(24.0, 24.0, 300.0)], 1.0, rng)
    frame[20:30, 28:32] = 1000  # a hot region, masked
    good = np.ones(shape, bool)
    good[20:30, 28:32] = False
    table = refine_peaks(frame, good, np.array([24.5]), np.array([25.0]))
    assert abs(table["fs"].iloc[0] - 24.0) < 0.3 and abs(table["ss"].iloc[0] - 24.0) < 0.3


def synthetic_crops(rng, n_crops, config):
    size = config.crop_px
    counts, good, target = [], [], []
    for k in range(n_crops):
        spots = random_spots(rng, (size, size), int(rng.integers(0, 4)), margin=4) if k % 4 else []
        counts.append(gaussian_spots((size, size), spots, 1.0, rng).astype(np.uint16))
        good.append(np.ones((size, size), bool))
        fs = np.array([s[0] for s in spots], float)
        ss = np.array([s[1] for s in spots], float)
        target.append(target_heatmap(fs, ss, (size // config.cell, size // config.cell), config.cell))
    return CropSet(np.stack(counts), np.stack(good), np.stack(target))


def test_a_short_training_finds_known_spots_within_one_pixel():
    torch.set_num_threads(1)
    config = PeakNetConfig(crop_px=48, epochs=12, batch_size=16, learning_rate=3e-3, calibration_frames=0, seed=1)
    rng = np.random.default_rng(11)
    model, history = fit_peaknet(synthetic_crops(rng, 192, config), config)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    checkpoint = dict(model_state=model.state_dict(), config={"model": "peaknet", "network": config.to_dict()},
                      threshold=0.5)
    finder = NetworkPeakFinder(checkpoint)
    shape = (128, 128)
    spots = random_spots(np.random.default_rng(12), shape, 6, photons=(40, 300))
    frame = gaussian_spots(shape, spots, 1.0, np.random.default_rng(13))
    found = finder.find(frame, np.ones(shape, bool))
    truth = pd.DataFrame(spots, columns=["fs", "ss", "photons"])
    distance = np.hypot(found["fs"].to_numpy()[:, None] - truth["fs"].to_numpy()[None],
                        found["ss"].to_numpy()[:, None] - truth["ss"].to_numpy()[None])
    assert (distance.min(axis=0) < 1.0).all(), f"missed spots: {truth[distance.min(axis=0) >= 1.0]}"
    assert len(found) <= len(spots) + 1
    # an empty frame of background photons gives (almost) nothing
    empty = finder.find(np.random.default_rng(14).poisson(0.01, shape).astype(np.float32), np.ones(shape, bool))
    assert len(empty) <= 1


def test_peaknet_maps_cells_and_rejects_non_multiple_crops():
    net = PeakNet(width=8, cell=4)
    out = net(torch.zeros(2, 1, 32, 48), torch.ones(2, 1, 32, 48))
    assert out.shape == (2, 1, 8, 12)
    with pytest.raises(ValueError, match="crop_px"):
        PeakNetConfig(crop_px=50, cell=4)
