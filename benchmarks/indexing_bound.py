"""How many frames could index from what the counts show: the indexing rate of the detection bound's own peaks
beside the true >= 3-photon reflections and the finders, on the default run's indexing frames.

The workflow's `index` stage compares every finder with the true >= 3-photon reflections, a list no finder can
reach at low flux: a 3-photon spot over water is often indistinguishable from a chance triple. This script adds
the reference physics allows. For each indexing frame (results/index/frames.csv) it takes every true
reflection of >= 1 expected photon and applies the detection bound's test (cxlspeaks.peaks.bound: the uniformly
most powerful Poisson counts test at the reflection's known position and best footprint) to the counts the frame
actually recorded, at the false-alarm level of a finder's false-peak rate (the workflow's
results/reports/peaks/bound.csv, ``--rate-of`` finder). The reflections it detects, at their true positions and
without any false peak, are what a finder that knows every position and profile would report: the "bound"
row. Then CrystFEL's indexamajig indexes the truth, the bound and the finders' peaks (results/peaks/<finder>/peaks.csv)
with the same command, one process (``-j 1``: indexamajig's asdf draws random numbers, and with several
processes which frame gets which draws depends on the scheduling, so a rerun can differ by a frame or two), and
each solution is checked against the frame's true a*, b*, c* (cxlspeaks.peaks.indexing.check_orientation).

Prints correct of indexed frames per dataset and writes benchmarks/results/indexing_bound.json: rows {dataset,
flux, reference, frames, correct, wrong, mean_peaks, rate_of, false_rate_used}.

    python benchmarks/indexing_bound.py [--workdir .] [--datasets 05,extreme] [--rate-of cascade]
                                        [--finders cascade,network,peakfinder8]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from cxlspeaks.frames import FramesFile
from cxlspeaks.peaks.bound import frame_reflection_sums, realized_detections
from cxlspeaks.peaks.indexing import (evaluate_stream, find_indexamajig, indexamajig_version, parse_stream,
                                      run_indexamajig, true_bases, write_finder_inputs)
from cxlspeaks.peaks.truth import read_true_peaks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def bound_tables(frames_path: Path, frames: np.ndarray, rate: float) -> list[pd.DataFrame]:
    """Per frame, the true reflections (>= 1 expected photon) the bound's test detects on the recorded counts."""
    good = FramesFile(frames_path).mask
    n_good = int(np.count_nonzero(good))
    out = []
    for frame, truth in zip(frames, read_true_peaks(frames_path, frames)):
        truth = truth[truth["photons"] >= 1.0].reset_index(drop=True)
        sums = frame_reflection_sums(frames_path, int(frame), truth, good, with_counts=True)
        out.append(truth[realized_detections(sums, n_good, rate)])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the default run's results/ are")
    parser.add_argument("--datasets", default="", help="comma-separated datasets (default: all indexed ones)")
    parser.add_argument("--rate-of", default="cascade", help="the finder whose false-peak rate sets alpha")
    parser.add_argument("--finders", default="cascade,network,peakfinder8")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "indexing_bound.json")
    args = parser.parse_args()
    results = args.workdir / "results"
    program = find_indexamajig(None)
    if program is None:
        print("indexamajig not found (PATH or $CXLSPEAKS_INDEXAMAJIG): nothing to measure", file=sys.stderr)
        return 2
    for needed in ("index/frames.csv", "reports/peaks/bound.csv", "index/work/crystal.cell"):
        if not (results / needed).is_file():
            print(f"{results / needed}: missing; run the default workflow with CrystFEL first", file=sys.stderr)
            return 2
    chosen = pd.read_csv(results / "index/frames.csv", dtype={"dataset": str})
    chosen = chosen[chosen["finder"] == "truth"]
    bound_csv = pd.read_csv(results / "reports/peaks/bound.csv")
    rates = bound_csv[bound_csv["finder"] == args.rate_of].groupby("flux")["false_rate_used"].first()
    finders = [f for f in args.finders.split(",") if f]
    peaks = {f: pd.read_csv(results / "peaks" / f / "peaks.csv", dtype={"dataset": str}) for f in finders}
    datasets = args.datasets.split(",") if args.datasets else sorted(set(chosen["dataset"]))
    cell = results / "index/work/crystal.cell"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            group = chosen[chosen["dataset"] == dataset].sort_values("frame")
            frames = group["frame"].to_numpy(np.int64)
            flux = str(group["flux"].iloc[0])
            frames_path = results / "datasets" / dataset / "frames.h5"
            geometry_text = (results / "datasets" / dataset / "detector.geom").read_text()
            true = true_bases(frames_path, frames, None)
            rate = float(rates.get(flux, 1.0))
            references = {"truth": [t[t["photons"] >= 3.0] for t in read_true_peaks(frames_path, frames)],
                          "bound": bound_tables(frames_path, frames, rate)}
            for f, table in peaks.items():
                mine = {k: g for k, g in table[table["dataset"] == dataset].groupby("frame")}
                references[f] = [mine.get(int(i), table.iloc[:0]) for i in frames]
            for name, tables in references.items():
                lst, geom = write_finder_inputs(Path(tmp), name, dataset, frames_path, geometry_text, tables, frames)
                stream = lst.with_suffix(".stream")
                status = run_indexamajig(program, lst, geom, cell, stream, ["asdf", "taketwo"], 1, [], 1800)
                result = evaluate_stream(parse_stream(stream.read_text()) if status == "ok" else [], frames, true)
                rows.append({"dataset": dataset, "flux": flux, "reference": name, "frames": len(frames),
                             "correct": int(result["correct"].sum()), "wrong": int(result["wrong"].sum()),
                             "mean_peaks": float(np.mean([len(t) for t in tables])), "status": status,
                             "rate_of": args.rate_of, "false_rate_used": rate})
                print(f"{dataset:>8} {name:>12}: {rows[-1]['correct']:2d}/{len(frames)} correct, "
                      f"{rows[-1]['wrong']} wrong, {rows[-1]['mean_peaks']:.1f} peaks/frame ({status})", flush=True)
    table = pd.DataFrame(rows)
    print(table.pivot(index="dataset", columns="reference", values="correct").to_string())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": platform.node(), "indexamajig": indexamajig_version(program),
                                       "rows": rows}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
