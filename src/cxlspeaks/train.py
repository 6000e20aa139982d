"""One training loop for every attribute (hit/no-hit, photon energy, camera length), with safe checkpoints.

Inputs are the binned frames of :mod:`cxlspeaks.features`; the train/test subsets come from a split file (only
``train`` frames are used for fitting and for every decision such as learning-rate steps; ``test`` frames are
only evaluated, for the curves). Device: CUDA when available and the job was given a GPU, else the CPU with
``torch.set_num_threads(threads)``. Everything random derives from the attribute's seed, so a rerun, or a resumed
run, gives the same model. Checkpoints are plain dicts of tensors and primitives
({model_state, optimizer_state, scheduler_state, epoch, config, class_names, ...}), saved with ``torch.save`` and
read back with ``torch.load(weights_only=True)``, which refuses pickled objects.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .dataset import read_manifest, read_split
from .features import FEATURES
from .io import DataFileError, atomic_path, open_h5
from .models import build_model, model_class

TARGETS = ("has_peaks", "photon_energy_ev", "clen_m")


@dataclass(frozen=True)
class TrainConfig:
    """How to train one attribute. Defaults are the source paper's choices for its hit CNN."""

    attribute: str
    model: str
    split: str = ""
    target: str = "has_peaks"
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3
    optimizer: str = "adam"          # adam | sgd
    momentum: float = 0.0            # sgd only
    loss: str = "bce"                # bce (binary, BCEWithLogits) | ce (cross-entropy)
    pos_weight: str = "auto"         # auto: n_empty / n_peak of the training frames (the paper's weight) | none
    scheduler: str = "plateau"       # plateau: ReduceLROnPlateau(factor 0.1, patience 3, threshold 0.1) | none
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"training.{self.attribute}.target must be one of {TARGETS}, got {self.target!r}")
        if self.loss == "bce" and self.target != "has_peaks":
            raise ValueError(f"training.{self.attribute}: loss bce needs target has_peaks")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- data
@dataclass
class FrameInputs:
    """Binned frames of the split's frames, in memory, with per-frame channels built on demand."""

    counts: torch.Tensor           # (N, H, W)
    signal: torch.Tensor | None    # (N, H, W) or None when no model asks for it
    masks: torch.Tensor            # (D, H, W), one per dataset
    mask_index: torch.Tensor       # (N,) dataset index into masks
    table: pd.DataFrame            # dataset, frame, subset, has_peaks, photon_energy_ev, clen_m, flux
    bin_factor: int = 1
    radii: torch.Tensor | None = None  # (D, H, W) metres from the beam axis per bin, one per dataset

    def channels(self, index: torch.Tensor, inputs: Sequence[str]) -> torch.Tensor:
        parts = []
        for name in inputs:
            if name == "counts":
                parts.append(self.counts[index])
            elif name == "signal":
                parts.append(self.signal[index])
            elif name == "mask":
                parts.append(self.masks[self.mask_index[index]])
            elif name == "radius":
                parts.append(self.radii[self.mask_index[index]])
            else:
                raise KeyError(f"unknown input channel {name!r}")
        return torch.stack(parts, dim=1)


def load_inputs(features: dict[str, str | Path], split: pd.DataFrame, with_signal: bool = False,
                manifests: dict[str, str | Path] | None = None) -> FrameInputs:
    """Read the binned frames of every split row from the datasets' feature files."""
    counts, signal, masks, radii, mask_index, rows, factors = [], [], [], [], [], [], set()
    for d, (dataset, group) in enumerate(split.groupby("dataset", sort=True)):
        if dataset not in features:
            raise DataFileError(f"split names dataset {dataset!r}, which has no feature file")
        frames = group["frame"].to_numpy()
        with open_h5(features[dataset]) as h5:
            g = h5[FEATURES]
            n = g["counts"].shape[0]
            if frames.max() >= n:
                raise DataFileError(f"{features[dataset]}: holds {n} frames, the split asks for frame {frames.max()}")
            order = np.argsort(frames)
            sorted_frames = frames[order]
            block = np.empty((len(frames), *g["counts"].shape[1:]), np.float32)
            block[order] = g["counts"][sorted_frames]
            counts.append(block)
            if with_signal:
                sblock = np.empty_like(block)
                sblock[order] = g["signal"][sorted_frames]
                signal.append(sblock)
            masks.append(g["mask_fraction"][()])
            if "radius_m" not in g:
                raise DataFileError(f"{features[dataset]}: has no {FEATURES}/radius_m (written by an older "
                                    f"cxlspeaks); delete it and rerun the workflow")
            radii.append(g["radius_m"][()])
            factors.add(int(g.attrs["bin_factor"]))
            has_peaks = g["has_peaks"][()][frames]
            rows.append(group.assign(has_peaks=has_peaks, photon_energy_ev=float(g.attrs["photon_energy_ev"]),
                                     clen_m=float(g.attrs["clen_m"])))
            mask_index.append(np.full(len(frames), d))
    shapes = {m.shape for m in masks}
    if len(shapes) != 1 or len(factors) != 1:
        raise DataFileError(f"datasets of one split have different binned frames: shapes {sorted(shapes)}, "
                            f"bin factors {sorted(factors)}")
    table = pd.concat(rows, ignore_index=True)
    if manifests:
        flux = pd.concat([read_manifest(p, k)[["dataset", "frame", "flux"]]
                          for k, p in manifests.items()])
        table = table.merge(flux, on=["dataset", "frame"], how="left")
    return FrameInputs(bin_factor=factors.pop(), counts=torch.from_numpy(np.concatenate(counts)),
                       signal=torch.from_numpy(np.concatenate(signal)) if with_signal else None,
                       masks=torch.from_numpy(np.stack(masks)),
                       radii=torch.from_numpy(np.stack(radii)),
                       mask_index=torch.from_numpy(np.concatenate(mask_index)), table=table)


