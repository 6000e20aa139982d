"""A fast CPU peak finder with the network's quality: sparse candidates, a small scoring model, photon centroids.

The frames are photon counts (Eiger 4M, 2167 x 2070 px, ~0.003-0.02 water photons per pixel), so almost every
pixel is 0 and a frame is described by its ~10^4-10^5 non-zero pixels. Every step works on those pixels alone
(gathers from a padded scratch image owned by the finder), never on the whole 4.5 Mpx frame:

(a) Candidates. ``B3``, the photons in the 3 x 3 box around each non-zero good pixel. The local water level
    ``b`` (photons per pixel) comes per background bin (rings of ``ring_width_px`` around the beam, cut into
    azimuthal sectors of >= ``min_bin_pixels`` good pixels; 64 x 64-pixel tiles when no geometry was prepared)
    from the *isolated* single photons (a non-zero pixel whose 3 x 3 box holds nothing else): for Poisson water
    of mean b per pixel their expected fraction of the bin's good pixels is f1 = b exp(-9 b) (one photon in the
    pixel, none in its 8 neighbours), solved for b by fixed-point iteration b <- f1 exp(9 b). Bragg spots, whose
    photons cluster, barely contribute, unlike to a mean or to the fraction of non-zero pixels. A pixel is a
    candidate when B3 >= k(bin), the smallest k >= ``min_box_photons`` with P(Poisson(9 b) >= k) <=
    ``candidate_p``, P(X >= k) = P(k, mu) being the regularised lower incomplete gamma function (DLMF 8.4.10:
    Q(n + 1, mu) = e^-mu sum_{j<=n} mu^j / j!, so P(X >= k) = 1 - Q(k, mu)), and when its key B3 + 0.001 n
    is the largest of the candidates within 2 px (5 x 5).
(b) Scoring. A two-layer perceptron (SiLU) on 18 features of the 9 x 9 patch around each candidate: photons in
    1 / 3 x 3 / 5 x 5 / 9 x 9 boxes (log1p), the 3 x 3 and 5 x 5 boxes' excess over the water, Poisson
    significance -log10 P(Poisson(mu) >= B) and non-zero pixels, the excess between 5 x 5 and 9 x 9, the largest
    count, the offset and spread (second moment) of the photons in the 5 x 5 box, good-pixel fractions and the
    water level. It is
    trained (:mod:`cxlspeaks.peaks.cascade_train`) on candidates of simulated frames, labelled by a true reflection
    within 2 px; the score threshold is the one with the best F1 on held-out frames.
(c) Positions, photons, SNR: :func:`cxlspeaks.peaks.network.refine_peaks`'s photon centroid (re-centred Gaussian-
    weighted centroid above the local background, two passes), computed here from the sparse scratch image
    (same arithmetic, no whole-frame copy), then :func:`cxlspeaks.peaks.network.merge_close`.

Peak tables: fs, ss (raw convention: pixel centre at the integer index), photons, snr, score (the model's
probability), float64, as :class:`cxlspeaks.peaks.network.NetworkPeakFinder` returns them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import gammainc

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .network import (BACKGROUND_INNER_PX, CENTROID_ITERATIONS, CENTROID_SIGMA_PX, PHOTON_RADIUS_PX,
                      WINDOW_HALF_PX, merge_close)

CASCADE_ATTRIBUTE = "peaks_cascade"
PAD = WINDOW_HALF_PX + 1      # scratch padding: every gather below stays inside the padded image
PATCH_HALF = 4                # 9 x 9 feature patch
TILE_PX = 64                  # background tiles when no geometry was prepared
N_FEATURES = 18


@dataclass(frozen=True)
class CascadeConfig:
    """Settings of the cascade (candidates, background bins, model size, training and calibration)."""

    min_box_photons: int = 2          # a candidate's 3 x 3 box holds at least this many photons
    candidate_p: float = 1e-2         # ... and at least the k with P(Poisson(9 b) >= k) <= candidate_p
    ring_width_px: float = 16.0
    min_bin_pixels: int = 3000        # good pixels per ring sector (fewer sectors on small rings)
    max_sectors: int = 32
    hidden: int = 48
    epochs: int = 30                  # at least; more when needed for min_steps optimizer steps
    min_steps: int = 3000
    batch_size: int = 512
    learning_rate: float = 3e-3
    label_radius_px: float = 2.0
    calibration_fraction: float = 0.25
    calibrate_min_photons: float = 3.0
    match_radius_px: float = 2.0
    max_peaks: int = 2048
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def poisson_tail(k: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """P(Poisson(mu) >= k) = P(k, mu), the regularised lower incomplete gamma (DLMF 8.4.10); 1 for k <= 0."""
    k = np.asarray(k, np.float64)
    mu = np.maximum(np.asarray(mu, np.float64), 1e-12)
    return np.where(k > 0, gammainc(np.maximum(k, 1e-12), mu), 1.0)


def box_threshold(mu: np.ndarray, p_value: float, k_max: int = 32) -> np.ndarray:
    """Per mean mu: the smallest k <= k_max with P(Poisson(mu) >= k) <= p_value (k_max when none), from the
    cumulative sum of the probabilities e^-mu mu^j / j! (recursion p_j = p_{j-1} mu / j)."""
    mu = np.asarray(mu, np.float64)
    pmf = np.exp(-mu)
    below = np.zeros_like(mu)                    # P(X < k)
    k = np.full(mu.shape, k_max, np.int64)
    for j in range(k_max):
        done = (1.0 - below <= p_value) & (k == k_max)
        k[done] = j
        below += pmf
        pmf = pmf * mu / (j + 1)
    return k


def water_from_isolated(n_isolated: np.ndarray, n_good: np.ndarray, floor: float = 1e-5) -> np.ndarray:
    """Water photons per pixel b from the isolated single photons of a bin: solves b exp(-9 b) = f1 (f1 their
    fraction of the bin's good pixels) by b <- f1 exp(9 b); f1 >= 1/(9 e) (no root: b > 1/9, far above water
    levels of photon-counting frames) gives 1/9."""
    f1 = np.asarray(n_isolated, np.float64) / np.maximum(np.asarray(n_good, np.float64), 1.0)
    solvable = f1 < 1.0 / (9.0 * np.e)
    b = f1.copy()
    for _ in range(12):
        b = np.where(solvable, f1 * np.exp(np.minimum(9.0 * b, 1.0)), 1.0 / 9.0)
    return np.maximum(b, floor)


def _offsets(half: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
    return dy.ravel(), dx.ravel(), (dy * width + dx).ravel().astype(np.int64)


class CascadePeakFinder:
    """The cascade finder: ``prepare(geometry)`` (optional), ``find(frame, good) -> peak table``.

    ``checkpoint``: a dict from :func:`cxlspeaks.peaks.cascade_train.train_cascade` or a path to one saved with
    :meth:`save`; ``None`` gives an untrained finder (candidates only, for training). Frames are (ss, fs) arrays
    of photon counts (any real dtype, float32 from :class:`cxlspeaks.frames.FramesFile`), ``good`` a bool (ss, fs)
    mask. Raises :class:`CheckpointError` for a checkpoint that is not a cascade, ValueError for a frame whose
    shape differs from ``good`` or from the prepared geometry.
    """

    name = "cascade"

    def __init__(self, checkpoint: dict | str | Path | None = None, threshold: float | None = None):
        self.config, self.weights, self.threshold = CascadeConfig(), None, 0.5
        if checkpoint is not None:
            source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
            if not isinstance(checkpoint, dict):
                checkpoint = load_checkpoint(checkpoint, CASCADE_ATTRIBUTE)
            config = checkpoint.get("config")
            if not isinstance(config, dict) or config.get("model") != "cascade":
                raise CheckpointError(f"{source}: not a cascade peak-finder checkpoint")
            try:
                self.config = CascadeConfig(**config["cascade"])
                state = checkpoint["model_state"]
                self.weights = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
                                for k, v in state.items()}
                self.threshold = float(checkpoint["threshold"])
            except (KeyError, TypeError) as exc:
                raise CheckpointError(f"{source}: incomplete cascade checkpoint ({exc})") from None
            if not all(np.isfinite(w).all() for w in self.weights.values()):
                raise CheckpointError(f"{source}: cascade weights are not finite")
        if threshold is not None:
            self.threshold = float(threshold)
        self._checkpoint = checkpoint if isinstance(checkpoint, dict) else None
        self._geometry_bins: tuple | None = None
        self._prepared: dict[str, tuple] = {}
        self._shape: tuple[int, int] | None = None
        self._good_source = None

    # ------------------------------------------------------------------ per detector
    def prepare(self, geometry) -> None:
        """Background bins from the detector: rings of ring_width_px around the beam, cut into azimuthal
        sectors of >= min_bin_pixels good pixels (at most max_sectors)."""
        key = geometry.to_geom_text()
        if key in self._prepared:
            self._geometry_bins = self._prepared[key]
            self._good_source = None
            return
        pos = geometry.pixel_positions_m
        from ..frames import radius_px

        radius = radius_px(geometry)
        good = geometry.mask & np.isfinite(radius)
        phi = np.arctan2(pos[..., 1], pos[..., 0])
        ring = np.where(good, np.floor(np.nan_to_num(radius) / self.config.ring_width_px), 0).astype(np.int64)
        n_rings = int(ring.max()) + 1
        per_ring = np.bincount(ring[good], minlength=n_rings)
        sectors = np.clip(per_ring // self.config.min_bin_pixels, 1, self.config.max_sectors)
        sector = np.minimum(((phi + np.pi) / (2 * np.pi) * sectors[ring]).astype(np.int64), sectors[ring] - 1)
        first = np.concatenate([[0], np.cumsum(sectors)[:-1]])
        self._geometry_bins = (geometry.shape, (first[ring] + sector).astype(np.int64).ravel())
        self._prepared[key] = self._geometry_bins
        self._good_source = None  # rebuild the per-mask tables

    def _setup(self, shape: tuple[int, int], good: np.ndarray) -> None:
        """Padded scratch images and the bin tables of a mask (cached while the same mask comes back)."""
        if self._shape == shape and self._good_source is not None and (
                self._good_ref is good or np.array_equal(self._good_source, good)):
            return
        if good.shape != shape:
            raise ValueError(f"good has shape {good.shape}, the frame {shape}")
        n_ss, n_fs = shape
        self._shape, self._width = shape, n_fs + 2 * PAD
        self._scratch = np.zeros((n_ss + 2 * PAD) * self._width, np.float32)
        self._keys = np.zeros_like(self._scratch)
        padded_good = np.zeros((n_ss + 2 * PAD, self._width), np.float32)
        padded_good[PAD:-PAD, PAD:-PAD] = good
        self._good_pad = padded_good.ravel()
        self._good_flat = np.ascontiguousarray(good, dtype=bool).ravel()
        if self._geometry_bins is not None and self._geometry_bins[0] == shape:
            bins = self._geometry_bins[1]
        else:
            if self._geometry_bins is not None:
                raise ValueError(f"frame of shape {shape} does not fit the prepared detector "
                                 f"{self._geometry_bins[0]}")
            ii, jj = np.divmod(np.arange(n_ss * n_fs), n_fs)
            bins = (ii // TILE_PX) * (-(-n_fs // TILE_PX)) + jj // TILE_PX
        self._bins = bins
        self._n_bins = int(bins.max()) + 1
        self._n_good = np.bincount(bins[self._good_flat], minlength=self._n_bins).astype(np.float64)
        self._off3 = _offsets(1, self._width)[2]
        self._off5 = _offsets(2, self._width)[2]
        self._dy9, self._dx9, self._off9 = _offsets(PATCH_HALF, self._width)
        self._dyw, self._dxw, self._offw = _offsets(WINDOW_HALF_PX, self._width)
        self._good_source, self._good_ref = good.copy(), good

    # ------------------------------------------------------------------ stage (a)
    def _nonzero(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of the non-zero good pixels, ascending (pairs of pixels tested at once as 64-bit words)."""
        flat = np.ascontiguousarray(frame, np.float32).ravel()
        if flat.size % 2 == 0:
            pairs = np.flatnonzero(flat.view(np.uint64) != 0)
            both = np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()
            nz = both[flat[both] != 0]
        else:
            nz = np.flatnonzero(flat)
        return nz[self._good_flat[nz]], flat

    def candidates(self, frame: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage (a): padded flat indices of the candidates, their features (n, N_FEATURES) float32 and the water
        level of every background bin (photons per pixel). Leaves the frame's good non-zero counts in the scratch
        image for :meth:`refine`; call :meth:`_clear` when done. ValueError: not 2-D, a mask of another shape,
        NaN or infinite counts at good pixels."""
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"frame must be 2-D (ss, fs), got shape {frame.shape}")
        good = good if isinstance(good, np.ndarray) and good.dtype == bool else np.asarray(good, bool)
        self._setup(frame.shape, good)
        nz, flat = self._nonzero(frame)
        n_fs = self._shape[1]
        ss, fs = np.divmod(nz, n_fs)
        p = (ss + PAD) * self._width + fs + PAD
        values = flat[nz]
        if not np.isfinite(values).all():
            raise ValueError("frame holds NaN or infinite values at good pixels")
        values = np.maximum(values, 0)
        self._scratch[p] = values
        self._p_nonzero = p
        box3 = self._scratch[p[:, None] + self._off3].sum(axis=1)
        bins = self._bins[nz]
        isolated = np.bincount(bins[box3 == values], weights=(values[box3 == values] == 1),
                               minlength=self._n_bins)
        water = water_from_isolated(isolated, self._n_good)
        k_bin = np.maximum(self.config.min_box_photons, box_threshold(9 * water, self.config.candidate_p))
        cand = box3 >= k_bin[bins]
        pc, key = p[cand], box3[cand] + 1e-3 * values[cand]
        self._keys[pc] = key
        local_max = key >= self._keys[pc[:, None] + self._off5].max(axis=1)
        self._keys[pc] = 0
        pc, bc = pc[local_max], bins[cand][local_max]
        return pc, self._features(pc, water[bc]), water

    def _clear(self) -> None:
        self._scratch[self._p_nonzero] = 0

    def _features(self, pc: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(n, N_FEATURES) float32 features of the 9 x 9 patches around candidates (b: their water level)."""
        patch = self._scratch[pc[:, None] + self._off9].astype(np.float64)   # (n, 81) counts
        gpatch = self._good_pad[pc[:, None] + self._off9]
        dy, dx = self._dy9, self._dx9
        cheb = np.maximum(np.abs(dy), np.abs(dx))
        extra = []
        totals = {}
        for r in (0, 1, 2, 4):
            inside = cheb <= r
            totals[r] = patch[:, inside].sum(axis=1)
            extra.append(np.log1p(totals[r]))
            if r in (1, 2):
                mu = b * gpatch[:, inside].sum(axis=1)
                extra += [totals[r] - mu, -np.log10(np.maximum(poisson_tail(totals[r], mu), 1e-30)),
                          (patch[:, inside] > 0).sum(axis=1)]
        outer = b * gpatch[:, cheb > 2].sum(axis=1)
        extra.append(totals[4] - totals[2] - outer)                          # photons outside 5 x 5 above water
        in5 = cheb <= 2
        w = patch[:, in5]
        n5 = np.maximum(totals[2], 1.0)
        my, mx = (w * dy[in5]).sum(axis=1) / n5, (w * dx[in5]).sum(axis=1) / n5
        extra += [np.log1p(patch.max(axis=1)), np.hypot(my, mx),
                  (w * ((dy[in5] - my[:, None]) ** 2 + (dx[in5] - mx[:, None]) ** 2)).sum(axis=1) / n5,
                  gpatch[:, cheb <= 1].mean(axis=1), gpatch.mean(axis=1), np.log10(b), b * 100.0]
        return np.stack(extra, axis=1).astype(np.float32)

    # ------------------------------------------------------------------ stage (b)
    def score(self, features: np.ndarray) -> np.ndarray:
        """Stage (b): the model's probability that a candidate is a reflection (needs a trained finder)."""
        if self.weights is None:
            raise RuntimeError("untrained CascadePeakFinder: train it (cascade_train.train_cascade) or load one")
        w = self.weights
        x = (features - w["mean"]) / w["std"]
        for layer in ("0", "2"):
            x = x @ w[f"{layer}.weight"].T + w[f"{layer}.bias"]
            x = x / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))             # SiLU
        logit = (x @ w["4.weight"].T + w["4.bias"])[:, 0]
        return 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))

    # ------------------------------------------------------------------ stage (c)
    def refine(self, pc: np.ndarray) -> pd.DataFrame:
        """Stage (c): network.refine_peaks' centroid, photons and SNR from the scratch image (candidates given as
        padded flat indices); raw convention."""
        width = self._width
        ss0, fs0 = np.divmod(pc, width)
        c_ss, c_fs = (ss0 - PAD).astype(np.float64), (fs0 - PAD).astype(np.float64)
        n_ss, n_fs = self._shape
        dy, dx = self._dyw, self._dxw
        for _ in range(2):
            i0 = np.clip(np.rint(c_ss).astype(np.int64), 0, n_ss - 1)
            j0 = np.clip(np.rint(c_fs).astype(np.int64), 0, n_fs - 1)
            index = ((i0 + PAD) * width + j0 + PAD)[:, None] + self._offw
            win = self._scratch[index].astype(np.float64)
            ok = self._good_pad[index] > 0
            ring = ok & (np.hypot(dy, dx) >= BACKGROUND_INNER_PX)
            background = (win * ring).sum(axis=1) / np.maximum(ring.sum(axis=1), 1)
            above = np.where(ok, win - background[:, None], 0.0)
            weight_base = np.clip(above, 0, None)
            yy, xx = i0[:, None] + dy, j0[:, None] + dx
            for _ in range(CENTROID_ITERATIONS):
                g = np.exp(-((yy - c_ss[:, None]) ** 2 + (xx - c_fs[:, None]) ** 2) / (2 * CENTROID_SIGMA_PX ** 2))
                w = weight_base * g
                total = w.sum(axis=1)
                has = total > 0
                safe = np.where(has, total, 1)
                c_ss = np.where(has, (w * yy).sum(axis=1) / safe, c_ss)
                c_fs = np.where(has, (w * xx).sum(axis=1) / safe, c_fs)
        disk = ok & (np.hypot(yy - c_ss[:, None], xx - c_fs[:, None]) <= PHOTON_RADIUS_PX)
        photons = (above * disk).sum(axis=1)
        snr = photons / np.sqrt(np.clip(photons, 0, None) + disk.sum(axis=1) * background + 1e-12)
        return pd.DataFrame({"fs": c_fs, "ss": c_ss, "photons": photons, "snr": snr})

    def find(self, frame: np.ndarray, good: np.ndarray, threshold: float | None = None) -> pd.DataFrame:
        """Peaks of one (ss, fs) frame: fs, ss (raw convention), photons, snr, score (float64 columns)."""
        threshold = self.threshold if threshold is None else float(threshold)
        pc, features, _ = self.candidates(frame, good)
        try:
            score = self.score(features) if len(pc) else np.zeros(0)
            keep = score >= threshold
            pc, score = pc[keep], score[keep]
            if len(score) > self.config.max_peaks:
                best = np.argsort(-score, kind="stable")[:self.config.max_peaks]
                pc, score = pc[best], score[best]
            table = self.refine(pc)
        finally:
            self._clear()
        table["score"] = score.astype(np.float64)
        return merge_close(table).reset_index(drop=True)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> None:
        """Write the trained finder's checkpoint (weights-only loadable, byte-reproducible)."""
        if self._checkpoint is None:
            raise RuntimeError("only a finder made from a training checkpoint can be saved")
        save_checkpoint(path, **{**self._checkpoint, "threshold": self.threshold})

    @classmethod
    def load(cls, path: str | Path) -> "CascadePeakFinder":
        return cls(path)
