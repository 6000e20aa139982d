"""Peak finders side by side on the held-out test frames: predictions, matching metrics, figures.

Finders (each has ``find(frame, good) -> peak table``; :func:`make_finder` builds one by name):

* ``network``: cxlspeaks' CenterNet-style network (:mod:`cxlspeaks.peaks.network`), threshold calibrated in training;
* ``peakfinder8``: peakfinder8 (:mod:`cxlspeaks.peaks.peakfinder8`) in the setting for photon-counting frames;
* ``peakfinder8_crystfel``: peakfinder8 with indexamajig 0.10.2's defaults;
* ``paper_heatmap``: the source paper's attention heatmap model (:mod:`cxlspeaks.peaks.paper_heatmap`);
* ``cascade``: the sparse CPU cascade (:mod:`cxlspeaks.peaks.cascade`), trained by :func:`train_cascade_split`.

Protocol (DESIGN.md, "Evaluation protocol"): a found peak matches a true reflection within ``match_radius_px``
(one-to-one, nearest first, :mod:`.matching`); precision, recall, F1 and RMS position error of the matches
for reflections of at least 0, 3 and 10 expected photons, per flux level, on the split's test frames only (crystal
and empty frames: a peak found on an empty frame is a false positive). Speed: frames per second of ``find`` alone
(reading and decompressing excluded), single process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..dataset import read_manifest, read_split
from ..frames import find_in_frames, panel_index, radius_px
from ..io import atomic_path, atomic_write_text
from .matching import match_frames, metrics_table, recall_by_photons
from .truth import read_true_peaks_of_rows

FINDERS = ("network", "peakfinder8", "peakfinder8_crystfel", "paper_heatmap", "cascade")
MIN_PHOTONS = (0.0, 3.0, 10.0)
PREDICTION_COLUMNS = ("dataset", "frame", "fs", "ss", "photons", "snr", "score")


class Peakfinder8Finder:
    """peakfinder8 with one precomputation per detector (radius, mask and panel maps)."""

    def __init__(self, settings, name: str = "peakfinder8"):
        self.settings, self.name = settings, name
        self._prepared: dict = {}
        self._current = None

    def prepare(self, geometry) -> None:
        from .peakfinder8 import Peakfinder8

        key = geometry.to_geom_text()
        if key not in self._prepared:
            self._prepared[key] = Peakfinder8(radius_px(geometry), geometry.mask, self.settings,
                                              panel_index(geometry))
        self._current = self._prepared[key]

    def find(self, frame: np.ndarray, good: np.ndarray) -> pd.DataFrame:
        if self._current is None:
            raise RuntimeError("Peakfinder8Finder.prepare(geometry) must be called before find()")
        return self._current.find(frame)


def peakfinder8_settings(name: str, overrides: dict | None = None):
    """The photon-counting setting (with config overrides) or indexamajig's defaults."""
    from .peakfinder8 import CRYSTFEL_DEFAULTS, PHOTON_COUNTING

    if name == "peakfinder8_crystfel":
        return CRYSTFEL_DEFAULTS
    return dataclasses.replace(PHOTON_COUNTING, **(overrides or {}))


def make_finder(name: str, checkpoint: str | Path | None = None, peakfinder8: dict | None = None,
                threads: int | None = None):
    """A finder by name; the network, the paper's model and the cascade need their checkpoint."""
    if name in ("peakfinder8", "peakfinder8_crystfel"):
        return Peakfinder8Finder(peakfinder8_settings(name, peakfinder8), name)
    if name not in FINDERS:
        raise ValueError(f"unknown peak finder {name!r}; known: {', '.join(FINDERS)}")
    if checkpoint is None:
        raise ValueError(f"peak finder {name!r} needs a checkpoint")
    if name == "network":
        from .network import NetworkPeakFinder

        return NetworkPeakFinder(checkpoint, threads=threads)
    if name == "cascade":
        from .cascade import CascadePeakFinder

        return CascadePeakFinder(checkpoint)
    from .paper_heatmap import PaperHeatmapFinder

    return PaperHeatmapFinder(checkpoint, threads=threads)


