"""cxlspeaks' peak-finding network: a CenterNet-style detector on photon counts, centroids from the photons.

Detection. The frame's photon counts n (log1p-compressed, masked pixels zeroed) and its good-pixel mask are cut
into 4 x 4-pixel cells by a pixel-unshuffle (each cell's 16 pixels become 16 channels, so nothing is averaged
away), three 3 x 3 convolutions (the middle one dilated by 2; receptive field 9 cells = 36 px, enough to see
the local water level) and a 1 x 1 head give one logit per cell: "a Bragg reflection's centre lies in this cell".
Training follows CenterNet (Zhou et al. 2019, "Objects as Points"): random crops of the training frames, a
target heatmap of 1 at each true reflection's cell and a Gaussian (sigma 0.8 cells) around it, and the
penalty-reduced focal loss

    L = -1/N_pos [ sum_pos (1 - p)^2 log p + sum_neg (1 - y)^4 p^2 log(1 - p) ]

made for extreme imbalance (about one positive cell per 10^4), over cells with at least one good pixel. Peaks
are the cells whose probability is a 3 x 3 local maximum and above a threshold calibrated on held-out training
frames (the one that maximises F1 for reflections of at least ``calibrate_min_photons`` expected photons).

Position and photons. The network only says where a spot is to a cell; the position comes from the photons:
an iteratively re-centred Gaussian-weighted centroid (window sigma 2 px, 8 iterations, within 7 px) of the
counts above the local background (the mean of the good pixels 5-7 px from the start, i.e. the water level).
For a Gaussian spot of sigma s the windowed centroid moves to the spot centre by a factor s^2 / (s^2 + 4) per
iteration, so it converges to the unbiased centre; its noise is the photon-counting limit ~ s / sqrt(N).
Photons: counts minus background within 4 px of the centre; SNR: photons / sqrt(photons + n_px background).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import CheckpointError, check_finite_state, load_checkpoint, save_checkpoint
from ..frames import FramesFile, find_in_frames
from ..io import atomic_path
from ..seeding import frame_rng
from ..train import prepare_device, train_rows

PEAKNET_ATTRIBUTE = "peaks"
TARGET_SIGMA_CELLS = 0.8
CENTROID_SIGMA_PX = 2.0
CENTROID_ITERATIONS = 8
WINDOW_HALF_PX = 7
BACKGROUND_INNER_PX = 5.0
PHOTON_RADIUS_PX = 4.0


@dataclass(frozen=True)
class PeakNetConfig:
    """How to train the peak network (``peaks.network`` in the config)."""

    width: int = 24                  # channels of the three hidden convolutions
    cell: int = 4                    # pixels per heatmap cell side
    crop_px: int = 128               # training crop side (a multiple of cell)
    crops_per_frame: int = 8         # half centred near true reflections, half anywhere
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 1e-3
    calibration_frames: int = 24     # held-out training frames for the score threshold
    calibrate_min_photons: float = 3.0
    match_radius_px: float = 2.0
    max_peaks: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop_px % self.cell:
            raise ValueError(f"peaks.network.crop_px ({self.crop_px}) must be a multiple of cell ({self.cell})")
        for name in ("width", "cell", "crop_px", "crops_per_frame", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"peaks.network.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PeakNet(nn.Module):
    """Per-cell peak logits of (B, 1, H, W) counts and masks, H and W multiples of ``cell``."""

    inputs = ("counts", "mask")

    def __init__(self, width: int = 24, cell: int = 4):
        super().__init__()
        self.cell = cell
        self.unshuffle = nn.PixelUnshuffle(cell)
        self.body = nn.Sequential(
            nn.Conv2d(2 * cell * cell, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.head = nn.Conv2d(width, 1, 1)
        nn.init.constant_(self.head.bias, -math.log((1 - 0.01) / 0.01))  # start at p = 0.01 (focal-loss prior)

    def forward(self, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(counts.clamp_min(0)) * mask
        z = torch.cat([self.unshuffle(x), self.unshuffle(mask)], dim=1)
        return self.head(self.body(z))


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4) over valid cells, per positive cell."""
    positive = (target >= 1.0) & valid
    negative = ~positive & valid
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = ((1 - p) ** 2 * log_p)[positive].sum()
    neg_loss = ((1 - target) ** 4 * p ** 2 * log_not_p)[negative].sum()
    return -(pos_loss + neg_loss) / positive.sum().clamp_min(1)