def class_values_of(table: pd.DataFrame, target: str) -> list:
    """Classes of a target: [False, True] for has_peaks, else the sorted distinct values in the table."""
    if target == "has_peaks":
        return [False, True]
    return sorted(float(v) for v in table[target].unique())


def class_name(target: str, value) -> str:
    if target == "has_peaks":
        return "peaks" if value else "no peaks"
    if target == "photon_energy_ev":
        return f"{value / 1000:g} keV"
    return f"{value:g} m"


def targets_of(table: pd.DataFrame, target: str, class_values: list) -> torch.Tensor:
    """Class indices of the rows (0/1 for has_peaks); an unknown value is an error."""
    values = table[target].to_numpy()
    lookup = {v: i for i, v in enumerate(class_values)}
    try:
        return torch.tensor([lookup[bool(v) if target == "has_peaks" else float(v)] for v in values])
    except KeyError as exc:
        raise ValueError(f"{target} value {exc.args[0]} is not one of the trained classes {class_values}") from None


# ---------------------------------------------------------------------- training
def choose_device(gpus: int) -> torch.device:
    """CUDA when the job was given a GPU and one is visible, else the CPU."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def prepare_device(gpus: int, threads: int) -> torch.device:
    """The training device (:func:`choose_device`); on the CPU, ``threads`` torch threads."""
    device = choose_device(gpus)
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    return device


def train_rows(split_path: str | Path) -> pd.DataFrame:
    """The (dataset, frame) rows of a split's training subset; an error when it has none."""
    split = read_split(split_path)
    train = split[split["subset"] == "train"].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"split {split_path} has no train frames")
    return train


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum)
    raise ValueError(f"training.{config.attribute}.optimizer must be adam or sgd, got {config.optimizer!r}")


def _loss(config: TrainConfig, train_targets: torch.Tensor, device) -> nn.Module:
    if config.loss == "ce":
        return nn.CrossEntropyLoss()
    if config.pos_weight == "auto":
        n_peak = int(train_targets.sum())
        n_empty = len(train_targets) - n_peak
        weight = n_empty / max(n_peak, 1)
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([weight], device=device))
    return nn.BCEWithLogitsLoss()


def _outputs_to_loss_input(config: TrainConfig, logits: torch.Tensor, targets: torch.Tensor):
    if config.loss == "bce":
        return logits[:, 0], targets.float()
    return logits, targets


