"""Evaluation: confusion matrices, ROC curves, metrics, and the oracle likelihood-ratio bound for hit finding.

The oracle (Neyman-Pearson): a detector that knows a frame's expected Bragg signal s_i and water b_i per pixel
and tests "signal present" against "water only" with the Poisson log-likelihood ratio

    LLR = sum_i [ n_i ln(1 + s_i / b_i) - s_i ]

of the recorded counts n_i is the most powerful test of the two hypotheses, so its ROC is an upper bound for any
hit finder on the same frames. For a crystal frame s is its own expected signal; for an empty frame, which has
none, the hypothesis tested is the expected signal of crystal frame (k mod n_crystal) of the same dataset, so
both classes are scored against templates drawn from the same distribution (with signal-free "hits" the AUC is
then 0.5). Pixels with b_i = 0 (masked) are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import read_manifest
from .io import BACKGROUND, DATA, HAS_PEAKS, SIGNAL, WATER_SCALE, open_h5
from .metrics import confusion_matrix, normalise_rows, roc_auc
from .settings import FLUX_LEVELS


def binary_metrics(truth: np.ndarray, predicted: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Accuracy, TPR (recall of hits), FPR (empty frames called hits), counts and ROC AUC."""
    truth = np.asarray(truth, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    tp, fn = int((truth & predicted).sum()), int((truth & ~predicted).sum())
    fp, tn = int((~truth & predicted).sum()), int((~truth & ~predicted).sum())
    n = len(truth)
    out = {"frames": n, "accuracy": (tp + tn) / n if n else float("nan"),
           "tpr": tp / (tp + fn) if tp + fn else float("nan"), "fpr": fp / (fp + tn) if fp + tn else float("nan"),
           "tp": tp, "fn": fn, "fp": fp, "tn": tn}
    if scores is not None:
        out["roc_auc"] = roc_auc(truth, scores)
    return out


def multiclass_metrics(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict:
    matrix = confusion_matrix(truth, predicted, n_classes)
    return {"frames": int(matrix.sum()), "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
            "per_class_recall": normalise_rows(matrix).diagonal().tolist()}


# ---------------------------------------------------------------------- the oracle
def log_likelihood_ratio(counts: np.ndarray, signal: np.ndarray, background: np.ndarray) -> float:
    """sum_i [n_i ln(1 + s_i / b_i) - s_i] over pixels with b_i > 0 (only pixels with s_i > 0 contribute)."""
    s = np.asarray(signal, dtype=np.float64).ravel()
    b = np.asarray(background, dtype=np.float64).ravel()
    n = np.asarray(counts, dtype=np.float64).ravel()
    lit = np.flatnonzero((s > 0) & (b > 0))
    return float(np.sum(n[lit] * np.log1p(s[lit] / b[lit])) - s[lit].sum())


def oracle_scores(frames_path: str | Path, frames: np.ndarray) -> np.ndarray:
    """The oracle LLR of the given frames of one dataset's frames file (see the module docstring)."""
    with open_h5(frames_path) as h5:
        n_frames = h5[HAS_PEAKS].shape[0]
        n_crystal = n_frames - int(h5["/entry"].attrs.get("n_empty", 0))
        background = h5[BACKGROUND][()]
        scale = h5[WATER_SCALE][()]
        scores = []
        for frame in np.asarray(frames, dtype=int):
            if n_crystal == 0:
                scores.append(0.0)
                continue
            template = frame if frame < n_crystal else (frame - n_crystal) % n_crystal
            scores.append(log_likelihood_ratio(h5[DATA][frame], h5[SIGNAL][template],
                                               background * scale[frame]))
    return np.asarray(scores)


def oracle_table(frames_paths: dict[str, str | Path], split: pd.DataFrame, manifests: dict[str, str | Path],
                 subset: str = "test") -> pd.DataFrame:
    """Oracle LLR of every frame of a split subset: dataset, frame, has_peaks, flux, llr."""
    rows = []
    chosen = split[split["subset"] == subset]
    for dataset, group in chosen.groupby("dataset", sort=True):
        manifest = read_manifest(manifests[dataset], dataset).set_index("frame")
        frames = group["frame"].to_numpy()
        llr = oracle_scores(frames_paths[dataset], frames)
        rows.append(pd.DataFrame({"dataset": dataset, "frame": frames,
                                  "has_peaks": manifest.loc[frames, "has_peaks"].to_numpy(),
                                  "flux": manifest.loc[frames, "flux"].to_numpy(), "llr": llr}))
    return pd.concat(rows, ignore_index=True)


def hit_metrics(predictions: pd.DataFrame, oracle: pd.DataFrame | None = None) -> dict:
    """Hit-finding metrics overall and per flux level, with the oracle's AUC on the same frames."""
    def block(table: pd.DataFrame) -> dict:
        out = binary_metrics(table["truth"].to_numpy(), table["predicted"].to_numpy(), table["p_1"].to_numpy())
        if oracle is not None:
            merged = table.merge(oracle[["dataset", "frame", "llr"]], on=["dataset", "frame"], how="left")
            out["oracle_auc"] = roc_auc(merged["truth"].to_numpy().astype(bool), merged["llr"].to_numpy())
        return out

    metrics = block(predictions)
    metrics["per_flux"] = {flux: block(predictions[predictions["flux"] == flux])
                           for flux in FLUX_LEVELS if (predictions["flux"] == flux).any()}
    if oracle is not None:
        metrics["oracle_auc_per_flux"] = {flux: m["oracle_auc"] for flux, m in metrics["per_flux"].items()}
    return metrics


def evaluate_attribute(checkpoint_path: str | Path, attribute: str, features: dict[str, str | Path],
                       split_path: str | Path, manifests: dict[str, str | Path], output_dir: str | Path,
                       oracle_csv: str | Path | None = None) -> dict:
    """Test-subset predictions, confusion matrix (CSV + PNG), metrics.json, loss/accuracy curves and ROC."""
    from .io import atomic_path
    from .report import plot_confusion_matrix, plot_curves, plot_roc, plot_roc_one_vs_rest
    from .train import load_checkpoint, predict_split

    output_dir = Path(output_dir)
    checkpoint = load_checkpoint(checkpoint_path, attribute)
    config = checkpoint["config"]
    names = checkpoint["class_names"]
    predictions = predict_split(checkpoint, features, split_path, manifests)
    oracle = pd.read_csv(oracle_csv, dtype={"dataset": str}) if oracle_csv else None
    counts = confusion_matrix(predictions["truth"], predictions["predicted"], len(names))
    matrix = normalise_rows(counts)
    if config["loss"] == "bce":
        metrics = hit_metrics(predictions, oracle)
    else:
        metrics = multiclass_metrics(predictions["truth"], predictions["predicted"], len(names))
    metrics.update(attribute=attribute, model=config["model"], split=Path(split_path).stem, class_names=names,
                   confusion_matrix=matrix.tolist(), confusion_counts=counts.tolist(),
                   epochs=int(checkpoint["epoch"]))
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_dir / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    with atomic_path(output_dir / "confusion_matrix.csv") as tmp:
        pd.DataFrame(matrix, index=pd.Index(names, name="truth"), columns=names).to_csv(tmp)
    plot_confusion_matrix(matrix, counts, names, f"{attribute} ({config['model']}), rows = truth",
                          output_dir / "confusion_matrix.png")
    history = pd.DataFrame(checkpoint["history"])
    plot_curves(history, attribute, output_dir / "loss.png", output_dir / "accuracy.png")
    if config["loss"] == "bce":
        plot_roc(predictions, oracle, f"{attribute}: ROC on the test frames", output_dir / "roc.png")
    else:
        plot_roc_one_vs_rest(predictions, names, f"{attribute}: ROC, one class vs the rest", output_dir / "roc.png")
    with atomic_path(output_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def write_oracle_table(frames_paths: dict[str, str | Path], manifests: dict[str, str | Path],
                       split_path: str | Path, output: str | Path) -> None:
    """The oracle LLR of a split's test frames as CSV (dataset, frame, has_peaks, flux, llr)."""
    from .io import atomic_path
    from .dataset import read_split

    table = oracle_table(frames_paths, read_split(split_path), manifests)
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False)
