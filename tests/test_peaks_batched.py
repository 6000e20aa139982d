"""The batched device path (peaks.batched) against the frame-by-frame finder and predictor, on the CPU device:
same peaks as NetworkPeakFinder.find, spots found where the photons are, masked pixels never peaks, bslz4 chunks
decoded to the raw frames, hit scores of FramePredictor.predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxlspeaks.checkpoint import save_checkpoint
from cxlspeaks.geometry import tiny_geometry
from cxlspeaks.models import build_model
from cxlspeaks.peaks.batched import BatchedPeakPipeline, Chunks
from cxlspeaks.peaks.batched_ops import cell_peaks
from cxlspeaks.peaks.network import NetworkPeakFinder, PeakNet, PeakNetConfig, fit_peaknet
from cxlspeaks.sources.messages import compress_bytes
from test_peaknet import gaussian_spots, random_spots, synthetic_crops

SHAPE = (72, 92)   # not a multiple of the 4-px cell: the padding is exercised


def _checkpoint(model, config, threshold):
    return dict(model_state=model.state_dict(), config={"model": "peaknet", "network": config.to_dict()},
                threshold=threshold)


@pytest.fixture(scope="module")
def trained():
    """test_peaknet's short training: a net that finds Gaussian spots of >= 40 photons (threshold 0.5)."""
    torch.set_num_threads(1)
    config = PeakNetConfig(crop_px=48, epochs=12, batch_size=16, learning_rate=3e-3, calibration_frames=0, seed=1)
    model, _ = fit_peaknet(synthetic_crops(np.random.default_rng(11), 192, config), config)
    return _checkpoint(model, config, 0.5)


def _random_net(max_peaks=2048):
    torch.manual_seed(0)
    config = PeakNetConfig(width=8, max_peaks=max_peaks)
    return _checkpoint(PeakNet(config.width, config.cell), config, 0.5)


def _spot_frames(seed, n_spots, background=0.01, sigma_px=1.0):
    rng = np.random.default_rng(seed)
    spots = [random_spots(rng, SHAPE, n, photons=(80, 300)) for n in n_spots]
    frames = np.stack([gaussian_spots(SHAPE, s, sigma_px, rng, background) for s in spots]).astype(np.uint16)
    return frames, spots


def _assert_same_peaks(batched, reference):
    """Same number, positions within 0.01 px, photons within 1e-3 relative (+1e-6 photons), in the same order."""
    assert len(batched) == len(reference)
    for got, want in zip(batched, reference):
        assert len(got) == len(want)
        assert list(got.columns) == list(want.columns)
        np.testing.assert_allclose(got[["fs", "ss"]].to_numpy(), want[["fs", "ss"]].to_numpy(), rtol=0, atol=0.01)
        np.testing.assert_allclose(got["photons"], want["photons"], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got["snr"], want["snr"], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-7)


def test_trained_net_batch_equals_find_and_finds_the_spots_incl_an_empty_frame(trained):
    frames, spots = _spot_frames(12, [0, 2, 6, 4])
    good = np.ones(SHAPE, bool)
    finder = NetworkPeakFinder(trained)
    reference = [finder.find(f.astype(np.float32), good) for f in frames]
    with BatchedPeakPipeline(trained, batch_size=3) as pipeline:
        batched = pipeline.find(frames, good)
        streamed = [t for result in pipeline.run(frames, good) for t in result.peaks]   # batches of 3 and 1
    _assert_same_peaks(batched, reference)
    _assert_same_peaks(streamed, reference)
    assert len(batched[0]) == 0                       # background only (0.01 photon/px): no peak
    for table, truth in zip(batched[1:], spots[1:]):
        fs, ss = np.array([s[0] for s in truth]), np.array([s[1] for s in truth])
        distance = np.hypot(table["fs"].to_numpy()[:, None] - fs, table["ss"].to_numpy()[:, None] - ss)
        # every spot found; photon-counting limit of the centroid: sigma / sqrt(N) <= 1 / sqrt(80) = 0.11 px
        assert (distance.min(axis=0) < 0.6).all()
        assert len(table) <= len(truth) + 1


