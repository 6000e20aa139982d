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

Device mode (``--device cpu|cuda``, or ``--quick``): speed of the batched device path
(:mod:`cxlspeaks.peaks.batched`, ``network_batched``) in batches of ``--batch-size`` in each ``--dtypes``,
decompression of in-memory bitshuffle-LZ4 chunks included and excluded, next to the CPU finders of ``--finders``
(one frame at a time), and the batched peaks' equality with ``NetworkPeakFinder.find`` (count mismatch, largest
position difference): :mod:`benchmarks.peaks_gpu` (its docstring). Frames: the default run's test frames
(``--frames-per-dataset``, default 4 in this mode), or with ``--quick`` ``--frames`` synthetic full-size Eiger 4M
frames (no default run needed; the trained peak network when results/models/peaks/checkpoint.pt exists, else a
random-weight one). Writes benchmarks/results/peaks_gpu.json on cuda, peaks_gpu_cpu.json on the CPU (or
``--output``).

    python benchmarks/peaks.py --device cuda --batch-size 16 [--quick --frames 32] [--dtypes float32,float16]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
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
    parser.add_argument("--device", default=None, help="cpu or cuda: the batched device path's speed (see above)")
    parser.add_argument("--quick", action="store_true", help="device mode on synthetic frames (no default run)")
    parser.add_argument("--batch-size", default="8", help="device mode: comma-separated batch sizes")
    parser.add_argument("--dtypes", default=None, help="comma-separated: float32, float16, bfloat16 (default "
                        "float32 on cpu, float32,float16,bfloat16 on cuda)")
    parser.add_argument("--frames", type=int, default=16, help="synthetic frames of --quick")
    parser.add_argument("--decode-threads", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device is not None or args.quick:
        device_mode(args)
        return
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


def device_mode(args) -> None:
    """Rows of :func:`peaks_gpu.speed_rows` on the default run's test frames or synthetic ones (--quick)."""
    import sys

    sys.path.insert(0, str(HERE))
    import peaks_gpu

    from cxlspeaks.frames import FramesFile
    from cxlspeaks.geometry import shipped_geometry

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True      # fixed frame size: let cuDNN pick its fastest convolutions
    dtypes = (args.dtypes or ("float32,float16,bfloat16" if device.startswith("cuda") else "float32")).split(",")
    checkpoint, trained = peaks_gpu.peak_checkpoint(args.workdir / CHECKPOINTS["network"])
    if args.quick:
        geometry = shipped_geometry("eiger4m")
        frames, good = peaks_gpu.synthetic_frames(args.frames, geometry), geometry.mask
    else:
        config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        results = args.workdir / "results"
        split = pd.read_csv(results / "splits" / f"{config.get('peaks', {}).get('split', 'all')}.csv",
                            dtype={"dataset": str})
        test = split[split["subset"] == "test"].groupby("dataset", sort=True).head(args.frames_per_dataset or 4)
        stacks, good, geometry = [], None, None
        for dataset, group in test.groupby("dataset", sort=True):
            with FramesFile(results / "datasets" / dataset / "frames.h5") as source:
                stacks += [source.read(int(i)) for i in group["frame"]]
                good, geometry = source.mask, source.geometry
        frames = np.clip(np.stack(stacks), 0, None).astype(np.uint32)
    threshold = None if trained else peaks_gpu.untrained_threshold(checkpoint, frames[0], good)
    peakfinder8 = yaml.safe_load((REPO / "config" / "config.yaml").read_text()).get("peaks", {}).get("peakfinder8")
    names = [n for n in args.finders.split(",") if n != "peakfinder8_crystfel"]
    cpu_finders = {}
    for name in names:
        path = args.workdir / CHECKPOINTS[name] if name in CHECKPOINTS else None
        if name == "network":
            path = checkpoint
        elif path is not None and not path.exists():
            print(f"{name}: no checkpoint at {path}, left out", flush=True)
            continue
        finder = make_finder(name, path, peakfinder8=peakfinder8, threads=args.threads)
        if hasattr(finder, "prepare"):
            finder.prepare(geometry)
        cpu_finders[name] = finder
    rows = peaks_gpu.speed_rows(frames, good, geometry, checkpoint, threshold, device, dtypes,
                                [int(b) for b in args.batch_size.split(",")],
                                args.decode_threads, cpu_finders)
    host = f"{platform.processor() or platform.machine()}, {args.threads} CPU thread(s)"
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    for row in rows:
        row.update(frames="synthetic eiger4m" if args.quick else "default run test frames",
                   peak_network="trained" if trained else "random weights", host=host, gpu=gpu)
    output = args.output if args.output != HERE / "results" / "peaks.json" else \
        HERE / "results" / ("peaks_gpu.json" if device.startswith("cuda") else "peaks_gpu_cpu.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