def valid_cells(mask: torch.Tensor, cell: int) -> torch.Tensor:
    """Cells holding at least one good pixel."""
    return F.max_pool2d(mask, cell) > 0


def target_heatmap(fs: np.ndarray, ss: np.ndarray, shape_cells: tuple[int, int], cell: int) -> np.ndarray:
    """CenterNet target for reflections at raw pixel positions (fs, ss) relative to the crop origin."""
    heat = np.zeros(shape_cells, np.float32)
    ci = np.floor((ss + 0.5) / cell).astype(int)
    cj = np.floor((fs + 0.5) / cell).astype(int)
    inside = (ci >= 0) & (ci < shape_cells[0]) & (cj >= 0) & (cj < shape_cells[1])
    ii, jj = np.mgrid[:shape_cells[0], :shape_cells[1]]
    for i, j in zip(ci[inside], cj[inside]):
        np.maximum(heat, np.exp(-((ii - i) ** 2 + (jj - j) ** 2) / (2 * TARGET_SIGMA_CELLS ** 2)), out=heat)
        heat[i, j] = 1.0
    return heat


# ---------------------------------------------------------------------- inference
def pad_to_cells(image: np.ndarray, cell: int, fill=0) -> np.ndarray:
    pad_ss, pad_fs = -image.shape[0] % cell, -image.shape[1] % cell
    return np.pad(image, ((0, pad_ss), (0, pad_fs)), constant_values=fill) if pad_ss or pad_fs else image


def refine_peaks(frame: np.ndarray, good: np.ndarray, start_ss: np.ndarray, start_fs: np.ndarray) -> pd.DataFrame:
    """Sub-pixel centroids, photons and SNR of spots near the start positions (raw convention), vectorised.

    Two passes: the centroid is found in a window around the start, then the window (and with it the background
    annulus, which must not reach into the spot) is re-centred on it and the centroid refined again.
    """
    if len(start_ss) == 0:
        return pd.DataFrame({k: np.zeros(0) for k in ("fs", "ss", "photons", "snr")})
    h = WINDOW_HALF_PX
    counts = np.pad(np.where(good, frame, 0).astype(np.float64), h)
    usable = np.pad(good, h)
    dy, dx = np.mgrid[-h:h + 1, -h:h + 1]
    c_ss, c_fs = np.asarray(start_ss, float).copy(), np.asarray(start_fs, float).copy()
    for _ in range(2):
        i0 = np.clip(np.rint(c_ss).astype(int), 0, frame.shape[0] - 1)
        j0 = np.clip(np.rint(c_fs).astype(int), 0, frame.shape[1] - 1)
        win, ok = counts[i0[:, None, None] + dy + h, j0[:, None, None] + dx + h], \
            usable[i0[:, None, None] + dy + h, j0[:, None, None] + dx + h]
        ring = ok & (np.hypot(dy, dx) >= BACKGROUND_INNER_PX)
        background = (win * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)
        above = np.where(ok, win - background[:, None, None], 0.0)
        weight_base = np.clip(above, 0, None)
        yy, xx = i0[:, None, None] + dy, j0[:, None, None] + dx
        for _ in range(CENTROID_ITERATIONS):
            g = np.exp(-((yy - c_ss[:, None, None]) ** 2 + (xx - c_fs[:, None, None]) ** 2)
                       / (2 * CENTROID_SIGMA_PX ** 2))
            w = weight_base * g
            total = w.sum(axis=(1, 2))
            has = total > 0
            c_ss = np.where(has, (w * yy).sum(axis=(1, 2)) / np.where(has, total, 1), c_ss)
            c_fs = np.where(has, (w * xx).sum(axis=(1, 2)) / np.where(has, total, 1), c_fs)
    disk = ok & (np.hypot(yy - c_ss[:, None, None], xx - c_fs[:, None, None]) <= PHOTON_RADIUS_PX)
    photons = (above * disk).sum(axis=(1, 2))
    n_px = disk.sum(axis=(1, 2))
    snr = photons / np.sqrt(np.clip(photons, 0, None) + n_px * background + 1e-12)
    return pd.DataFrame({"fs": c_fs, "ss": c_ss, "photons": photons, "snr": snr})