class SplitFrames:
    """The frames of a table's (dataset, frame) rows as a lazy sequence (``len``, ``[i]``): each item is read
    when asked for, through :class:`~cxlspeaks.frames.FramesFile` (one open file per dataset); ``masks`` holds
    each row's good-pixel mask (one array per dataset, shared)."""

    def __init__(self, frames: dict[str, str | Path], rows: pd.DataFrame):
        from ..frames import FramesFile

        missing = sorted(set(rows["dataset"]) - set(frames))
        if missing:
            raise ValueError(f"dataset {missing[0]!r} has no frames file")
        self.rows = rows.reset_index(drop=True)
        self.files: dict = {}
        try:
            for dataset, group in self.rows.groupby("dataset", sort=True):
                self.files[dataset] = FramesFile(frames[dataset])
                self.files[dataset].check_indices(group["frame"].to_numpy())
        except BaseException:
            self.close()
            raise
        self.masks = [self.files[d].mask for d in self.rows["dataset"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.rows.iloc[int(i)]
        return self.files[row["dataset"]].read(int(row["frame"]))

    def close(self) -> None:
        for source in self.files.values():
            source.close()

    def __enter__(self) -> "SplitFrames":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def train_cascade_split(settings: dict, frames: dict[str, str | Path], split_path: str | Path,
                        output: str | Path) -> dict:
    """Train the cascade finder (:func:`cxlspeaks.peaks.cascade_train.train_cascade`) on a split's training frames,
    read lazily (one frame in memory), with their true reflections; ``settings``: :class:`CascadeConfig` fields.
    The background rings come from the first dataset's detector. Writes the checkpoint to ``output``."""
    from .cascade import CascadeConfig
    from .cascade_train import train_cascade
    from ..train import train_rows

    config = CascadeConfig(**settings)
    rows = train_rows(split_path).sort_values(["dataset", "frame"]).reset_index(drop=True)
    with SplitFrames(frames, rows) as source:
        truth = read_true_peaks_of_rows(frames, rows)
        geometry = source.files[rows["dataset"].iloc[0]].geometry
        return train_cascade(source, truth, source.masks, geometry=geometry, config=config, output=output)


def test_rows(split_path: str | Path, subset: str = "test") -> pd.DataFrame:
    split = read_split(split_path)
    return split[split["subset"] == subset].sort_values(["dataset", "frame"]).reset_index(drop=True)


def predict_split(finder, frames: dict[str, str | Path], split_path: str | Path, output: str | Path,
                  timing_output: str | Path, subset: str = "test") -> pd.DataFrame:
    """Run one finder over a split subset; write its peaks (one row per peak, PREDICTION_COLUMNS) and timing."""
    rows = test_rows(split_path, subset)
    seconds: list[float] = []
    tables = find_in_frames(finder, frames, rows, seconds=seconds)
    parts = [t.assign(dataset=d, frame=f) for t, d, f in zip(tables, rows["dataset"], rows["frame"]) if len(t)]
    peaks = (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PREDICTION_COLUMNS))
    peaks = peaks[list(PREDICTION_COLUMNS)]
    with atomic_path(output) as tmp:
        peaks.to_csv(tmp, index=False)
    timing = {"finder": getattr(finder, "name", type(finder).__name__), "frames": len(rows),
              "seconds": float(np.sum(seconds)),
              "frames_per_s": float(len(seconds) / np.sum(seconds)) if seconds and np.sum(seconds) > 0 else None}
    atomic_write_text(timing_output, json.dumps(timing, indent=2) + "\n")
    return peaks


def read_predictions(path: str | Path, rows: pd.DataFrame) -> list[pd.DataFrame]:
    """A finder's peak CSV as one table per (dataset, frame) row, in row order."""
    peaks = pd.read_csv(path, dtype={"dataset": str})
    grouped = {key: g for key, g in peaks.groupby(["dataset", "frame"], sort=False)}
    empty = peaks.iloc[:0]
    return [grouped.get((d, f), empty).reset_index(drop=True) for d, f in zip(rows["dataset"], rows["frame"])]


def match_finders(predictions: dict[str, str | Path], frames: dict[str, str | Path],
                  manifests: dict[str, str | Path], split_path: str | Path, radius_px: float = 2.0,
                  subset: str = "test") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Truth and prediction tables of every finder (columns finder, dataset, frame, flux, ...) and the frame keys."""
    rows = test_rows(split_path, subset)
    flux = pd.concat([read_manifest(manifests[d], d)[["dataset", "frame", "flux", "has_peaks"]]
                      for d in sorted(set(rows["dataset"]))])
    keys = rows[["dataset", "frame"]].merge(flux, on=["dataset", "frame"], how="left")
    truth = read_true_peaks_of_rows(frames, rows)
    truth_tables, prediction_tables, frame_keys = [], [], []
    for finder, path in predictions.items():
        t, p = match_frames(read_predictions(path, rows), truth, radius_px, keys=keys)
        truth_tables.append(t.assign(finder=finder))
        prediction_tables.append(p.assign(finder=finder))
        frame_keys.append(keys.assign(finder=finder))
    return (pd.concat(truth_tables, ignore_index=True), pd.concat(prediction_tables, ignore_index=True),
            pd.concat(frame_keys, ignore_index=True))


def peak_report(predictions: dict[str, str | Path], timings: dict[str, str | Path], frames: dict[str, str | Path],
                manifests: dict[str, str | Path], split_path: str | Path, output_dir: str | Path,
                radius_px: float = 2.0, examples: int = 3, seed: int = 0) -> pd.DataFrame:
    """results/reports/peaks/: metrics.csv and metrics.json (one row per finder, flux level and min_photons),
    recall_by_photons.csv, bound.csv (the detection bound's recall per photon bin at every finder's false-peak
    rate, :mod:`cxlspeaks.peaks.bound`), recall_vs_photons.png (the bound dashed) and examples.png (true and
    found peaks on test frames)."""
    from ..report import plot_peak_examples, plot_recall_vs_photons

    output_dir = Path(output_dir)
    truth, predicted, keys = match_finders(predictions, frames, manifests, split_path, radius_px)
    table = metrics_table(truth, predicted, by=["finder", "flux"], min_photons=MIN_PHOTONS, frames=keys)
    empty = keys[~keys["has_peaks"].astype(bool)]
    n_empty = empty.groupby(["finder", "flux"]).size()
    on_empty = predicted.merge(empty[["finder", "dataset", "frame"]], on=["finder", "dataset", "frame"])
    per_empty = (on_empty.groupby(["finder", "flux"]).size().reindex(n_empty.index, fill_value=0) / n_empty)
    table = table.merge(per_empty.rename("false_per_empty_frame").reset_index(), on=["finder", "flux"], how="left")
    speed = {f: json.loads(Path(p).read_text()).get("frames_per_s") for f, p in timings.items()}
    table["frames_per_s"] = table["finder"].map(speed)
    table["match_radius_px"] = radius_px
    with atomic_path(output_dir / "metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    records = json.loads(table.to_json(orient="records"))
    atomic_write_text(output_dir / "metrics.json", json.dumps(records, indent=2) + "\n")
    recall = recall_by_photons(truth, by=["finder", "flux"])
    with atomic_path(output_dir / "recall_by_photons.csv") as tmp:
        recall.to_csv(tmp, index=False)
    rates = (per_empty.rename("false_per_empty_frame").to_frame().join(n_empty.rename("n_empty")).reset_index()
             if len(n_empty) else pd.DataFrame(columns=["finder", "flux", "false_per_empty_frame", "n_empty"]))
    rates = _rates_of_every_flux(rates, keys)
    bound = bound_of_finders(truth, frames, rates, recall)
    with atomic_path(output_dir / "bound.csv") as tmp:
        bound.to_csv(tmp, index=False)
    plot_recall_vs_photons(recall, output_dir / "recall_vs_photons.png", bound=bound)
    rows = test_rows(split_path)
    crystal = rows.merge(keys.drop_duplicates(["dataset", "frame"]), on=["dataset", "frame"])
    crystal = crystal[crystal["has_peaks"].astype(bool)]
    chosen = _example_frames(crystal, examples, seed)
    plot_peak_examples(chosen, frames, {f: read_predictions(p, chosen) for f, p in predictions.items()},
                       output_dir / "examples.png")
    return table


def _rates_of_every_flux(rates: pd.DataFrame, keys: pd.DataFrame) -> pd.DataFrame:
    """One rate row per (finder, flux) of the test frames; a flux level without empty test frames gets n_empty 0
    (the bound then uses one false peak per frame, :func:`cxlspeaks.peaks.bound.false_rate_used`)."""
    every = keys[["finder", "flux"]].drop_duplicates()
    out = every.merge(rates, on=["finder", "flux"], how="left")
    out["n_empty"] = out["n_empty"].fillna(0).astype(int)
    return out.reset_index(drop=True)


def bound_of_finders(truth: pd.DataFrame, frames: dict[str, str | Path], rates: pd.DataFrame,
                     recall: pd.DataFrame | None = None) -> pd.DataFrame:
    """The detection bound (:mod:`cxlspeaks.peaks.bound`) of every finder's false-peak rate and flux level, on
    the true reflections of the test frames (one finder's truth table: they are the same for all)."""
    from .bound import detection_bound
    from ..frames import FramesFile

    if truth.empty:
        one = truth
    else:
        one = truth[truth["finder"] == truth["finder"].iloc[0]].reset_index(drop=True)
    good = {}
    for dataset in sorted(set(one["dataset"])):
        with FramesFile(frames[dataset]) as source:
            good[dataset] = np.asarray(source.mask, bool)
    return detection_bound(one, frames, good, rates, recall)


def _example_frames(crystal: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n crystal test frames, one per flux level first (the low-flux ones are the interesting ones)."""
    if crystal.empty or n == 0:
        return crystal.iloc[:0].reset_index(drop=True)
    firsts = crystal.groupby("flux", sort=True).sample(n=1, random_state=seed)
    rest = crystal.drop(index=firsts.index)
    extra = rest.sample(n=min(max(n - len(firsts), 0), len(rest)), random_state=seed)
    return pd.concat([firsts, extra]).head(n).reset_index(drop=True)


def format_metrics(table: pd.DataFrame, columns: Sequence[str] = ("finder", "flux", "min_photons", "precision",
                                                                 "recall", "f1", "rms_px", "frames_per_s")) -> str:
    """A plain-text table of the metrics (for logs and benchmarks)."""
    return table[list(columns)].to_string(index=False, float_format=lambda v: f"{v:.3f}")