def test_random_net_at_a_low_threshold_many_peaks_merges_and_the_per_frame_cap():
    """A random net at the 85% quantile of its probabilities: hundreds of peaks, close ones merged, equal to find;
    with max_peaks 5 the cut keeps the 5 best scores per frame, as find does."""
    frames, _ = _spot_frames(3, [3, 8, 0, 5], background=0.6, sigma_px=1.3)
    good = np.ones(SHAPE, bool)
    good[30:33, :] = False
    for max_peaks in (2048, 5):
        checkpoint = _random_net(max_peaks)
        finder = NetworkPeakFinder(checkpoint)
        p = np.stack([finder.probabilities(f.astype(np.float32), good) for f in frames])
        threshold = float(np.quantile(p[p > 0], 0.85))
        reference = [finder.find(f.astype(np.float32), good, threshold=threshold) for f in frames]
        with BatchedPeakPipeline(checkpoint, threshold=threshold) as pipeline:
            batched = pipeline.find(frames, good)
            cells = cell_peaks(pipeline.probabilities(torch.from_numpy(frames.astype(np.float32)),
                                                      torch.from_numpy(good).expand(*frames.shape)),
                               threshold, max_peaks)[0]
        _assert_same_peaks(batched, reference)
        n_cells = np.bincount(cells.numpy(), minlength=len(frames))
        if max_peaks == 5:
            assert (n_cells == 5).all() and all(len(t) <= 5 for t in batched)
        else:
            assert sum(len(t) for t in batched) > 40
            assert (n_cells > [len(t) for t in batched]).any()     # some close peaks were merged