def merge_close(table: pd.DataFrame, radius_px: float = 1.5) -> pd.DataFrame:
    """Keep the highest-score peak of any group closer than radius_px (two cells converging on one spot)."""
    if len(table) < 2:
        return table
    from scipy.spatial import cKDTree

    order = table.sort_values("score", ascending=False, kind="stable")
    xy = order[["fs", "ss"]].to_numpy()
    keep = np.ones(len(order), bool)
    for i, j in sorted(cKDTree(xy).query_pairs(radius_px)):
        if keep[i] and keep[j]:
            keep[j] = False  # order is by score, so i (< j) scores higher
    return order[keep].sort_index()


class NetworkPeakFinder:
    """A trained PeakNet, ready to find peaks in whole frames (one pass; the memory is ~30 bytes per pixel)."""

    name = "network"

    def __init__(self, checkpoint: dict | str | Path, threshold: float | None = None, threads: int | None = None):
        """A checkpoint path or loaded dict; a :class:`CheckpointError` naming it if it is no usable peak network."""
        source = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint, PEAKNET_ATTRIBUTE)
        config = checkpoint.get("config")
        if not isinstance(config, dict) or config.get("model") != "peaknet":
            model = config.get("model") if isinstance(config, dict) else None
            raise CheckpointError(f"{source}: checkpoint of model {model!r} is not a peak network")
        try:
            self.config = PeakNetConfig(**config["network"])
            self.model = PeakNet(self.config.width, self.config.cell)
            check_finite_state(checkpoint["model_state"], source)
            self.model.load_state_dict(checkpoint["model_state"])
            self.threshold = float(checkpoint["threshold"] if threshold is None else threshold)
        except KeyError as exc:
            raise CheckpointError(f"{source}: peak-network checkpoint has no {exc.args[0]}") from None
        except CheckpointError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            first = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise CheckpointError(f"{source}: weights do not fit the peak network ({first})") from None
        if not 0 < self.threshold <= 1:
            raise CheckpointError(f"{source}: peak threshold {self.threshold} is not in (0, 1]")
        self.model.eval().to(memory_format=torch.channels_last)
        torch.set_flush_denormal(True)  # denormal float32 arithmetic is many times slower on CPUs
        if threads:
            torch.set_num_threads(threads)

    def probabilities(self, frame: np.ndarray, good: np.ndarray) -> np.ndarray:
        """Per-cell peak probability (ceil(ss/cell), ceil(fs/cell)); cells without good pixels are 0."""
        cell = self.config.cell
        counts = torch.from_numpy(pad_to_cells(np.asarray(frame, np.float32), cell))[None, None]
        mask = torch.from_numpy(pad_to_cells(good.astype(np.float32), cell))[None, None]
        with torch.inference_mode():
            logits = self.model(counts.contiguous(memory_format=torch.channels_last),
                                mask.contiguous(memory_format=torch.channels_last))
            p = torch.sigmoid(logits) * valid_cells(mask, cell)
        return p[0, 0].numpy()

    def find(self, frame: np.ndarray, good: np.ndarray, threshold: float | None = None,
             centroid_good: np.ndarray | None = None) -> pd.DataFrame:
        """Peaks of one frame: fs, ss (raw convention), photons, snr, score (the cell probability).
        ``centroid_good``: the pixels centroids, photons and backgrounds may use (default ``good``; e.g. good and
        not saturated, so a saturated core is found but does not bias the position)."""
        threshold = self.threshold if threshold is None else threshold
        p = self.probabilities(frame, good)
        pt = torch.from_numpy(p)[None, None]
        is_max = (F.max_pool2d(pt, 3, stride=1, padding=1) == pt)[0, 0].numpy()
        ci, cj = np.nonzero(is_max & (p >= threshold))
        score = p[ci, cj]
        if len(score) > self.config.max_peaks:
            best = np.argsort(-score, kind="stable")[:self.config.max_peaks]
            ci, cj, score = ci[best], cj[best], score[best]
        cell = self.config.cell
        table = refine_peaks(frame, good if centroid_good is None else centroid_good, ci * cell + (cell - 1) / 2, cj * cell + (cell - 1) / 2)
        table["score"] = score.astype(np.float64)
        return merge_close(table).reset_index(drop=True)


