"""Speed of the batched device path (:mod:`cxlspeaks.peaks.batched`) next to the frame-by-frame finders, and its
equality with :meth:`NetworkPeakFinder.find <cxlspeaks.peaks.network.NetworkPeakFinder.find>`.

Frames: full-size Eiger 4M frames (2167 x 2070 px), either the default run's test frames (``benchmarks/peaks.py
--device ...``) or synthetic ones (``--quick``, no default run needed): Poisson water background of
``BACKGROUND_PHOTONS`` photons per pixel with ``SPOTS_PER_FRAME`` Gaussian Bragg spots (sigma 1.2 px, 20-500
photons, each photon counted in the pixel nearest its Gaussian offset), gaps masked by the shipped ``eiger4m``
geometry, every draw from ``cxlspeaks.seeding.frame_rng(0, "peaks_gpu", i, "noise")``. For "decode included" the
frames are held in memory as DECTRIS bitshuffle-LZ4 chunks made as ``cxlspeaks live replay`` makes them
(:func:`cxlspeaks.sources.messages.compress_bytes`, uint32) and decompressed in the timing (the batched path on
``--decode-threads`` threads, overlapped with the device; the other finders on one thread).

Rows: finder (``network_batched`` = the device path; ``network``, ``peakfinder8``, ``cascade``, ``paper_heatmap``
= the finders' ``find`` on the CPU, one frame at a time), device, dtype, batch_size, decode_included,
frames_per_s (frames / wall seconds of the fastest of 3 passes, after a warm-up), n_frames; for network_batched the equality
with the CPU ``find`` on the same frames: count_mismatch (sum over frames of |n_batched - n_cpu|),
max_position_diff_px (largest distance from a CPU peak to the nearest batched peak, over CPU peaks with one within
1 px) and max_photons_rel_diff.
"""

from __future__ import annotations

import time

import numpy as np
import torch

BACKGROUND_PHOTONS = 0.05   # photons per pixel: a photon-counting water background of a few 1e5 photons/frame
SPOTS_PER_FRAME = 150
SPOT_SIGMA_PX = 1.2


def synthetic_frames(n: int, geometry, seed: int = 0) -> np.ndarray:
    """(n, ss, fs) uint32 photon counts: Poisson background plus Gaussian spots on good pixels (module docstring)."""
    from cxlspeaks.seeding import frame_rng

    shape = geometry.shape
    frames = np.empty((n, *shape), np.uint32)
    for i in range(n):
        rng = frame_rng(seed, "peaks_gpu", i, "noise")
        frame = rng.poisson(BACKGROUND_PHOTONS, size=shape).astype(np.uint32)
        fs = rng.uniform(10, shape[1] - 10, SPOTS_PER_FRAME)
        ss = rng.uniform(10, shape[0] - 10, SPOTS_PER_FRAME)
        photons = rng.poisson(rng.uniform(20, 500, SPOTS_PER_FRAME))
        owner = np.repeat(np.arange(SPOTS_PER_FRAME), photons)
        x = np.rint(fs[owner] + rng.normal(0, SPOT_SIGMA_PX, owner.size)).astype(int)
        y = np.rint(ss[owner] + rng.normal(0, SPOT_SIGMA_PX, owner.size)).astype(int)
        inside = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
        np.add.at(frame, (y[inside], x[inside]), 1)
        frame[~geometry.mask] = 0
        frames[i] = frame
    return frames


def peak_checkpoint(path):
    """The trained peak network at ``path`` when it exists; else a random-weight PeakNet whose threshold is set
    later (:func:`untrained_threshold`)."""
    from pathlib import Path

    from cxlspeaks.peaks.network import PeakNet, PeakNetConfig

    if path is not None and Path(path).exists():
        return str(path), True
    torch.manual_seed(0)
    config = PeakNetConfig()
    return dict(model_state=PeakNet(config.width, config.cell).state_dict(),
                config={"model": "peaknet", "network": config.to_dict()}, threshold=0.5), False


def untrained_threshold(checkpoint, frame, good, n_peaks: int = 300) -> float:
    """For a random-weight net: the probability of the n_peaks-th highest cell of one frame, so that the
    centroid and merge steps see about as many peaks as a real frame gives."""
    from cxlspeaks.peaks.network import NetworkPeakFinder

    p = NetworkPeakFinder(checkpoint).probabilities(frame.astype(np.float32), good).ravel()
    return float(np.sort(p)[-n_peaks])


