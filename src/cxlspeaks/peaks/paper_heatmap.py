"""The source paper's peak-location model (``paper_attention_heatmap``), trained and read as the paper did.

Everett & Kurth (2024), as committed in adamkurth/cxls_hitfinder (eval.py, ``Peak_Location_Configuration`` at
ebf427e): the full raw frame (float photon counts, no normalisation) into ``HeatmapCNN``, the per-pixel label
image (expected signal >= ``label_threshold_photons``) as target, the focal loss
mean(alpha (1 - p_t)^gamma BCE) with alpha = 0.25, gamma = 2 (p_t = exp(-BCE)), Adam at lr 1e-5, batch 1, and a
peak where sigmoid > 0.5. The paper trained 15 epochs on a GPU with AMP; a full-frame step takes ~4 s on two CPU
cores, so the number of epochs and of training frames are settings (``peaks.paper_heatmap``), the only
departures, and the scheduler (ReduceLROnPlateau, patience 3) is left out because it cannot act within the few
epochs that fit. Peaks are read from the heatmap as the connected regions of sigmoid > 0.5 (8-connected), each
at its probability-weighted centroid (the paper printed scipy.signal.find_peaks of the flattened map instead,
which has no 2-D meaning); photons are the counts in the region, the score its maximum probability.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from ..frames import FramesFile
from ..io import LABEL, atomic_path
from ..models import build_model
from ..train import CheckpointError, load_checkpoint, prepare_device, save_checkpoint, train_rows

PAPER_HEATMAP_ATTRIBUTE = "paper_heatmap"


@dataclass(frozen=True)
class PaperHeatmapConfig:
    """``peaks.paper_heatmap`` in the config; the defaults are the paper's except epochs and max_frames."""

    epochs: int = 15
    max_frames: int = 0            # training frames per epoch (0: all of the split's train frames)
    learning_rate: float = 1e-5
    alpha: float = 0.25
    gamma: float = 2.0
    threshold: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def paper_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """The paper's FocalLoss: mean(alpha (1 - p_t)^gamma BCEWithLogits), p_t = exp(-BCE)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (alpha * (1 - torch.exp(-bce)) ** gamma * bce).mean()


def _read_label(h5, path, i: int) -> np.ndarray:
    try:
        return np.asarray(h5[LABEL][int(i)], dtype=np.float32)
    except (KeyError, OSError) as exc:
        raise ValueError(f"{path}: cannot read {LABEL} frame {i} ({str(exc).splitlines()[0]})") from None


def train_paper_heatmap(config: PaperHeatmapConfig, frames: dict[str, str | Path], split_path: str | Path,
                        checkpoint_path: str | Path, history_path: str | Path, threads: int = 1, gpus: int = 0,
                        progress: bool = True) -> dict:
    """Train the paper's heatmap model on full training frames, batch 1, as the paper did."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    torch.set_flush_denormal(True)  # denormal float32 arithmetic is many times slower on CPUs
    device = prepare_device(gpus, threads)
    train = train_rows(split_path)
    sources = {d: FramesFile(frames[d]) for d in sorted(set(train["dataset"]))}
    shapes = {s.geometry.shape for s in sources.values()}
    if len(shapes) != 1:
        raise ValueError(f"split {split_path} mixes detectors of shapes {sorted(shapes)}")
    shape = shapes.pop()
    model = build_model("paper_attention_heatmap", (1, *shape), 1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    history = []
    try:
        for epoch in range(config.epochs):
            model.train()
            order = train.iloc[np.random.default_rng([config.seed, epoch]).permutation(len(train))]
            if config.max_frames:
                order = order.iloc[:config.max_frames]
            total = 0.0
            bar = tqdm(list(order.itertuples()), desc=f"paper heatmap epoch {epoch + 1}/{config.epochs}",
                       disable=not progress)
            for row in bar:
                counts = torch.from_numpy(sources[row.dataset].read(row.frame))[None, None].to(device)
                target = torch.from_numpy(_read_label(sources[row.dataset].h5, frames[row.dataset], row.frame))
                loss = paper_focal_loss(model(counts), target[None, None].to(device), config.alpha, config.gamma)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            history.append({"epoch": epoch + 1, "train_loss": total / max(len(order), 1),
                            "frames": len(order), "learning_rate": config.learning_rate})
    finally:
        for source in sources.values():
            source.close()
    model = model.cpu().eval()
    save_checkpoint(checkpoint_path, model_state=model.state_dict(), optimizer_state={}, epoch=config.epochs,
                    config={"attribute": PAPER_HEATMAP_ATTRIBUTE, "model": "paper_attention_heatmap",
                            "paper_heatmap": config.to_dict()},
                    class_names=["peak"], input_shape=[1, *shape], threshold=config.threshold, history=history)
    with atomic_path(history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    return history[-1] if history else {}


class PaperHeatmapFinder:
    """Peaks from the paper's heatmap: regions of sigmoid > threshold, at their probability-weighted centroids."""

    name = "paper_heatmap"

    def __init__(self, checkpoint: dict | str | Path, threshold: float | None = None, threads: int | None = None):
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint, PAPER_HEATMAP_ATTRIBUTE)
        if checkpoint["config"].get("model") != "paper_attention_heatmap":
            raise CheckpointError(f"checkpoint of model {checkpoint['config'].get('model')!r} is not the paper's "
                                  "heatmap model")
        self.shape = tuple(checkpoint["input_shape"][1:])
        self.model = build_model("paper_attention_heatmap", (1, *self.shape), 1)
        self.model.load_state_dict(checkpoint["model_state"])
        self.model.eval()
        self.threshold = float(checkpoint["threshold"] if threshold is None else threshold)
        if threads:
            torch.set_num_threads(threads)

    def find(self, frame: np.ndarray, good: np.ndarray, threshold: float | None = None) -> pd.DataFrame:
        threshold = self.threshold if threshold is None else threshold
        if frame.shape != self.shape:
            raise ValueError(f"frame of shape {frame.shape}; the paper's heatmap model was trained on {self.shape}")
        with torch.inference_mode():
            p = torch.sigmoid(self.model(torch.from_numpy(np.asarray(frame, np.float32))[None, None]))[0, 0].numpy()
        regions, n = ndimage.label((p > threshold) & good, structure=np.ones((3, 3)))
        if n == 0:
            return pd.DataFrame({c: np.zeros(0) for c in ("fs", "ss", "photons", "snr", "score")})
        index = np.arange(1, n + 1)
        ss, fs = np.array(ndimage.center_of_mass(p, regions, index)).T
        photons = np.asarray(ndimage.sum_labels(frame, regions, index), dtype=np.float64)
        return pd.DataFrame({"fs": fs, "ss": ss, "photons": photons, "snr": np.sqrt(np.clip(photons, 0, None)),
                             "score": np.asarray(ndimage.maximum(p, regions, index), dtype=np.float64)})