# ---------------------------------------------------------------------- training
@dataclass
class CropSet:
    """Training crops in memory: counts (uint16), good-pixel masks, CenterNet targets."""

    counts: np.ndarray   # (N, S, S) uint16
    good: np.ndarray     # (N, S, S) bool
    target: np.ndarray   # (N, S/cell, S/cell) float32


def frame_crops(frame: np.ndarray, good: np.ndarray, peaks: pd.DataFrame, config: PeakNetConfig,
                rng: np.random.Generator) -> tuple[list, list, list]:
    """``crops_per_frame`` crops (origins on the cell grid): half around true reflections (when there are any),
    the rest anywhere on the frame."""
    size, cell = config.crop_px, config.cell
    ss_max, fs_max = frame.shape[0] - size, frame.shape[1] - size
    if ss_max < 0 or fs_max < 0:
        raise ValueError(f"frames of {frame.shape} are smaller than the training crop ({size} px)")
    counts_out, good_out, target_out = [], [], []
    n_near = config.crops_per_frame // 2 if len(peaks) else 0
    for k in range(config.crops_per_frame):
        if k < n_near:
            row = peaks.iloc[int(rng.integers(len(peaks)))]
            ss0 = int(row["ss"]) - int(rng.integers(8, size - 8))
            fs0 = int(row["fs"]) - int(rng.integers(8, size - 8))
        else:
            ss0, fs0 = int(rng.integers(0, ss_max + 1)), int(rng.integers(0, fs_max + 1))
        ss0 = min(max(ss0 // cell * cell, 0), ss_max // cell * cell)
        fs0 = min(max(fs0 // cell * cell, 0), fs_max // cell * cell)
        window = (slice(ss0, ss0 + size), slice(fs0, fs0 + size))
        counts_out.append(np.clip(frame[window], 0, np.iinfo(np.uint16).max).astype(np.uint16))
        good_out.append(good[window])
        target_out.append(target_heatmap(peaks["fs"].to_numpy() - fs0, peaks["ss"].to_numpy() - ss0,
                                         (size // cell, size // cell), cell))
    return counts_out, good_out, target_out


def _choose_calibration(train: pd.DataFrame, n: int, seed: int) -> pd.Index:
    """A seeded, has_peaks-stratified handful of training frames held out for the threshold."""
    if n <= 0 or len(train) < 2:
        return train.index[:0]
    return train.sample(n=min(n, len(train) // 4), random_state=seed).index


def load_crops(frames: dict[str, str | Path], rows: pd.DataFrame, config: PeakNetConfig) -> CropSet:
    """Crops of the given (dataset, frame) rows, each frame's draws seeded by (seed, dataset, frame)."""
    from tqdm import tqdm

    from .truth import read_true_peaks

    counts, good, target = [], [], []
    for dataset, group in rows.groupby("dataset", sort=True):
        indices = group["frame"].to_numpy()
        truth = read_true_peaks(frames[dataset], indices)
        with FramesFile(frames[dataset]) as source:
            source.check_indices(indices)
            for i, peaks in tqdm(list(zip(indices, truth)), desc=f"crops {dataset}", leave=False):
                rng = frame_rng(config.seed, dataset, int(i), "crop")
                c, g, t = frame_crops(source.read(i), source.mask, peaks, config, rng)
                counts += c
                good += g
                target += t
    return CropSet(np.stack(counts), np.stack(good), np.stack(target))


def calibrate_threshold(finder: NetworkPeakFinder, frames: dict[str, str | Path], rows: pd.DataFrame,
                        config: PeakNetConfig) -> tuple[float, pd.DataFrame]:
    """The score threshold that maximises F1 (reflections >= calibrate_min_photons) on the given frames."""
    from .matching import best_score_threshold
    from .truth import read_true_peaks_of_rows

    predicted = find_in_frames(finder, frames, rows, threshold=0.02)
    truth = read_true_peaks_of_rows(frames, rows)
    return best_score_threshold(predicted, truth, np.round(np.arange(0.05, 0.96, 0.05), 2), config.match_radius_px,
                                config.calibrate_min_photons)


def fit_peaknet(crops: CropSet, config: PeakNetConfig, device: torch.device | None = None,
                progress: bool = False) -> tuple[PeakNet, list[dict]]:
    """Fit a fresh PeakNet to training crops (Adam, cosine learning-rate decay, random mirror flips); seeded."""
    from tqdm import tqdm

    device = device or torch.device("cpu")
    torch.set_flush_denormal(True)  # tiny focal-loss gradients are float32 denormals: 3-4x slower CPU arithmetic
    torch.manual_seed(config.seed)
    model = PeakNet(config.width, config.cell).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    n = len(crops.counts)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).numpy()
        total, seen = 0.0, 0
        bar = tqdm(range(0, n, config.batch_size), desc=f"peaks epoch {epoch + 1}/{config.epochs}",
                   disable=not progress)
        for start in bar:
            index = np.sort(order[start:start + config.batch_size])
            counts = torch.from_numpy(crops.counts[index].astype(np.float32))[:, None]
            good = torch.from_numpy(crops.good[index].astype(np.float32))[:, None]
            target = torch.from_numpy(crops.target[index])[:, None]
            flips = torch.rand(2, generator=generator) < 0.5  # spots are local: mirror images are as likely
            dims = [d for d, flip in zip((2, 3), flips) if flip]
            if dims:
                counts, good, target = (t.flip(dims) for t in (counts, good, target))
            counts, good, target = counts.to(device), good.to(device), target.to(device)
            loss = centernet_focal_loss(model(counts, good), target, valid_cells(good, config.cell))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        scheduler.step()
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "learning_rate": scheduler.get_last_lr()[0]})
    return model.cpu().eval(), history


def train_peaknet(config: PeakNetConfig, frames: dict[str, str | Path], split_path: str | Path,
                  checkpoint_path: str | Path, history_path: str | Path, threads: int = 1, gpus: int = 0,
                  progress: bool = True) -> dict:
    """Train the peak network on crops of the split's training frames; calibrate its threshold; save it."""
    device = prepare_device(gpus, threads)
    train = train_rows(split_path)
    missing = sorted(set(train["dataset"]) - set(frames))
    if missing:
        raise ValueError(f"split {split_path} names dataset {missing[0]!r}, which has no frames file")
    held_out = _choose_calibration(train, config.calibration_frames, config.seed)
    crops = load_crops(frames, train.drop(index=held_out), config)
    model, history = fit_peaknet(crops, config, device, progress)
    checkpoint = dict(model_state=model.state_dict(), optimizer_state={}, epoch=config.epochs,
                      config={"attribute": PEAKNET_ATTRIBUTE, "model": "peaknet", "network": config.to_dict()},
                      class_names=["peak"], threshold=0.5, history=history, n_crops=len(crops.counts))
    calibration = train.loc[held_out]
    if len(calibration):
        threshold, scan = calibrate_threshold(NetworkPeakFinder(checkpoint), frames, calibration, config)
        checkpoint["threshold"] = threshold
        checkpoint["calibration"] = scan.to_dict(orient="list")
        history[-1].update({f"calibration_{k}": v for k, v in
                            scan[scan["threshold"] == threshold].iloc[0].to_dict().items()})
    save_checkpoint(checkpoint_path, **checkpoint)
    with atomic_path(history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    return history[-1]
