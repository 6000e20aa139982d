"""The cascade peak finder on small synthetic frames: Gaussian spots of known photons over flat Poisson water."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cxlspeaks.peaks.cascade import CascadeConfig, CascadePeakFinder, box_threshold, poisson_tail, water_from_isolated
from cxlspeaks.peaks.cascade_train import train_cascade
from cxlspeaks.peaks.network import refine_peaks
from cxlspeaks.peaks.matching import match_frames, peak_metrics

SHAPE = (256, 288)
WATER = 0.01
SIGMA = 0.6


def spot_frame(rng: np.random.Generator, n_spots: int, photons=(2, 200), good=None, water=WATER, shape=SHAPE):
    """Poisson water plus spots of exactly n photons each, photon positions drawn from a Gaussian (sigma SIGMA)
    around a random centre (raw convention: pixel centre at the integer index)."""
    frame = rng.poisson(water, shape).astype(np.float32)
    ss = rng.uniform(10, shape[0] - 10, n_spots)
    fs = rng.uniform(10, shape[1] - 10, n_spots)
    keep = np.ones(n_spots, bool)
    for k in range(n_spots):  # no two spots within 8 px (one-to-one matching needs separable spots)
        keep[k] = np.all(np.hypot(ss[:k][keep[:k]] - ss[k], fs[:k][keep[:k]] - fs[k]) > 8)
    ss, fs = ss[keep], fs[keep]
    n = np.exp(rng.uniform(np.log(photons[0]), np.log(photons[1]), len(ss))).astype(int)
    for s, f, m in zip(ss, fs, n):
        i = np.rint(s + rng.normal(0, SIGMA, m)).astype(int)
        j = np.rint(f + rng.normal(0, SIGMA, m)).astype(int)
        np.add.at(frame, (i, j), 1)
    if good is not None:
        frame[~good] = 0
    return frame, pd.DataFrame({"fs": fs, "ss": ss, "photons": n.astype(float)})


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(7)
    frames, truths = zip(*[spot_frame(rng, 30) for _ in range(16)])
    empty = [rng.poisson(WATER, SHAPE).astype(np.float32) for _ in range(4)]
    good = np.ones(SHAPE, bool)
    config = CascadeConfig(epochs=20, seed=3)
    checkpoint = train_cascade(list(frames) + empty, list(truths) + [truths[0].iloc[:0]] * 4, good, config=config)
    return CascadePeakFinder(checkpoint), checkpoint


def test_poisson_threshold_formulas():
    mu = np.array([0.01, 0.09, 0.3, 1.0, 4.0])
    for k in range(6):
        np.testing.assert_allclose(poisson_tail(np.full(5, k), mu), stats.poisson.sf(k - 1, mu), rtol=1e-10)
    k = box_threshold(mu, 1e-3)
    assert np.all(stats.poisson.sf(k - 1, mu) <= 1e-3)
    assert np.all(stats.poisson.sf(k - 2, mu) > 1e-3)


@pytest.mark.parametrize("water", [0.003, 0.01, 0.03])
def test_water_level_from_isolated_photons(water):
    rng = np.random.default_rng(1)
    frame = rng.poisson(water, (512, 512)).astype(np.float32)
    for _ in range(300):  # bright clustered spots must not raise the estimate
        i, j = rng.integers(5, 507, 2)
        frame[i - 1:i + 2, j - 1:j + 2] += rng.poisson(5.0, (3, 3))
    _, _, level = CascadePeakFinder().candidates(frame, np.ones(frame.shape, bool))
    assert abs(np.median(level) / water - 1) < 0.1
    assert water_from_isolated(np.array([0]), np.array([100]))[0] > 0


def test_sparse_centroid_equals_peaknet(trained):
    finder, _ = trained
    rng = np.random.default_rng(11)
    frame, truth = spot_frame(rng, 20, photons=(5, 100))
    good = np.ones(SHAPE, bool)
    good[:, 100:104] = False
    frame[~good] = 0
    pc, _, _ = finder.candidates(frame, good)
    try:
        mine = finder.refine(pc)
    finally:
        finder._clear()
    width = finder._width
    from cxlspeaks.peaks.cascade import PAD

    ss, fs = np.divmod(pc, width)
    theirs = refine_peaks(frame, good, (ss - PAD).astype(float), (fs - PAD).astype(float))
    assert len(mine) >= len(truth)
    np.testing.assert_allclose(mine.to_numpy(), theirs.to_numpy(), rtol=1e-9, atol=1e-9)


def test_finds_every_spot_of_five_photons_with_accurate_centroids(trained):
    finder, _ = trained
    rng = np.random.default_rng(12)
    good = np.ones(SHAPE, bool)
    recall, errors, bright = [], [], []
    for _ in range(4):
        frame, truth = spot_frame(rng, 25, photons=(5, 300))
        found = finder.find(frame, good)
        assert list(found.columns) == ["fs", "ss", "photons", "snr", "score"]
        t, _ = match_frames([found], [truth], 2.0)
        recall.append(t["matched"].to_numpy())
        strong = t["photons"].to_numpy() >= 50
        errors.append(t["error_px"].to_numpy()[strong])
        bright.append(t["matched"].to_numpy()[strong])
    assert np.concatenate(recall).all(), f"missed {np.sum(~np.concatenate(recall))} spots of >= 5 photons"
    errors = np.concatenate(errors)
    assert len(errors) > 10 and np.concatenate(bright).all()
    assert errors.max() < 0.3


def test_few_false_peaks_on_empty_frames(trained):
    finder, _ = trained
    rng = np.random.default_rng(13)
    good = np.ones(SHAPE, bool)
    false = [len(finder.find(rng.poisson(WATER, SHAPE).astype(np.float32), good)) for _ in range(8)]
    assert np.mean(false) <= 0.5, false
    assert len(finder.find(np.zeros(SHAPE, np.float32), good)) == 0


def test_no_peak_on_masked_pixels(trained):
    finder, _ = trained
    rng = np.random.default_rng(14)
    frame, truth = spot_frame(rng, 10, photons=(20, 100))
    good = np.ones(SHAPE, bool)
    good[100:140, 100:140] = False
    good[:, 200:205] = False
    frame[118:121, 118:121] += 50          # a bright spot, and hot pixels, on masked pixels
    frame[50, 202] = 1000
    found = finder.find(frame, good)
    assert len(found)
    i = np.clip(np.rint(found["ss"]).astype(int), 0, SHAPE[0] - 1)
    j = np.clip(np.rint(found["fs"]).astype(int), 0, SHAPE[1] - 1)
    assert good[i, j].all()
    assert not ((found["ss"].between(103, 137)) & (found["fs"].between(103, 137))).any()
    assert not ((found["ss"] - 50).abs().lt(3) & (found["fs"] - 202).abs().lt(4)).any()


def test_save_load_round_trip(trained, tmp_path):
    finder, checkpoint = trained
    path = tmp_path / "cascade.pt"
    finder.save(path)
    again = tmp_path / "again.pt"
    CascadePeakFinder(path).save(again)
    assert path.read_bytes() == again.read_bytes()
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["model"] == "cascade" and raw["threshold"] == checkpoint["threshold"]
    loaded = CascadePeakFinder.load(path)
    rng = np.random.default_rng(15)
    frame, _ = spot_frame(rng, 20)
    good = np.ones(SHAPE, bool)
    pd.testing.assert_frame_equal(finder.find(frame, good), loaded.find(frame, good))


def test_calibrated_threshold_and_metrics(trained):
    _, checkpoint = trained
    scan = pd.DataFrame(checkpoint["calibration"])
    best = scan.loc[scan["f1"].idxmax()]
    assert checkpoint["threshold"] == best["threshold"]
    finder = CascadePeakFinder(checkpoint)
    rng = np.random.default_rng(16)
    frames, truths = zip(*[spot_frame(rng, 25) for _ in range(3)])
    found = [finder.find(f, np.ones(SHAPE, bool)) for f in frames]
    t, p = match_frames(found, list(truths), 2.0)
    metrics = peak_metrics(t, p, 3.0)
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.9, metrics


def test_bad_inputs():
    finder = CascadePeakFinder()
    with pytest.raises(ValueError, match="good has shape"):
        finder.candidates(np.zeros((10, 12), np.float32), np.ones((12, 10), bool))
    with pytest.raises(RuntimeError, match="untrained"):
        finder.find(np.ones((10, 12), np.float32) * 3, np.ones((10, 12), bool))
    from cxlspeaks.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        CascadePeakFinder({"config": {"model": "peaknet"}})


def test_ring_bins_of_a_prepared_detector(trained):
    from cxlspeaks.geometry import shipped_geometry

    _, checkpoint = trained
    geometry = shipped_geometry("tiny", clen_m=0.15)
    finder = CascadePeakFinder(checkpoint)
    finder.prepare(geometry)
    rng = np.random.default_rng(17)
    good = geometry.mask
    frame = rng.poisson(0.02, geometry.shape).astype(np.float32)
    frame[60:63, 40:43] += 20
    frame[~good] = 0
    pc, _, level = finder.candidates(frame, good)
    finder._clear()
    assert finder._n_bins > 1 and finder._bins.shape == (geometry.shape[0] * geometry.shape[1],)
    found = finder.find(frame, good)
    assert ((found["ss"] - 61).abs().lt(1) & (found["fs"] - 41).abs().lt(1)).sum() == 1
    with pytest.raises(ValueError, match="does not fit the prepared detector"):
        finder.find(np.zeros(SHAPE, np.float32), np.ones(SHAPE, bool))


def test_the_workflow_settings_are_the_cascade_config():
    """peaks.cascade of the config schema: CascadeConfig's fields with its defaults (match_radius_px and seed come
    from peaks.match_radius_px and the run's seed); `cascade` is a finder of the evaluation."""
    import dataclasses
    from pathlib import Path

    import yaml

    from cxlspeaks.peaks.evaluation import FINDERS, make_finder

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text())
    peaks = schema["properties"]["peaks"]["properties"]
    settings = peaks["cascade"]["properties"]
    defaults = {f.name: f.default for f in dataclasses.fields(CascadeConfig)}
    assert set(settings) <= set(defaults) - {"match_radius_px", "seed"}
    assert {k: v["default"] for k, v in settings.items()} == {k: defaults[k] for k in settings}
    assert "cascade" in FINDERS and "cascade" in peaks["finders"]["default"]
    assert "cascade" in peaks["finders"]["items"]["enum"]
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_finder("cascade")


def test_make_finder_loads_a_saved_cascade(trained, tmp_path):
    from cxlspeaks.peaks.evaluation import make_finder

    finder, checkpoint = trained
    finder.save(tmp_path / "c.pt")
    loaded = make_finder("cascade", tmp_path / "c.pt", threads=1)
    rng = np.random.default_rng(2)
    frame, _ = spot_frame(rng, 10)
    good = np.ones(SHAPE, bool)
    pd.testing.assert_frame_equal(loaded.find(frame, good), finder.find(frame, good))
