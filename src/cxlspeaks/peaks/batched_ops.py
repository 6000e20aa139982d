"""The steps of :meth:`NetworkPeakFinder.find <cxlspeaks.peaks.network.NetworkPeakFinder.find>` after the network,
as tensor operations on a batch of frames on any torch device (no per-peak Python loop).

* :func:`cell_peaks`: the cells whose probability is a 3 x 3 local maximum (``max_pool2d``) and at least the
  threshold, at most ``max_peaks`` per frame (the highest scores, as ``find`` keeps them).
* :func:`refine_centroids`: :func:`~cxlspeaks.peaks.network.refine_peaks` for all peaks of the batch at once. Each
  peak's (2h + 1)^2 window (h = ``WINDOW_HALF_PX`` = 7) is gathered from the padded frames by flat index; the local
  background is the mean of the usable pixels >= ``BACKGROUND_INNER_PX`` = 5 px from the window centre; the
  centroid is the Gaussian-weighted (sigma ``CENTROID_SIGMA_PX`` = 2 px) mean position of the counts above it,
  ``CENTROID_ITERATIONS`` = 8 times, in two passes (window re-centred after the first). Photons: counts minus
  background within ``PHOTON_RADIUS_PX`` = 4 px; SNR = photons / sqrt(max(photons, 0) + n_px background)
  (Poisson variance of signal plus background). Same formulas, constants and order as the NumPy code.
* :func:`merge_close_peaks`: :func:`~cxlspeaks.peaks.network.merge_close` per frame: in score order, a peak is
  dropped when a kept peak of higher score lies within ``radius_px`` (greedy non-maximum suppression), resolved
  in rounds on a per-frame distance matrix.

Positions use the raw convention (pixel centres at integers), fs along a row, ss down the columns; counts are
photons. Float64 on the CPU reproduces the NumPy code to rounding; float32 (the default on CUDA) moves centroids
by ~1e-5 px and photons by ~1e-6 relative.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .network import (BACKGROUND_INNER_PX, CENTROID_ITERATIONS, CENTROID_SIGMA_PX, PHOTON_RADIUS_PX,
                      WINDOW_HALF_PX)

#: peaks per chunk of :func:`refine_centroids` (each holds a few (n, 225) temporaries: ~30 MB at float64)
REFINE_CHUNK = 16384
#: peaks of one frame above which :func:`merge_close_peaks` works on groups of frames of this many pairs
MERGE_PAIRS_PER_CHUNK = 1 << 26


def cell_peaks(p: torch.Tensor, threshold: float, max_peaks: int) -> tuple[torch.Tensor, ...]:
    """Peak cells of a batch of probability maps.

    Args:
        p: (B, Hc, Wc) float32 cell probabilities (0 on cells without good pixels).
        threshold: minimum probability of a peak cell.
        max_peaks: most peaks kept per frame (its highest scores).
    Returns:
        (frame, ci, cj, score): int64 frame index in the batch, cell row and column, float32 probability, each
        (N,), ordered by frame, then as ``find`` orders them: cells in row-major order, or by decreasing score
        (ties in row-major order) for a frame that had more than ``max_peaks`` and was cut to them.
    """
    is_max = F.max_pool2d(p[:, None], 3, stride=1, padding=1)[:, 0] == p
    frame, ci, cj = torch.nonzero(is_max & (p >= threshold), as_tuple=True)   # row-major, frame by frame
    score = p[frame, ci, cj]
    n_frames = p.shape[0]
    per_frame = torch.bincount(frame, minlength=n_frames)
    if len(frame) == 0 or int(per_frame.max()) <= max_peaks:
        return frame, ci, cj, score
    start = torch.cumsum(per_frame, 0) - per_frame
    position = torch.arange(len(frame), device=p.device) - start[frame]
    by_score = torch.argsort(-score, stable=True)
    by_score = by_score[torch.argsort(frame[by_score], stable=True)]        # frame, then score descending
    rank = torch.empty_like(position)
    rank[by_score] = position
    over = per_frame[frame] > max_peaks
    key = torch.where(over, rank, position)
    keep = key < max_peaks
    order = torch.argsort(frame[keep] * (len(frame) + 1) + key[keep])
    index = torch.nonzero(keep, as_tuple=True)[0][order]
    return frame[index], ci[index], cj[index], score[index]


def _window_offsets(device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = WINDOW_HALF_PX
    r = torch.arange(-h, h + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    ring = torch.hypot(dy.to(torch.float64), dx.to(torch.float64)) >= BACKGROUND_INNER_PX
    return dy, dx, ring


def refine_centroids(counts: torch.Tensor, usable: torch.Tensor, frame: torch.Tensor, start_ss: torch.Tensor,
                     start_fs: torch.Tensor, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """Sub-pixel centroids, photons and SNR of the spots near the start positions, all peaks of a batch at once.

    Args:
        counts: (B, ss, fs) photons (any float dtype; pixels not usable are never read, NaN there is harmless).
        usable: (B, ss, fs) bool (an expanded (ss, fs) mask is read once), the pixels centroids, photons and
            backgrounds may use; pixels outside the frame are not usable.
        frame: (N,) int64 frame of each peak; start_ss, start_fs: (N,) start positions, px (raw convention).
        dtype: the arithmetic (float64 reproduces :func:`~cxlspeaks.peaks.network.refine_peaks` to rounding;
            the windows are gathered from ``counts`` first, so float32 counts of integers lose nothing).
    Returns:
        (fs, ss, photons, snr), each (N,) ``dtype``: centroid px, background-subtracted photons within 4 px,
        signal-to-noise ratio (see the module docstring for the formulas).
    """
    n = len(frame)
    if n == 0:
        empty = torch.zeros(0, dtype=dtype, device=counts.device)
        return empty, empty, empty, empty
    shared = usable.dim() == 3 and usable.stride(0) == 0
    ok_flat = (usable[0] if shared else usable).reshape(-1)
    counts_flat = counts.reshape(-1)
    parts = [_refine(counts_flat, ok_flat, shared, counts.shape, frame[s:s + REFINE_CHUNK],
                     start_ss[s:s + REFINE_CHUNK], start_fs[s:s + REFINE_CHUNK], dtype)
             for s in range(0, n, REFINE_CHUNK)]
    return tuple(torch.cat(values) for values in zip(*parts))


def _refine(counts_flat, ok_flat, shared, shape, frame, start_ss, start_fs, dtype):
    _, n_ss, n_fs = shape
    device = counts_flat.device
    dy, dx, ring_of_window = _window_offsets(device, dtype)
    c_ss, c_fs = start_ss.to(dtype).clone(), start_fs.to(dtype).clone()
    two_sigma2 = 2 * CENTROID_SIGMA_PX ** 2
    zero = torch.zeros((), dtype=dtype, device=device)
    for _ in range(2):
        i0 = torch.round(c_ss).clamp(0, n_ss - 1).long()   # round half to even, as np.rint
        j0 = torch.round(c_fs).clamp(0, n_fs - 1).long()
        yy_i, xx_i = i0[:, None] + dy, j0[:, None] + dx     # (n, K) pixel indices of each window
        inside = (yy_i >= 0) & (yy_i < n_ss) & (xx_i >= 0) & (xx_i < n_fs)
        pixel = yy_i.clamp(0, n_ss - 1) * n_fs + xx_i.clamp(0, n_fs - 1)
        flat = frame[:, None] * (n_ss * n_fs) + pixel
        ok = ok_flat[pixel if shared else flat] & inside
        win = torch.where(ok, counts_flat[flat].to(dtype), zero)
        ring = ok & ring_of_window
        background = (win * ring).sum(1) / ring.sum(1).clamp_min(1)
        above = torch.where(ok, win - background[:, None], zero)
        weight_base = above.clamp_min(0)
        yy, xx = yy_i.to(dtype), xx_i.to(dtype)
        for _ in range(CENTROID_ITERATIONS):
            g = torch.exp(-((yy - c_ss[:, None]) ** 2 + (xx - c_fs[:, None]) ** 2) / two_sigma2)
            w = weight_base * g
            total = w.sum(1)
            has = total > 0
            safe = torch.where(has, total, torch.ones_like(total))
            c_ss = torch.where(has, (w * yy).sum(1) / safe, c_ss)
            c_fs = torch.where(has, (w * xx).sum(1) / safe, c_fs)
    disk = ok & (torch.hypot(yy - c_ss[:, None], xx - c_fs[:, None]) <= PHOTON_RADIUS_PX)
    photons = (above * disk).sum(1)
    n_px = disk.sum(1).to(dtype)
    snr = photons / torch.sqrt(photons.clamp_min(0) + n_px * background + 1e-12)
    return c_fs, c_ss, photons, snr


def merge_close_peaks(frame: torch.Tensor, fs: torch.Tensor, ss: torch.Tensor, score: torch.Tensor,
                      n_frames: int, radius_px: float = 1.5) -> torch.Tensor:
    """Which peaks :func:`~cxlspeaks.peaks.network.merge_close` keeps, for all frames of a batch.

    Args:
        frame: (N,) int64 frame of each peak, non-decreasing; fs, ss: (N,) positions px; score: (N,) probability.
        n_frames: frames in the batch; radius_px: peaks at most this far apart (Euclidean, px) are one spot.
    Returns:
        (N,) bool: kept. Within a frame, peaks are ranked by decreasing score (ties: earlier first, as the
        stable sort of ``merge_close``); a peak is kept iff no kept peak of better rank lies within ``radius_px``.
    """
    n = len(frame)
    keep = torch.ones(n, dtype=torch.bool, device=frame.device)
    if n < 2:
        return keep
    per_frame = torch.bincount(frame, minlength=n_frames)
    width = int(per_frame.max())
    if width < 2:
        return keep
    start = torch.cumsum(per_frame, 0) - per_frame
    slot = torch.arange(n, device=frame.device) - start[frame]
    order = torch.argsort(-score, stable=True)
    order = order[torch.argsort(frame[order], stable=True)]
    rank = torch.empty_like(slot)
    rank[order] = slot                          # 0 = best score of its frame
    frames_per_chunk = max(1, MERGE_PAIRS_PER_CHUNK // (width * width))
    for first in range(0, n_frames, frames_per_chunk):
        chosen = (frame >= first) & (frame < first + frames_per_chunk)
        if int(chosen.sum()) < 2:
            continue
        index = torch.nonzero(chosen, as_tuple=True)[0]
        keep[index] = _greedy_nms(frame[index] - first, rank[index], fs[index], ss[index],
                                  min(frames_per_chunk, n_frames - first), width, radius_px)
    return keep


def _greedy_nms(frame, rank, fs, ss, n_frames, width, radius_px):
    """Greedy suppression on a (frames, width) grid of peaks placed by rank; rounds until every peak is decided."""
    device = frame.device
    valid = torch.zeros(n_frames, width, dtype=torch.bool, device=device)
    valid[frame, rank] = True
    x = torch.zeros(n_frames, width, dtype=fs.dtype, device=device)
    y = torch.zeros_like(x)
    x[frame, rank], y[frame, rank] = fs, ss
    d2 = (x[:, :, None] - x[:, None, :]) ** 2 + (y[:, :, None] - y[:, None, :]) ** 2
    r = torch.arange(width, device=device)
    better = r[:, None] < r[None, :]                  # [i, j]: rank i before rank j
    dominates = (d2 <= radius_px * radius_px) & better & valid[:, :, None] & valid[:, None, :]
    kept = torch.zeros_like(valid)
    undecided = valid.clone()
    while bool(undecided.any()):
        by_kept = (dominates & kept[:, :, None]).any(1)
        by_open = (dominates & (kept | undecided)[:, :, None]).any(1)
        kept = kept | (undecided & ~by_open)
        undecided = undecided & ~by_kept & by_open
    return kept[frame, rank]
