"""Live operation: replay a small frames file over ZeroMQ (stream2 and stream1) into ``live`` with 2 workers and
compare with the models applied to the file directly; pixel mask, a killed worker, an aborted series, the
monitor page in headless Chromium."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import threading
import time

import h5py
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("zmq")
pytest.importorskip("cbor2")

from cxlspeaks.features import FEATURES, bin_sum  # noqa: E402
from cxlspeaks.geometry import tiny_geometry  # noqa: E402
from cxlspeaks.io import DATA, GEOMETRY_TEXT  # noqa: E402

N_FS, N_SS, BIN = 64, 48, 4


def _frames(rng, n, hits, geometry):
    frames = rng.poisson(0.3, size=(n, N_SS, N_FS)).astype(np.uint32)
    for i in range(n):
        if hits[i]:
            for _ in range(4):
                ss, fs = rng.integers(4, N_SS - 4), rng.integers(4, N_FS - 4)
                frames[i, ss - 1:ss + 2, fs - 1:fs + 2] += rng.poisson(12, size=(3, 3)).astype(np.uint32)
    frames[:, ~geometry.mask] = 0
    return frames


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny detector, a frames file of 12 frames (half hits) and hit/photon_energy/clen checkpoints."""
    from cxlspeaks.train import TrainConfig, train_attribute

    root = tmp_path_factory.mktemp("live")
    geometry = tiny_geometry(n_fs=N_FS, n_ss=N_SS, pixel_size_m=1.2e-3)
    geom_path = root / "tiny.geom"
    geom_path.write_text(geometry.to_geom_text())
    rng = np.random.default_rng(5)
    features, rows = {}, []
    for d, (energy, clen) in enumerate(((7000.0, 0.15), (8000.0, 0.2))):
        hits = np.arange(24) % 2 == 0
        counts = bin_sum(_frames(rng, 24, hits, geometry).astype(np.float32), BIN)
        path = root / f"f{d}.h5"
        with h5py.File(path, "w") as h5:
            g = h5.create_group(FEATURES)
            g["counts"], g["signal"] = counts, np.zeros_like(counts)
            g["mask_fraction"] = bin_sum(geometry.mask.astype(np.float32), BIN) / BIN ** 2
            g["radius_m"] = np.ones(counts.shape[1:], np.float32) * 0.01
            g["has_peaks"] = hits
            g.attrs.update(photon_energy_ev=energy, clen_m=clen, bin_factor=BIN, dataset=f"d{d}")
        features[f"d{d}"] = path
        rows += [(f"d{d}", f, "test" if f % 6 == 0 else "train") for f in range(24)]
    split = root / "split.csv"
    pd.DataFrame(rows, columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
    models = root / "models"
    for attribute, model, target, loss in (("hit", "hit_fcn", "has_peaks", "bce"),
                                           ("photon_energy", "paper_linear", "photon_energy_ev", "ce"),
                                           ("clen", "paper_linear", "clen_m", "ce")):
        (models / attribute).mkdir(parents=True)
        config = TrainConfig(attribute=attribute, model=model, target=target, loss=loss, epochs=3, batch_size=8,
                             learning_rate=3e-3, seed=1, optimizer="adam")
        train_attribute(config, features, split, models / attribute / "checkpoint.pt", root / f"{attribute}.csv",
                        progress=False)
    frames = _frames(rng, 12, np.arange(12) % 2 == 0, geometry)
    frames_path = root / "frames.h5"
    with h5py.File(frames_path, "w") as h5:
        h5.create_dataset(DATA, data=frames)
        h5[GEOMETRY_TEXT] = geometry.to_geom_text()
    return {"root": root, "geometry": geometry, "geom_path": geom_path, "models": models, "frames": frames,
            "frames_path": frames_path}


def _direct(setup, good=None):
    """The predictor and peakfinder8 on the file's frames, as the workers run them."""
    from cxlspeaks.live.workers import FrameScorer
    from cxlspeaks.sources.base import Frame

    scorer = FrameScorer(setup["models"], "peakfinder8")
    good = setup["geometry"].mask if good is None else good
    out = []
    for i, f in enumerate(setup["frames"]):
        frame = Frame(f"1 //{i}", f.astype(np.float32), good.copy(), np.zeros(f.shape, bool))
        out.append(scorer.score(frame, setup["geometry"]))
    return out


def _run_live(setup, out, protocol="stream2", workers=2, feed=None, **kwargs):
    """live() in a thread; ``feed(endpoint)`` replays into it once every worker is connected."""
    from cxlspeaks.live import live

    kwargs.setdefault("prefault_mb", 0)   # tiny frames
    kwargs.setdefault("max_age_s", 30.0)  # a loaded test machine must not turn slow frames into skipped ones

    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ready = mp.get_context("spawn").Event()
    result = {}

    def target():
        result["summary"] = live(endpoint, setup["models"], out, workers=workers, geometry=setup["geom_path"],
                                 protocol=protocol, ready=ready, max_seconds=120, **kwargs)

    thread = threading.Thread(target=target)
    thread.start()
    assert ready.wait(90), "workers did not connect"
    feed(endpoint)
    thread.join(150)
    assert not thread.is_alive()
    return result["summary"], pd.read_csv(out / "frames.csv")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("protocol", ["stream2", "stream1"])
def test_replay_through_live_equals_the_direct_scores(setup, tmp_path, protocol):
    from cxlspeaks.live import replay

    summary, table = _run_live(setup, tmp_path / "run", protocol, feed=lambda e: replay(
        setup["frames_path"], e, protocol, wait_peers=2))
    assert summary["frames_processed"] == 12 and summary["frames_lost"] == 0, (summary, table["status"].tolist())
    assert sorted(table["image_id"]) == list(range(12))          # every frame exactly once
    assert set(table["worker"]) == {0, 1}
    direct = _direct(setup)
    for _, row in table.iterrows():
        expected, peaks = direct[int(row["image_id"])]
        assert row["hit_probability"] == pytest.approx(expected["hit_probability"], abs=1e-5)
        assert bool(row["is_hit"]) == expected["is_hit"]
        assert (row["n_peaks"] if expected["is_hit"] else 0) == (len(peaks) if peaks is not None else 0) or \
            np.isnan(row["n_peaks"])
    n_hits = sum(bool(r["is_hit"]) for r, _ in direct)
    if n_hits:
        lst = (tmp_path / "run" / "hits.lst").read_text().splitlines()
        assert len(lst) == n_hits
        with h5py.File(lst[0].split(" //")[0]) as h5:
            assert h5[DATA].shape == (n_hits, N_SS, N_FS)
            assert h5["/entry_1/result_1/nPeaks"].shape == (n_hits,)
        import hdf5plugin  # noqa: F401  (the frames are bitshuffle-LZ4 chunks, the detector's own bytes)

        with h5py.File(lst[0].split(" //")[0]) as h5:
            for row, event in enumerate(h5["/entry_1/result_1/event"][()]):
                image_id = int(event.decode().split("//")[1])
                np.testing.assert_array_equal(h5[DATA][row], setup["frames"][image_id])
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["frames_processed"] == 12


def _same_scores(fast, reference):
    (row, peaks), (ref, ref_peaks) = fast, reference
    assert set(row) == set(ref)
    for key, value in ref.items():
        if key == "hit_probability":
            assert row[key] == pytest.approx(value, abs=1e-6)
        elif isinstance(value, float) and np.isnan(value):
            assert np.isnan(row[key]), key
        else:
            assert row[key] == value, key
    assert (peaks is None) == (ref_peaks is None)
    if peaks is not None:
        pd.testing.assert_frame_equal(peaks, ref_peaks)


@pytest.mark.parametrize("threshold", [0.5, 0.0])
def test_worker_path_from_non_zero_pixels_equals_the_frame_path(setup, threshold):
    """FrameScorer.score_raw (binning, saturation and peakfinder8 from the non-zero pixels) gives what scoring the
    stream's Frame gives: plain frames, saturated pixels, no-data markers outside and inside the good pixels
    (the latter take the frame path), uint16, float counts, a pixel mask; threshold 0 makes every frame a hit."""
    import dataclasses

    from cxlspeaks.live.replay import series_info
    from cxlspeaks.live.workers import FrameScorer
    from cxlspeaks.sources.messages import make_frame

    geometry = setup["geometry"]
    scorer = FrameScorer(setup["models"], "peakfinder8", threshold=threshold)
    reference = FrameScorer(setup["models"], "peakfinder8", threshold=threshold)
    info = series_info(geometry, geometry.shape, 12, 1)
    good = info.static_good(geometry.mask, "threshold_1")
    masked = good.copy()
    masked[10:14, 20:30] = False
    frames = setup["frames"]
    top = np.iinfo(np.uint32).max
    marker_out, marker_in = frames[0].copy(), frames[0].copy()
    marker_out[~geometry.mask] = top
    marker_in[5, 5] = top
    cases = [(info, f, good) for f in frames[:6]] + [
        (dataclasses.replace(info, saturation_value=3), frames[1], good),
        (info, marker_out, good), (info, marker_in, good),
        (dataclasses.replace(info, saturation_value=None), frames[2].astype(np.uint16), good),
        (info, frames[3].astype(np.float32), good), (info, frames[4], masked)]
    saturated = 0
    for k, (i, raw, g) in enumerate(cases):
        fast = scorer.score_raw(i, k, raw, g, geometry)
        _same_scores(fast, reference.score(make_frame(i, k, raw, g), geometry))
        saturated += fast[0]["n_saturated"]
    assert saturated > 0
    if threshold == 0.0:
        assert scorer.prepare(geometry, good)[1] is not None


def test_live_radius_is_the_frames_radius():
    from cxlspeaks.frames import radius_px
    from cxlspeaks.geometry import parse_geometry
    from cxlspeaks.live.workers import radius_px as live_radius

    two_panels = parse_geometry(
        "clen = 0.1\nres = 10000\na/min_fs = 0\na/max_fs = 9\na/min_ss = 0\na/max_ss = 7\na/corner_x = -5.3\n"
        "a/corner_y = -4.1\na/fs = +0.8x +0.6y\na/ss = -0.6x +0.8y\nb/min_fs = 10\nb/max_fs = 19\nb/min_ss = 0\n"
        "b/max_ss = 7\nb/corner_x = 7.7\nb/corner_y = 3.2\nb/fs = -1x\nb/ss = -1y\nb/res = 9000\n")
    for geometry in (two_panels, tiny_geometry(n_fs=N_FS, n_ss=N_SS, pixel_size_m=1.2e-3)):
        np.testing.assert_array_equal(live_radius(geometry), radius_px(geometry))


def test_start_pixel_mask_reaches_the_finder(setup, tmp_path):
    """Pixels flagged in the start message's pixel mask never hold peaks."""
    from cxlspeaks.live import replay

    found = _direct(setup)
    peaks = [(i, p) for i, (r, p) in enumerate(found) if p is not None and len(p)]
    if not peaks:
        pytest.skip("the tiny hit model found no hit to mask")
    i, p = peaks[0]
    ss, fs = int(round(p["ss"].iloc[0])), int(round(p["fs"].iloc[0]))
    geometry = setup["geometry"]

    class Masked:
        """geometry whose mask also hides a 5x5 box around one peak (goes into the start's pixel mask)."""
        def __getattr__(self, name):
            return getattr(geometry, name)

        @property
        def mask(self):
            m = geometry.mask.copy()
            m[max(ss - 2, 0):ss + 3, max(fs - 2, 0):fs + 3] = False
            return m

    frames = setup["frames"][i:i + 1]
    out = tmp_path / "run"
    from cxlspeaks.live.run import live  # noqa: F401

    summary, table = _run_live(setup, out, feed=lambda e: replay(None, e, frames=frames, geometry=Masked(),
                                                                 wait_peers=2))
    assert summary["frames_processed"] == 1
    if summary["hits"]:
        with h5py.File((out / "hits_0000.cxi")) as h5:
            n = int(h5["/entry_1/result_1/nPeaks"][0])
            xs, ys = h5["/entry_1/result_1/peakXPosRaw"][0, :n], h5["/entry_1/result_1/peakYPosRaw"][0, :n]
        near = (np.abs(np.rint(xs) - fs) <= 2) & (np.abs(np.rint(ys) - ss) <= 2)
        assert not near.any()


def test_killed_worker_shows_as_lost_frames_and_the_run_completes(setup, tmp_path):
    from cxlspeaks.live import replay

    def feed(endpoint):
        import zmq

        from cxlspeaks.sources import stream2

        sock = zmq.Context.instance().socket(zmq.PUSH)
        replay(setup["frames_path"], endpoint, socket=sock, wait_peers=2, count=6, number_of_images=12,
               send_end=False)                                    # replay binds it once it watches for clients
        time.sleep(1.0)
        pids = [int(p.split()[0]) for p in subprocess.run(["pgrep", "-f", "cxlspeaks-worker|multiprocessing.spawn"],
                                                          capture_output=True, text=True).stdout.split()]
        # kill one of our own worker processes: a child of this test process
        mine = [p for p in pids if _parent(p) == os.getpid()]
        assert mine, "no worker process found"
        # a stopped worker stays connected, so the detector still deals it frames: they are in flight when it dies
        # (the workers are fast enough to have finished frames 0-5 by now)
        os.kill(mine[0], signal.SIGSTOP)
        for k in range(6, 12):
            sock.send(stream2.image_message(1, k, {"threshold_1": setup["frames"][k]}))
        time.sleep(0.5)
        os.kill(mine[0], signal.SIGKILL)
        time.sleep(1.0)
        sock.send(stream2.end_message(1))
        sock.close(linger=5000)

    summary, table = _run_live(setup, tmp_path / "run", feed=feed)
    assert len(table) == 12 and sorted(table["image_id"]) == list(range(12))
    assert summary["frames_lost"] == (table["status"] == "lost").sum()
    assert summary["frames_processed"] + summary["frames_lost"] + summary["frames_skipped"] == 12
    assert summary["frames_lost"] >= 1


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_abort_mid_series_then_a_new_series(setup, tmp_path):
    from cxlspeaks.live import replay

    def feed(endpoint):
        import zmq

        sock = zmq.Context.instance().socket(zmq.PUSH)
        replay(setup["frames_path"], endpoint, socket=sock, wait_peers=2, count=4, number_of_images=12,
               send_end=False, series_id=1)
        sock.send(b"\xff\x00 a stray partial message")
        replay(setup["frames_path"], socket=sock, wait_peers=0, series_id=2)
        sock.close(linger=5000)

    summary, table = _run_live(setup, tmp_path / "run", feed=feed)
    assert summary["stray_messages"] >= 1
    assert sorted(table.loc[table["series_id"] == 2, "image_id"]) == list(range(12))
    assert sorted(table.loc[table["series_id"] == 1, "image_id"]) == list(range(4))
    assert (table["status"] == "processed").sum() == 16


def test_monitor_page_in_headless_chromium(setup, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium")
    pytest.importorskip("fastapi")
    from cxlspeaks.live import replay

    port = _free_port()
    dom = {}

    def feed(endpoint):
        replay(setup["frames_path"], endpoint, wait_peers=2, send_end=False)
        time.sleep(2.5)
        out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                              "--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=60)
        dom["html"] = out.stdout
        import urllib.request

        dom["state"] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state").read())
        png = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/latest.png").read()
        dom["png"] = png[:8]
        import zmq

        from cxlspeaks.sources import stream2

        sock = zmq.Context.instance().socket(zmq.PUSH)
        sock.connect(endpoint.replace("tcp://", "tcp://"))
        sock.close()
        replay(setup["frames_path"], endpoint, count=0, send_start=False, wait_peers=1)  # the end message

    summary, table = _run_live(setup, tmp_path / "run", feed=feed, http=f"127.0.0.1:{port}")
    html = dom["html"]
    assert 'id="frames_processed">12<' in html, html[:2000]
    assert dom["state"]["frames_processed"] == 12 == summary["frames_processed"]
    assert f'id="hits">{summary["hits"]}<' in html
    assert dom["png"] == b"\x89PNG\r\n\x1a\n"
    if summary["hits"]:
        assert "api/latest.png?serial=" in html                   # the image was updated by the page


@pytest.mark.parametrize("kind", ["photons", "fractions", "no good bin"])
def test_hit_fcn_logits_with_the_numpy_median_equal_the_model(kind):
    import torch

    from cxlspeaks.live.predict import hit_fcn_logits
    from cxlspeaks.models import HitFCN

    torch.manual_seed(0)
    model = HitFCN((2, 30, 21)).eval()
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.7, size=(3, 1, 30, 21)).astype(np.float32)
    if kind == "fractions":
        counts = counts * np.float32(0.37)
    mask = (rng.random((3, 1, 30, 21)) > 0.2).astype(np.float32) * (0.0 if kind == "no good bin" else 1.0)
    x = torch.from_numpy(np.concatenate([counts, mask], axis=1))
    with torch.no_grad():
        # the same median; the convolutions run channels-last there, so equal to float32 rounding
        torch.testing.assert_close(hit_fcn_logits(model, x), model(x), rtol=1e-5, atol=1e-6)
        shifted = x.clone()
        shifted[:, :1] += 1.0            # a different median moves the logits: the check can fail
        assert not torch.allclose(hit_fcn_logits(model, shifted), model(x), rtol=1e-5, atol=1e-6) \
            or kind == "no good bin"