def _timed(fn, n_frames: int, repeats: int = 3) -> float:
    """Frames per second of the fastest of ``repeats`` calls (the others absorb other processes' load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_frames / best


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def equality(batched, reference) -> dict:
    """count_mismatch, max_position_diff_px, max_photons_rel_diff of per-frame peak tables (see module doc)."""
    mismatch, worst, photons = 0, 0.0, 0.0
    for got, want in zip(batched, reference):
        mismatch += abs(len(got) - len(want))
        if len(got) and len(want):
            d = np.hypot(want["fs"].to_numpy()[:, None] - got["fs"].to_numpy(),
                         want["ss"].to_numpy()[:, None] - got["ss"].to_numpy())
            nearest = d.argmin(axis=1)
            close = d[np.arange(len(want)), nearest] < 1.0
            if close.any():
                worst = max(worst, float(d[np.arange(len(want)), nearest][close].max()))
                a = want["photons"].to_numpy()[close]
                b = got["photons"].to_numpy()[nearest[close]]
                photons = max(photons, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0))))
    return {"count_mismatch": int(mismatch), "max_position_diff_px": worst, "max_photons_rel_diff": photons}


def speed_rows(frames: np.ndarray, good: np.ndarray, geometry, checkpoint, threshold: float | None,
               device: str, dtypes, batch_sizes, decode_threads: int, cpu_finders: dict,
               reference_frames: int | None = None) -> list[dict]:
    """The rows of the module docstring for frames (N, ss, fs) uint32 with one good mask. ``cpu_finders``:
    name -> finder with ``find(frame, good)`` (prepared for ``geometry``). The CPU network's peaks (the
    reference of the equality columns) come from the first ``reference_frames`` frames (default all)."""
    from dectris.compression import decompress

    from cxlspeaks.peaks.batched import Chunks
    from cxlspeaks.sources.messages import compress_bytes

    n = len(frames)
    chunks = Chunks([compress_bytes(f, "bslz4") for f in frames], frames.dtype, frames.shape[1:])
    ratio = frames[0].nbytes / np.mean([len(c) for c in chunks.payloads])
    print(f"{n} frames {frames.shape[1:]}; bslz4 compression ratio {ratio:.1f}", flush=True)
    rows = []
    for name, finder in cpu_finders.items():
        kwargs = {"threshold": threshold} if name == "network" and threshold is not None else {}
        for decode in (False, True):
            def run():
                for k in range(n):
                    frame = (np.frombuffer(decompress(chunks.payloads[k], "bslz4", elem_size=frames.itemsize),
                                           frames.dtype).reshape(frames.shape[1:]) if decode else frames[k])
                    finder.find(frame.astype(np.float32), good, **kwargs)

            finder.find(frames[0].astype(np.float32), good, **kwargs)     # warm-up
            rows.append({"finder": name, "device": "cpu", "dtype": "float32", "batch_size": 1,
                         "decode_included": decode, "frames_per_s": _timed(run, n), "n_frames": n})
            print(rows[-1], flush=True)
    from cxlspeaks.peaks.network import NetworkPeakFinder

    m = n if reference_frames is None else min(n, reference_frames)
    cpu_network = NetworkPeakFinder(checkpoint, threshold=threshold)
    reference = [cpu_network.find(f.astype(np.float32), good) for f in frames[:m]]
    for dtype in dtypes:
        for batch_size in batch_sizes:
            rows += _batched_rows(frames, chunks, good, geometry, checkpoint, threshold, device, dtype, batch_size,
                                  decode_threads, reference)
    return rows


def _batched_rows(frames, chunks, good, geometry, checkpoint, threshold, device, dtype, batch_size, decode_threads,
                  reference) -> list[dict]:
    from cxlspeaks.peaks.batched import BatchedPeakPipeline

    n, m, rows = len(frames), len(reference), []
    with BatchedPeakPipeline(checkpoint, device=device, dtype=dtype, batch_size=batch_size, threshold=threshold,
                             decode_threads=decode_threads, hits_only=False) as pipeline:
        found = [t for s in range(0, m, batch_size) for t in pipeline.find(frames[s:min(m, s + batch_size)], good)]
        same = equality(found, reference)        # its first batch was the warm-up (and compilation)
        for decode in (False, True):
            source = chunks if decode else frames

            def run():
                for _ in pipeline.run(source, good, geometry):
                    pass
                _sync(device)

            rows.append({"finder": "network_batched", "device": device, "dtype": dtype, "batch_size": batch_size,
                         "decode_included": decode, "frames_per_s": _timed(run, n), "n_frames": n, **same})
            print(rows[-1], flush=True)
    return rows
