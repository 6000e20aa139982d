"""Peak finding on frames of the default configuration: the network, peakfinder8 and the paper's heatmap model.

Needs a default run's data and peak models (``snakemake --cores 2`` or at least
``snakemake --cores 2 results/models/peaks/checkpoint.pt results/models/paper_heatmap/checkpoint.pt``). Every
finder runs on the same test frames of the peaks split (all of them, or ``--frames-per-dataset`` of each dataset,
crystal and empty frames alike); found peaks are matched one-to-one to the true reflections within 2 px and
scored per flux level for reflections of at least 0, 3 and 10 expected photons. Speed: full-size Eiger 4M frames
per second of ``find`` alone (no reading or decompression), one process, ``--threads`` torch threads (CPU here;
the network runs on the CPU too when a GPU is present, for a like-for-like figure). Prints the table and writes
benchmarks/results/peaks.json: a list of rows {finder, flux, min_photons, precision, recall, f1, rms_px,
frames_per_s, ...}; the peakfinder8 rows use the photon-counting setting, the rows of indexamajig's default
setting go to peaks_peakfinder8_crystfel.json.

    python benchmarks/peaks.py [--frames-per-dataset 0] [--threads 1] [--finders network,cascade,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

from cxlspeaks.peaks.evaluation import (MIN_PHOTONS, format_metrics, make_finder, match_finders, predict_split)
from cxlspeaks.peaks.matching import metrics_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CHECKPOINTS = {"network": "results/models/peaks/checkpoint.pt",
               "cascade": "results/models/peaks_cascade/checkpoint.pt",
               "paper_heatmap": "results/models/paper_heatmap/checkpoint.pt"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the default run's results/ are")
    parser.add_argument("--frames-per-dataset", type=int, default=0, help="test frames per dataset (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "peaks.json")
    parser.add_argument("--finders", default="network,peakfinder8,peakfinder8_crystfel,paper_heatmap",
                        help="comma-separated finders (default: the four of peaks.json; cascade also exists)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    split_name = config.get("peaks", {}).get("split", "all")
    results = args.workdir / "results"
    split = pd.read_csv(results / "splits" / f"{split_name}.csv", dtype={"dataset": str})
    if args.frames_per_dataset:
        test = split[split["subset"] == "test"]
        split = test.groupby("dataset", sort=True).head(args.frames_per_dataset)
    datasets = sorted(set(split["dataset"]))
    frames = {d: results / "datasets" / d / "frames.h5" for d in datasets}
    manifests = {d: results / "datasets" / d / "manifest.csv" for d in datasets}
    finders = tuple(args.finders.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        split_path = tmp / "split.csv"
        split.to_csv(split_path, index=False)
        predictions, speed = {}, {}
        for name in finders:
            checkpoint = args.workdir / CHECKPOINTS[name] if name in CHECKPOINTS else None
            finder = make_finder(name, checkpoint, peakfinder8=config.get("peaks", {}).get("peakfinder8"),
                                 threads=args.threads)
            predict_split(finder, frames, split_path, tmp / f"{name}.csv", tmp / f"{name}.json")
            predictions[name] = tmp / f"{name}.csv"
            speed[name] = json.loads((tmp / f"{name}.json").read_text())["frames_per_s"]
            print(f"{name}: {speed[name]:.2f} frames/s", flush=True)
        truth, predicted, keys = match_finders(predictions, frames, manifests, split_path)
    table = metrics_table(truth, predicted, by=["finder", "flux"], min_photons=MIN_PHOTONS, frames=keys)
    table["frames_per_s"] = table["finder"].map(speed)
    print(format_metrics(table))
    columns = ["finder", "flux", "min_photons", "precision", "recall", "f1", "rms_px", "frames_per_s", "n_true",
               "tp", "fp", "fn", "n_frames"]
    rows = json.loads(table[columns].to_json(orient="records"))
    device = f"cpu, {args.threads} thread(s) ({platform.processor() or platform.machine()})"
    for row in rows:
        row["min_photons"] = int(row["min_photons"])
        row["device"] = device
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if "peakfinder8_crystfel" not in finders:  # one file of the finders asked for
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.output}")
        return
    args.output.write_text(json.dumps([r for r in rows if r["finder"] != "peakfinder8_crystfel"], indent=2) + "\n")
    extra = args.output.with_name(args.output.stem + "_peakfinder8_crystfel.json")
    extra.write_text(json.dumps([r for r in rows if r["finder"] == "peakfinder8_crystfel"], indent=2) + "\n")
    print(f"wrote {args.output} and {extra}")


if __name__ == "__main__":
    main()