def test_masked_pixels_are_never_peaks_and_saturated_pixels_leave_the_centroid(trained):
    frames, _ = _spot_frames(21, [4, 4])
    good = np.ones(SHAPE, bool)
    good[10:20, 40:52] = False
    frames[:, 10:20, 40:52] = 1000                    # a hot, masked region
    finder = NetworkPeakFinder(trained)
    reference = [finder.find(f.astype(np.float32), good) for f in frames]
    with BatchedPeakPipeline(trained) as pipeline:
        batched = pipeline.find(frames, good)
        # a centroid mask that also drops the brightest pixel of each found spot (a saturated core)
        core = np.ones(frames.shape, bool)
        for k, table in enumerate(batched):
            core[k, np.rint(table["ss"]).astype(int), np.rint(table["fs"]).astype(int)] = False
        centroid_good = good[None] & core
        without_core = pipeline.find(frames, good, centroid_good=centroid_good)
    _assert_same_peaks(batched, reference)
    _assert_same_peaks(without_core, [finder.find(f.astype(np.float32), good, centroid_good=c)
                                      for f, c in zip(frames, centroid_good)])
    for table in batched:
        assert len(table) >= 3
        ss, fs = np.rint(table["ss"]).astype(int), np.rint(table["fs"]).astype(int)
        assert good[ss, fs].all()
        assert not ((table["ss"] > 8) & (table["ss"] < 21) & (table["fs"] > 38) & (table["fs"] < 53)).any()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bslz4_chunks_decode_to_the_raw_frames_and_give_the_same_peaks(trained, dtype):
    frames, _ = _spot_frames(31, [3, 0, 5])
    frames = frames.astype(dtype)
    good = np.ones(SHAPE, bool)
    frames[:, 0, :5] = np.iinfo(dtype).max             # DECTRIS no-data marker on masked pixels
    good[0, :5] = False
    chunks = Chunks([compress_bytes(f, "bslz4") for f in frames], dtype, SHAPE)
    with BatchedPeakPipeline(trained, batch_size=2, decode_threads=2) as pipeline:
        assert np.array_equal(pipeline.decode(chunks), frames)
        from_chunks = [t for result in pipeline.run(chunks, good) for t in result.peaks]
        _assert_same_peaks(from_chunks, pipeline.find(frames, good))
        bad = Chunks([chunks.payloads[0], chunks.payloads[1][:40]], dtype, SHAPE)
        with pytest.raises(ValueError, match="chunk 1"):
            pipeline.decode(bad)
        with pytest.raises(ValueError, match="chunk 0: decompresses to"):
            pipeline.decode(Chunks(chunks.payloads[:1], dtype, (SHAPE[0] - 1, SHAPE[1])))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_autocast_on_the_cpu_finds_the_same_bright_spots(trained, dtype):
    """bf16 (8-bit mantissa) and fp16 move the probabilities by < 1%; positions come from the photons in float64,
    so every spot found in float32 with a score far from the threshold is found at the same position."""
    frames, _ = _spot_frames(41, [5, 3])
    good = np.ones(SHAPE, bool)
    with BatchedPeakPipeline(trained) as full, BatchedPeakPipeline(trained, dtype=dtype) as half:
        for want, got in zip(full.find(frames, good), half.find(frames, good)):
            bright = want[(want["score"] - 0.5).abs() > 0.1]
            distance = np.hypot(got["fs"].to_numpy()[:, None] - bright["fs"].to_numpy(),
                                got["ss"].to_numpy()[:, None] - bright["ss"].to_numpy())
            assert len(bright) >= 2 and (distance.min(axis=0) < 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 runs on CUDA only")
def test_float16_on_cuda_equals_the_cpu_path(trained):
    frames, _ = _spot_frames(51, [6, 0, 4])
    good = np.ones(SHAPE, bool)
    reference = NetworkPeakFinder(trained)
    with BatchedPeakPipeline(trained, device="cuda", dtype="float16") as pipeline:
        for got, frame in zip(pipeline.find(frames, good), frames):
            want = reference.find(frame.astype(np.float32), good)
            bright = want[(want["score"] - 0.5).abs() > 0.1]
            distance = np.hypot(got["fs"].to_numpy()[:, None] - bright["fs"].to_numpy(),
                                got["ss"].to_numpy()[:, None] - bright["ss"].to_numpy())
            assert (distance.min(axis=0) < 0.01).all()


def _frame_models(tmp_path, binned_shape, bin_factor):
    """Random-weight hit (hit_fcn), photon-energy (water_profile_linear: reads the radius) and camera-length
    (paper_linear) checkpoints, as the pipeline loads them."""
    torch.manual_seed(3)
    paths = {}
    for attribute, model, inputs, n in (("hit", "hit_fcn", ("counts", "mask"), 1),
                                        ("photon_energy", "water_profile_linear", ("counts", "mask", "radius"), 3),
                                        ("clen", "paper_linear", ("counts",), 2)):
        net = build_model(model, (len(inputs), *binned_shape), n)
        values = [7000.0, 8000.0, 9000.0] if attribute == "photon_energy" else [0.1, 0.15]
        content = dict(model_state=net.state_dict(), optimizer_state={}, epoch=1,
                       config={"attribute": attribute, "model": model, "loss": "bce" if n == 1 else "ce"},
                       class_names=["no peaks", "peaks"] if n == 1 else [str(v) for v in values],
                       class_values=[0.0, 1.0] if n == 1 else values, input_shape=[len(inputs), *binned_shape],
                       inputs=list(inputs), bin_factor=bin_factor)
        paths[attribute] = tmp_path / attribute / "checkpoint.pt"
        save_checkpoint(paths[attribute], **content)
    return paths


def test_scores_equal_frame_predictor_and_peaks_only_for_hits(trained, tmp_path):
    from cxlspeaks.features import binned_frames, mask_fraction
    from cxlspeaks.pipeline import FramePredictor

    geometry = tiny_geometry(n_fs=SHAPE[1], n_ss=SHAPE[0])
    good = geometry.mask
    frames, _ = _spot_frames(61, [6, 0, 3, 1, 0, 4])
    paths = _frame_models(tmp_path, (SHAPE[0] // 4, SHAPE[1] // 4), 4)
    predictor = FramePredictor(paths)
    values = np.where(good, frames, 0).astype(np.float32)
    reference = predictor.predict(binned_frames(values, good, 4), mask_fraction(good, 4), geometry=geometry)
    predictor.threshold = float(np.median(reference["hit_probability"]))   # some hits, some not
    reference = predictor.predict(binned_frames(values, good, 4), mask_fraction(good, 4), geometry=geometry)
    assert 0 < reference["is_hit"].sum() < len(frames)
    finder = NetworkPeakFinder(trained)
    with BatchedPeakPipeline(trained, predictor=predictor) as pipeline:
        result = pipeline.process(frames, good, geometry=geometry)
    np.testing.assert_allclose(result.scores["hit_probability"], reference["hit_probability"], rtol=1e-5)
    assert list(result.scores.columns) == list(reference.columns)
    assert result.scores["is_hit"].tolist() == reference["is_hit"].tolist()
    for column in ("photon_energy_ev", "clen_m"):
        np.testing.assert_array_equal(result.scores[column], reference[column])
    for table, frame, hit in zip(result.peaks, frames, reference["is_hit"]):
        if not hit:
            assert table is None
        else:
            _assert_same_peaks([table], [finder.find(frame.astype(np.float32), good)])


def test_bad_input_is_one_clear_error(trained):
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        BatchedPeakPipeline(trained, dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        BatchedPeakPipeline(trained, batch_size=0)
    with BatchedPeakPipeline(trained) as pipeline:
        with pytest.raises(ValueError, match=r"good-pixel mask of shape \(10, 10\)"):
            pipeline.find(np.zeros((2, *SHAPE), np.uint16), np.ones((10, 10), bool))
        with pytest.raises(ValueError, match="a batch is"):
            pipeline.find(np.zeros(SHAPE, np.uint16), np.ones(SHAPE, bool))
        with pytest.raises(ValueError, match="dtype complex64"):
            pipeline.find(np.zeros((1, *SHAPE), np.complex64), np.ones(SHAPE, bool))


def test_the_live_scorer_on_a_device_gives_the_cpu_finders_peaks(trained, tmp_path):
    """`cxlspeaks live --finder network --device ...`: a worker's FrameScorer with the peak network on a torch
    device (here the CPU device, the code path a GPU takes) scores and finds as the CPU finder does."""
    from cxlspeaks.live.workers import FrameScorer, peak_device
    from cxlspeaks.sources.base import Frame

    geometry = tiny_geometry(n_fs=SHAPE[1], n_ss=SHAPE[0])
    good = geometry.mask
    _frame_models(tmp_path, (SHAPE[0] // 4, SHAPE[1] // 4), 4)
    saved = {"optimizer_state": {}, "epoch": 1, "class_names": ["peak"], **trained}
    saved["config"] = {**trained["config"], "attribute": "peaks"}
    save_checkpoint(tmp_path / "peaks" / "checkpoint.pt", **saved)
    cpu = FrameScorer(tmp_path, "network", threshold=0.0)          # every frame a hit: peaks for all
    device = FrameScorer(tmp_path, "network", threshold=0.0, peak_device="cpu")
    frames, _ = _spot_frames(71, [5, 0, 2])
    for i, counts in enumerate(frames):
        frame = Frame(event=f"//{i}", counts=counts.astype(np.float32), good=good, saturated=np.zeros_like(good))
        (row, peaks), (ref_row, ref_peaks) = device.score(frame, geometry), cpu.score(frame, geometry)
        assert row == ref_row
        _assert_same_peaks([peaks], [ref_peaks])
    assert peak_device("cpu") is None
    assert peak_device("auto") == ("cuda" if torch.cuda.is_available() else None)
    with pytest.raises(ValueError, match="unknown device"):
        peak_device("tpu")
