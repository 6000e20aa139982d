"""Figures and the HTML index of results/reports/: confusion matrices, curves, ROC with the oracle, tables."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402
from .metrics import roc_curve  # noqa: E402
from .settings import FLUX_LEVELS  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, counts: np.ndarray, class_names: Sequence[str], title: str,
                          path: str | Path) -> None:
    """Row-normalised confusion matrix (rows = truth) with the fraction and the frame count in each cell."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(class_names), 1.2 + 1.2 * len(class_names)))
    ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.3f}\n({counts[i, j]})", ha="center", va="center",
                color="white" if value > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_curves(history: pd.DataFrame, title: str, loss_path: str | Path, accuracy_path: str | Path) -> None:
    """Loss and accuracy per epoch, train and test subsets."""
    for column, path in (("loss", loss_path), ("accuracy", accuracy_path)):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for subset in ("train", "test"):
            ax.plot(history["epoch"], history[f"{subset}_{column}"], marker="o", label=subset)
        ax.set_xlabel("epoch")
        ax.set_ylabel(column)
        ax.set_title(f"{title}: {column}", fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, path)


def _save_roc(fig, ax, title: str, path: str | Path) -> None:
    """Chance diagonal, axis labels, title and legend of a ROC plot; then save it."""
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_roc(predictions: pd.DataFrame, oracle: pd.DataFrame | None, title: str, path: str | Path) -> None:
    """ROC per flux level of the model (solid) and of the oracle likelihood ratio (dashed)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    groups = [("all", predictions)] + [(f, predictions[predictions["flux"] == f]) for f in FLUX_LEVELS
                                       if "flux" in predictions and (predictions["flux"] == f).any()]
    for (label, table), colour in zip(groups, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        truth = table["truth"].to_numpy().astype(bool)
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, table["p_1"].to_numpy())
        ax.plot(fpr, tpr, color=colour, label=f"model, {label}")
        if oracle is not None:
            merged = table.merge(oracle[["dataset", "frame", "llr"]], on=["dataset", "frame"])
            fpr, tpr, _ = roc_curve(merged["truth"].to_numpy().astype(bool), merged["llr"].to_numpy())
            ax.plot(fpr, tpr, color=colour, linestyle="--", label=f"oracle, {label}")
    _save_roc(fig, ax, title, path)


def plot_roc_one_vs_rest(predictions: pd.DataFrame, class_names: Sequence[str], title: str,
                         path: str | Path) -> None:
    """ROC of each class against the rest (multi-class attributes), from the predicted class probabilities."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for k, name in enumerate(class_names):
        truth = predictions["truth"].to_numpy() == k
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, predictions[f"p_{k}"].to_numpy())
        ax.plot(fpr, tpr, label=f"{name} vs rest")
    _save_roc(fig, ax, title, path)


FINDER_STYLE = {"network": ("tab:red", "+"), "peakfinder8": ("tab:blue", "x"),
                "peakfinder8_crystfel": ("tab:cyan", "1"), "paper_heatmap": ("tab:green", "^")}


