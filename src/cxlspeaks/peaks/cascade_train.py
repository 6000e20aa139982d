"""Training of the cascade peak finder (:mod:`cxlspeaks.peaks.cascade`) on frames with known reflections.

:func:`train_cascade` takes frames in memory (simulated, or read from a dataset's frames.h5 with
:class:`cxlspeaks.frames.FramesFile` and :func:`cxlspeaks.peaks.truth.read_true_peaks`): the candidates of stage (a)
of the training frames, labelled 1 when a true reflection lies within ``label_radius_px`` of the candidate pixel,
fit the scoring perceptron (binary cross-entropy, Adam, features standardised with the training mean and standard
deviation, seeded); the score threshold is then the one (0.02 ... 0.98 in steps of 0.02) with the best F1 for
reflections of >= ``calibrate_min_photons`` on held-out frames (``calibration_fraction`` of them, a seeded
choice), matched one-to-one within ``match_radius_px`` as :mod:`cxlspeaks.peaks.matching` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from torch import nn

from .cascade import CASCADE_ATTRIBUTE, N_FEATURES, PAD, CascadeConfig, CascadePeakFinder


def scoring_model(hidden: int) -> nn.Sequential:
    """The stage-(b) perceptron: N_FEATURES -> hidden -> hidden -> 1 logit, SiLU (keys 0, 2, 4 of the state)."""
    return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 1))


def _masks(good, n: int) -> list[np.ndarray]:
    if isinstance(good, np.ndarray) and good.ndim == 2:
        return [good] * n
    good = list(good)
    if len(good) != n:
        raise ValueError(f"{len(good)} good-pixel masks for {n} frames")
    return good


def candidate_table(finder: CascadePeakFinder, frames: Sequence[np.ndarray], true_peaks: Sequence[pd.DataFrame],
                    good, radius_px: float, indices: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stage-(a) features of every candidate of the frames (float32 (n, N_FEATURES)) and their labels (1.0 when
    a true reflection lies within radius_px of the candidate pixel, raw convention); ``indices``: which frames
    (all by default; frames are read one at a time, so a lazy sequence keeps one frame in memory)."""
    masks = _masks(good, len(frames))
    features, labels = [], []
    for i in range(len(frames)) if indices is None else indices:
        truth = true_peaks[i]
        pc, f, _ = finder.candidates(frames[i], masks[i])
        finder._clear()
        ss, fs = np.divmod(pc, finder._width)
        xy = np.stack([fs - PAD, ss - PAD], axis=1).astype(np.float64)
        label = np.zeros(len(pc), np.float32)
        if len(truth) and len(pc):
            distance, _ = cKDTree(truth[["fs", "ss"]].to_numpy(np.float64)).query(xy)
            label = (distance <= radius_px).astype(np.float32)
        features.append(f)
        labels.append(label)
    return np.concatenate(features), np.concatenate(labels)


def fit_scoring_model(features: np.ndarray, labels: np.ndarray, config: CascadeConfig) -> tuple[dict, list[dict]]:
    """Fit the perceptron; returns its state (with the feature ``mean`` and ``std``) and the loss history."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mean = features.mean(axis=0)
    std = np.maximum(features.std(axis=0), 1e-6)
    x = torch.from_numpy((features - mean) / std)
    y = torch.from_numpy(labels)
    model = scoring_model(config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=1e-5)
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    n_batches = -(-len(x) // config.batch_size)
    epochs = max(config.epochs, -(-config.min_steps // max(n_batches, 1)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            index = order[start:start + config.batch_size]
            loss = loss_fn(model(x[index])[:, 0], y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        scheduler.step()
        history.append({"epoch": epoch + 1, "train_loss": total / max(len(x), 1)})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["mean"] = torch.from_numpy(mean.astype(np.float32))
    state["std"] = torch.from_numpy(std.astype(np.float32))
    return state, history


def calibrate(finder: CascadePeakFinder, frames, true_peaks, good, config: CascadeConfig,
              indices: Sequence[int]) -> tuple[float, pd.DataFrame]:
    """The threshold with the best F1 (reflections >= calibrate_min_photons) on the frames ``indices``, and the
    scan of thresholds 0.02 ... 0.98."""
    from .matching import best_score_threshold

    masks = _masks(good, len(frames))
    found = [finder.find(frames[i], masks[i], threshold=0.02) for i in indices]
    truth = [true_peaks[i] for i in indices]
    return best_score_threshold(found, truth, np.round(np.arange(0.02, 0.99, 0.02), 2), config.match_radius_px,
                                config.calibrate_min_photons)


def train_cascade(frames: Sequence[np.ndarray], true_peaks: Sequence[pd.DataFrame], good,
                  geometry=None, config: CascadeConfig = CascadeConfig(),
                  output: str | Path | None = None) -> dict:
    """Train the cascade on frames with their true reflections; returns (and writes to ``output``) its checkpoint.

    frames: (ss, fs) photon counts, any sequence with len() and [i] (a lazy one keeps one frame in memory); true_peaks: one table per frame with fs, ss (raw convention) and photons (the
    reflection's expected photons); good: one bool (ss, fs) mask or one per frame; geometry: the detector (for the
    ring background bins; None: tiles). Raises ValueError when there are fewer than 2 frames, lengths differ, or
    the training frames hold no candidate near a true reflection.
    """
    if len(frames) != len(true_peaks):
        raise ValueError(f"{len(frames)} frames for {len(true_peaks)} true-peak tables")
    if len(frames) < 2:
        raise ValueError("train_cascade needs at least 2 frames (training and calibration)")
    masks = _masks(good, len(frames))
    rng = np.random.default_rng(config.seed)
    n_cal = min(max(1, int(round(config.calibration_fraction * len(frames)))), len(frames) - 1)
    order = rng.permutation(len(frames))
    held, fit_on = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    finder = CascadePeakFinder()
    finder.config = config
    if geometry is not None:
        finder.prepare(geometry)
    features, labels = candidate_table(finder, frames, true_peaks, masks, config.label_radius_px, fit_on)
    if not labels.any():
        raise ValueError("no candidate of the training frames lies near a true reflection: nothing to learn")
    state, history = fit_scoring_model(features, labels, config)
    checkpoint = dict(model_state=state, optimizer_state={}, epoch=config.epochs,
                      config={"attribute": CASCADE_ATTRIBUTE, "model": "cascade", "cascade": config.to_dict()},
                      class_names=["peak"], threshold=0.5, history=history,
                      n_candidates=int(len(labels)), n_positive=int(labels.sum()))
    trained = CascadePeakFinder(checkpoint)
    if geometry is not None:
        trained.prepare(geometry)
    threshold, scan = calibrate(trained, frames, true_peaks, masks, config, held)
    checkpoint["threshold"] = threshold
    checkpoint["calibration"] = scan.to_dict(orient="list")
    if output is not None:
        CascadePeakFinder(checkpoint).save(output)
    return checkpoint