def predict_probabilities(model: nn.Module, data: FrameInputs, index: torch.Tensor, binary: bool,
                          device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, K) of the given rows (K = 2 for a binary model: [no peaks, peaks])."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            x = data.channels(index[start:start + batch_size], model.inputs).to(device)
            logits = model(x)
            if binary:
                p = torch.sigmoid(logits[:, 0])
                out.append(torch.stack([1 - p, p], dim=1).cpu())
            else:
                out.append(torch.softmax(logits, dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of the training batches of ``n`` frames: ``batch_size`` each, except that a last batch of a
    single frame joins the one before (batch statistics, as BatchNorm's, need two frames)."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_attribute(config: TrainConfig, features: dict[str, str | Path], split_path: str | Path,
                    checkpoint_path: str | Path, history_path: str | Path, threads: int = 1, gpus: int = 0,
                    progress: bool = True) -> dict:
    """Train one attribute on the split's train frames; resumable from ``<checkpoint>.resume``."""
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    device = choose_device(gpus)
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    split = read_split(split_path)
    model_inputs = model_class(config.model).inputs
    data = load_inputs(features, split, with_signal="signal" in model_inputs)
    class_values = class_values_of(data.table[data.table["subset"] == "train"], config.target)
    targets = targets_of(data.table, config.target, class_values)
    train_idx = torch.from_numpy(np.flatnonzero(data.table["subset"].to_numpy() == "train"))
    test_idx = torch.from_numpy(np.flatnonzero(data.table["subset"].to_numpy() == "test"))
    if len(train_idx) == 0:
        raise ValueError(f"split {split_path} has no train frames")
    input_shape = (len(model_inputs), *data.counts.shape[1:])
    n_outputs = 1 if config.loss == "bce" else len(class_values)

    def fresh():
        net = build_model(config.model, input_shape, n_outputs).to(device)
        opt = _optimizer(config, net.parameters())
        sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=3, threshold=0.1)
                 if config.scheduler == "plateau" else None)
        return net, opt, sched

    model, optimizer, scheduler = fresh()
    criterion = _loss(config, targets[train_idx], device)
    history: list[dict] = []
    start_epoch = 0
    resume_path = Path(f"{checkpoint_path}.resume")
    if resume_path.exists():
        try:
            state = load_checkpoint(resume_path, config.attribute)
        except CheckpointError:
            state = None
        if state is not None and state["config"] == config.to_dict():
            try:
                model.load_state_dict(state["model_state"])
                optimizer.load_state_dict(state["optimizer_state"])
                if scheduler is not None and state.get("scheduler_state"):
                    scheduler.load_state_dict(state["scheduler_state"])
                start_epoch, history = int(state["epoch"]), list(state["history"])
            except (RuntimeError, ValueError, KeyError):  # the model's code changed since: start afresh
                model, optimizer, scheduler = fresh()
                start_epoch, history = 0, []
    class_names = [class_name(config.target, v) for v in class_values]
    train_table = data.table[data.table["subset"] == "train"]
    trained_on = {"binned_shape": [int(n) for n in data.counts.shape[1:]], "bin_factor": int(data.bin_factor),
                  "photon_energy_ev": sorted(float(v) for v in train_table["photon_energy_ev"].unique()),
                  "clen_m": sorted(float(v) for v in train_table["clen_m"].unique())}

    def snapshot(epoch: int) -> dict:
        return dict(model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict() if scheduler is not None else {}, epoch=epoch,
                    config=config.to_dict(), class_names=class_names,
                    class_values=[float(v) for v in class_values], input_shape=list(input_shape),
                    inputs=list(model_inputs), history=history, bin_factor=data.bin_factor,
                    trained_on=trained_on)

    binary = config.loss == "bce"
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(
            config.seed * 1000 + epoch))]
        total, correct, seen = 0.0, 0, 0
        bar = tqdm(batch_bounds(len(order), config.batch_size),
                   desc=f"{config.attribute} epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for start, stop in bar:
            index = order[start:stop]
            x = data.channels(index, model_inputs).to(device)
            y = targets[index].to(device)
            logits = model(x)
            loss = criterion(*_outputs_to_loss_input(config, logits, y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            predicted = (logits[:, 0] > 0).long() if binary else logits.argmax(dim=1)
            correct += int((predicted == y).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        train_loss = total / seen
        if scheduler is not None:
            scheduler.step(train_loss)
        test_loss, test_accuracy = _evaluate(model, data, test_idx, targets, criterion, config, device)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": correct / seen,
                        "test_loss": test_loss, "test_accuracy": test_accuracy,
                        "learning_rate": optimizer.param_groups[0]["lr"]})
        save_checkpoint(resume_path, **snapshot(epoch + 1))
    save_checkpoint(checkpoint_path, **snapshot(config.epochs))
    with atomic_path(history_path) as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)
    resume_path.unlink(missing_ok=True)
    return history[-1] if history else {}


def _evaluate(model, data, index, targets, criterion, config, device) -> tuple[float, float]:
    if len(index) == 0:
        return math.nan, math.nan
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(index), 32):
            batch = index[start:start + 32]
            logits = model(data.channels(batch, model.inputs).to(device))
            y = targets[batch].to(device)
            total += float(criterion(*_outputs_to_loss_input(config, logits, y))) * len(batch)
            predicted = (logits[:, 0] > 0).long() if config.loss == "bce" else logits.argmax(dim=1)
            correct += int((predicted == y).sum())
    return total / len(index), correct / len(index)


def predict_split(checkpoint: dict, features: dict[str, str | Path], split_path: str | Path,
                  manifests: dict[str, str | Path] | None = None, subset: str = "test") -> pd.DataFrame:
    """Predictions of a loaded checkpoint (:func:`load_checkpoint`) on one subset of its split: truth, prediction,
    class probabilities."""
    model = model_from_checkpoint(checkpoint)
    config = checkpoint["config"]
    split = read_split(split_path)
    split = split[split["subset"] == subset]
    data = load_inputs(features, split, with_signal="signal" in model.inputs, manifests=manifests)
    class_values = checkpoint["class_values"]
    truth = targets_of(data.table, config["target"], class_values).numpy()
    index = torch.arange(len(data.table))
    probabilities = predict_probabilities(model, data, index, config["loss"] == "bce", torch.device("cpu"))
    out = data.table.copy()
    out["truth"] = truth
    out["predicted"] = probabilities.argmax(axis=1)
    for k, name in enumerate(checkpoint["class_names"]):
        out[f"p_{k}"] = probabilities[:, k]
    return out