def plot_recall_vs_photons(recall: pd.DataFrame, path: str | Path, bound: pd.DataFrame | None = None) -> None:
    """Recall of every finder against the true reflection's expected photons, one panel per flux level; with
    ``bound`` (bound.csv) the detection bound at each finder's false-peak rate dashed in the finder's colour."""
    fluxes = [f for f in FLUX_LEVELS if f in set(recall["flux"])]
    fig, axes = plt.subplots(1, max(len(fluxes), 1), figsize=(4.2 * max(len(fluxes), 1), 3.4), squeeze=False)
    for ax, flux in zip(axes[0], fluxes):
        for finder, group in recall[recall["flux"] == flux].groupby("finder", sort=True):
            color, marker = FINDER_STYLE.get(finder, ("black", "o"))
            ax.plot(group["bin"], group["recall"], marker=marker, color=color, label=finder)
            if bound is not None and len(bound):
                mine = bound[(bound["finder"] == finder) & (bound["flux"] == flux)]
                mine = mine.set_index("bin").reindex(group["bin"])
                ax.plot(group["bin"], mine["bound_recall"].to_numpy(), linestyle="--", color=color, linewidth=1.0,
                        label=f"{finder} bound" if flux == fluxes[0] else None)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("expected photons of the reflection")
        ax.set_ylabel("recall")
        ax.set_title(f"{flux} flux", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def _densest_window(peaks: pd.DataFrame, half_px: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Centre (ss, fs) of the (2 half_px)^2 window, centred on a reflection, that holds the most reflections."""
    if peaks.empty:
        return shape[0] // 2, shape[1] // 2
    fs, ss = peaks["fs"].to_numpy(), peaks["ss"].to_numpy()
    inside = (np.abs(fs[:, None] - fs[None]) < half_px) & (np.abs(ss[:, None] - ss[None]) < half_px)
    best = int(inside.sum(axis=1).argmax())
    return int(ss[best]), int(fs[best])


def plot_peak_examples(frames_table: pd.DataFrame, frames: dict, predictions: dict, path: str | Path,
                       half_px: int = 120) -> None:
    """Test frames (log counts) where their true reflections are densest, true reflections circled (white: >= 3
    expected photons, grey: fewer) and every finder's peaks marked."""
    from .frames import FramesFile
    from .peaks.truth import read_true_peaks

    n = max(len(frames_table), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.8), squeeze=False)
    for k, row in enumerate(frames_table.itertuples()):
        ax = axes[0][k]
        with FramesFile(frames[row.dataset]) as source:
            image = source.read(row.frame)
        truth = read_true_peaks(frames[row.dataset], [row.frame])[0]
        c_ss, c_fs = _densest_window(truth[truth["photons"] >= 3], half_px, image.shape)
        ss0 = min(max(c_ss - half_px, 0), max(image.shape[0] - 2 * half_px, 0))
        fs0 = min(max(c_fs - half_px, 0), max(image.shape[1] - 2 * half_px, 0))
        crop = image[ss0:ss0 + 2 * half_px, fs0:fs0 + 2 * half_px]
        ax.imshow(np.log1p(crop), cmap="magma", origin="upper",
                  extent=(fs0 - 0.5, fs0 + crop.shape[1] - 0.5, ss0 + crop.shape[0] - 0.5, ss0 - 0.5))
        bright = truth["photons"] >= 3
        for subset, color in ((truth[bright], "white"), (truth[~bright], "grey")):
            ax.scatter(subset["fs"], subset["ss"], s=120, facecolors="none", edgecolors=color, linewidths=0.8)
        for finder, tables in predictions.items():
            table = tables[k]
            color, marker = FINDER_STYLE.get(finder, ("black", "o"))
            ax.scatter(table["fs"], table["ss"], s=40, marker=marker, color=color, linewidths=1.0, label=finder)
        ax.set_xlim(fs0 - 0.5, fs0 + crop.shape[1] - 0.5)
        ax.set_ylim(ss0 + crop.shape[0] - 0.5, ss0 - 0.5)
        ax.set_title(f"dataset {row.dataset} frame {row.frame} ({row.flux} flux)", fontsize=9)
        ax.set_xlabel("fs (px)")
        ax.set_ylabel("ss (px)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(len(labels), 1), fontsize=8,
               bbox_to_anchor=(0.5, -0.04))
    _save(fig, path)


def _bound_section(peaks: Path) -> list[str]:
    """The detection bound beside every finder's recall (bound.csv), one column per photon bin."""
    path = peaks / "bound.csv"
    if not path.exists():
        return []
    bound = pd.read_csv(path)
    if bound.empty:
        return []
    order = list(dict.fromkeys(bound["bin"]))
    cells = bound.assign(value=[f"{r:.3f} / {b:.3f}" if np.isfinite(r) or np.isfinite(b) else ""
                                for r, b in zip(bound["finder_recall"], bound["bound_recall"])])
    table = cells.pivot_table(index=["finder", "flux", "false_per_empty_frame"], columns="bin", values="value",
                              aggfunc="first")[order].reset_index()
    table.columns.name = None
    return ["<h3>Detection bound</h3><p>Recall of each finder / of the detection bound, per expected-photon bin: "
            "the uniformly most powerful Poisson counts test at each true reflection's known position over its "
            "water background (Neyman-Pearson), at the per-position false-alarm level that gives the finder's own "
            "false peaks per empty frame (<code>bound.csv</code>; dashed in the figure above).</p>",
            table.to_html(index=False, float_format="%.3f")]


def _indexing_section(peaks: Path) -> list[str]:
    """indexing.csv: indexamajig on every finder's peaks (per flux level over the datasets), or its skip line."""
    path = peaks / "indexing.csv"
    if not path.exists():
        return []
    table = pd.read_csv(path, dtype={"dataset": str})
    parts = ["<h3>Indexing (CrystFEL indexamajig)</h3>"]
    statuses = [s for s in dict.fromkeys(table["status"].astype(str)) if s != "ok"]
    if len(statuses) == 1 and statuses[0].startswith("skipped"):
        return parts + [f"<p>{html.escape(statuses[0])}.</p>"]
    version = table["indexamajig"].dropna().astype(str)
    parts.append("<p>Each finder's peaks on the first test crystal frames of every dataset, indexed with "
                 f"<code>{html.escape(version.iloc[0] if len(version) else 'indexamajig')}</code> "
                 f"(<code>--indexing={html.escape(str(table['methods'].iloc[0]))}</code>); a solution is correct "
                 "when its reciprocal axes match a symmetry-equivalent true basis (1 % length, 1 degree), wrong "
                 "otherwise; <code>truth</code>: the true reflections of &ge; 3 photons.</p>")
    shown = table[table["dataset"] == "all"] if (table["dataset"] == "all").any() else table
    columns = ["finder", "flux", "frames", "indexed", "correct", "wrong", "indexing_rate", "correct_rate",
               "mean_peaks", "status"]
    parts.append(shown[columns].to_html(index=False, float_format="%.3f", na_rep=""))
    return parts


def write_index(reports_dir: str | Path, attributes: Sequence[str], pipeline_csv: str | Path | None,
                config: dict, output: str | Path, peaks_dir: str | Path | None = None) -> None:
    """results/reports/index.html: every attribute's matrix, curves and metrics, the pipeline table, the config."""
    reports_dir = Path(reports_dir)
    output = Path(output)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cxlspeaks report</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}img{max-width:380px;margin:4px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
             "pre{background:#f6f6f6;padding:1em;font-size:12px}</style></head><body>",
             "<h1>cxlspeaks report</h1>",
             "<p>Confusion matrices are normalised by row (rows = truth) on the held-out test frames. The oracle is "
             "the Poisson likelihood-ratio test that knows each frame's expected signal: no hit finder can beat it on "
             "the same frames.</p>"]
    for attribute in attributes:
        directory = reports_dir / attribute
        metrics = json.loads((directory / "metrics.json").read_text())
        parts.append(f"<h2>{html.escape(attribute)}</h2>")
        parts.append(f"<p>model <code>{html.escape(metrics.get('model', ''))}</code>, "
                     f"split <code>{html.escape(metrics.get('split', ''))}</code>, "
                     f"{metrics.get('frames', 0)} test frames, accuracy {metrics.get('accuracy', float('nan')):.4f}"
                     + (f", ROC AUC {metrics['roc_auc']:.4f}" if "roc_auc" in metrics else "")
                     + (f", oracle AUC {metrics['oracle_auc']:.4f}" if "oracle_auc" in metrics else "") + "</p>")
        for name in ("confusion_matrix.png", "roc.png", "loss.png", "accuracy.png"):
            if (directory / name).exists():
                parts.append(f"<img src='{attribute}/{name}' alt='{attribute} {name}'>")
        if "per_flux" in metrics:
            rows = "".join(f"<tr><td>{f}</td><td>{m['frames']}</td><td>{m['accuracy']:.4f}</td><td>{m['tpr']:.4f}"
                           f"</td><td>{m['fpr']:.4f}</td><td>{m.get('roc_auc', float('nan')):.4f}</td>"
                           f"<td>{m.get('oracle_auc', float('nan')):.4f}</td></tr>"
                           for f, m in metrics["per_flux"].items())
            parts.append("<table><tr><th>flux</th><th>frames</th><th>accuracy</th><th>TPR</th><th>FPR</th>"
                         f"<th>ROC AUC</th><th>oracle AUC</th></tr>{rows}</table>")
    if peaks_dir is not None and (Path(peaks_dir) / "metrics.csv").exists():
        peaks = Path(peaks_dir)
        relative = peaks.relative_to(reports_dir) if peaks.is_relative_to(reports_dir) else peaks
        table = pd.read_csv(peaks / "metrics.csv")
        parts.append("<h2>Peak finding</h2><p>Found peaks matched one-to-one to true reflections within "
                     f"{table['match_radius_px'].iloc[0]:g} px on the test frames; recall and F1 count reflections "
                     "of at least <code>min_photons</code> expected photons (found peaks on weaker reflections are "
                     "ignored); frames/s of the finder alone.</p>")
        parts.append(table[["finder", "flux", "min_photons", "n_true", "precision", "recall", "f1", "rms_px",
                            "false_per_empty_frame", "frames_per_s"]].to_html(index=False, float_format="%.3f"))
        for name in ("recall_vs_photons.png", "examples.png"):
            if (peaks / name).exists():
                parts.append(f"<img src='{relative}/{name}' alt='peaks {name}' style='max-width:1100px'>")
        parts.extend(_bound_section(peaks))
        parts.extend(_indexing_section(peaks))
    if pipeline_csv is not None and Path(pipeline_csv).exists():
        table = pd.read_csv(pipeline_csv, dtype={"dataset": str})
        parts.append("<h2>Pipeline on the test frames</h2>")
        summary_path = Path(pipeline_csv).with_name("summary.csv")
        if summary_path.exists():
            parts.append(pd.read_csv(summary_path).to_html(index=False, float_format="%.4f"))
        parts.append(f"<p>{len(table)} frames; first rows of <code>{html.escape(Path(pipeline_csv).name)}</code>:</p>")
        parts.append(table.head(40).to_html(index=False, float_format="%.4f"))
    parts.append("<h2>Configuration of this run</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    parts.append("</body></html>")
    with atomic_path(output) as tmp:
        tmp.write_text("\n".join(parts))
