"""The cascade peak finder against the network and peakfinder8 on simulated full Eiger 4M frames, per flux level.

Simulates (seeded, 1IC6 shipped with the package) training and test frames of the default config's datasets:
normal flux cycles over the 3 x 3 grid 01-09, low and extreme are the datasets of those names; each flux level
gets ``--train`` crystal frames plus a quarter as many empty (water-only) frames for training and ``--test``
crystal frames plus a quarter as many empty frames for testing (other frame indices, so other orientations and
noise). Trains the cascade (:func:`cxlspeaks.peaks.cascade_train.train_cascade`) and, unless ``--no-network``, the peak
network (:mod:`cxlspeaks.peaks.network`: crops, fit, threshold scanned on the same held-out frames) on the training
frames, then runs every finder on the test frames: precision, recall, F1, RMS error (matched within 2 px, one to
one) for reflections of >= 0, 3 and 10 expected photons, and frames/s of ``find`` alone on one thread. Prints the
table and writes benchmarks/results/cascade.json (rows: finder, flux, min_photons, precision, recall, f1, rms_px,
frames_per_s, n_true, tp, fp, fn, n_frames) with the settings used.

    python benchmarks/cascade.py [--train 32] [--test 12] [--epochs 8] [--no-network] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cxlspeaks.peaks.cascade import CascadeConfig, CascadePeakFinder
from cxlspeaks.peaks.cascade_train import train_cascade
from cxlspeaks.peaks.matching import match_frames, metrics_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FLUX_DATASETS = {"normal": ["01", "02", "03", "04", "05", "06", "07", "08", "09"], "low": ["low"],
                 "extreme": ["extreme"]}
MIN_PHOTONS = (0.0, 3.0, 10.0)
QUOTED_NETWORK_F1 = {("normal", 10.0): 0.986, ("low", 3.0): 0.905, ("extreme", 3.0): 0.779, ("low", 0.0): 0.817,
                     ("extreme", 0.0): 0.579}


def simulate(n_crystal: int, first_frame: int, seed: int) -> list[dict]:
    """Frames per flux level: dicts of flux, dataset, frame, counts (float32), truth, geometry."""
    from cxlspeaks.crystal import fetch_structure, load_crystal
    from cxlspeaks.settings import dataset_settings
    from cxlspeaks.simulate.engine import FrameSimulator

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:   # the PDB file shipped in the package, no network
        crystal = load_crystal(fetch_structure("1IC6", Path(tmp) / "1IC6.pdb"), config["structure"]["d_min_A"])
    n_empty = max(1, n_crystal // 4)
    out = []
    for flux, names in FLUX_DATASETS.items():
        sims = {}
        for k in range(n_crystal + n_empty):
            name = names[k % len(names)]
            if name not in sims:
                s = dataset_settings(config, name)
                sims[name] = (s, FrameSimulator(s.geometry(), crystal, s.beam, s.sample, s.water, seed=seed,
                                                dataset=name, spot_sigma_px=s.spot_sigma_px,
                                                saturation_photons=s.saturation))
            s, sim = sims[name]
            i = first_frame + k
            if k < n_crystal:
                bragg = sim.signal(i)
                counts = sim.record(i, bragg.image)
                truth = bragg.peaks[bragg.peaks["photons"] >= s.peak_list_min_photons].reset_index(drop=True)
            else:
                counts = sim.record(i, None, empty=True)
                truth = bragg.peaks.iloc[:0]
            flat = counts.ravel()
            nz = np.flatnonzero(flat)
            out.append({"flux": flux, "dataset": name, "frame": i, "shape": counts.shape,
                        "nonzero": nz.astype(np.int32), "values": flat[nz],
                        "truth": truth[["fs", "ss", "photons"]], "geometry": sim.geometry})
        print(f"simulated {n_crystal} + {n_empty} {flux} frames", flush=True)
    return out


def dense(item: dict) -> np.ndarray:
    """The float32 (ss, fs) frame of a simulated item (kept sparse: 4.5 Mpx frames are 18 MB each)."""
    frame = np.zeros(item["shape"], np.float32)
    frame.ravel()[item["nonzero"]] = item["values"]
    return frame


class Frames:
    """A lazy sequence of the items' dense frames (one in memory at a time)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        return dense(self.items[i])


def train_network(train: list[dict], epochs: int, seed: int):
    """PeakNet on crops of the training frames (peaks.network's own crops and fit), threshold scanned on held-out frames
    like peaks.network.calibrate_threshold (best F1 for reflections >= 3 photons)."""
    from cxlspeaks.peaks.network import CropSet, NetworkPeakFinder, PeakNetConfig, fit_peaknet, frame_crops

    config = PeakNetConfig(epochs=epochs, seed=seed)
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(len(train))[:max(1, len(train) // 4)].tolist())
    counts, good, target = [], [], []
    for k, item in enumerate(train):
        if k not in held:
            c, g, t = frame_crops(dense(item), item["geometry"].mask, item["truth"], config, rng)
            counts += c
            good += g
            target += t
    model, _ = fit_peaknet(CropSet(np.stack(counts), np.stack(good), np.stack(target)), config, progress=False)
    checkpoint = dict(model_state=model.state_dict(), optimizer_state={}, epoch=epochs,
                      config={"attribute": "peaks", "model": "peaknet", "network": config.to_dict()},
                      class_names=["peak"], threshold=0.5)
    finder = NetworkPeakFinder(checkpoint)
    cal = [train[k] for k in sorted(held)]
    found = [finder.find(dense(x), x["geometry"].mask, threshold=0.02) for x in cal]
    best = (-1.0, 0.5)
    for threshold in np.round(np.arange(0.05, 0.96, 0.05), 2):
        t, p = match_frames([f[f["score"] >= threshold] for f in found], [x["truth"] for x in cal])
        f1 = metrics_table(t, p, min_photons=3.0)["f1"].iloc[0]
        best = max(best, (float(np.nan_to_num(f1, nan=-1)), float(threshold)))
    finder.threshold = best[1]
    return finder


def run_finder(finder, test: list[dict]) -> tuple[list[pd.DataFrame], float]:
    """Peak tables of the test frames and frames/s of find() alone."""
    tables, seconds = [], 0.0
    current = None
    for item in test:
        if hasattr(finder, "prepare") and item["geometry"] is not current:
            finder.prepare(item["geometry"])
            current = item["geometry"]
        frame = dense(item)
        start = time.perf_counter()
        tables.append(finder.find(frame, item["geometry"].mask))
        seconds += time.perf_counter() - start
    return tables, len(test) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=32, help="training crystal frames per flux level")
    parser.add_argument("--test", type=int, default=12, help="test crystal frames per flux level")
    parser.add_argument("--epochs", type=int, default=8, help="peak-network epochs")
    parser.add_argument("--seed", type=int, default=20240508)
    parser.add_argument("--no-network", action="store_true")
    parser.add_argument("--cache", type=Path, default=None, help="keep the simulated frames here (pickle)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "cascade.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = args.cache / f"frames_{args.train}_{args.test}_{args.seed}.pkl" if args.cache else None
    if cache is not None and cache.exists():
        train, test = pickle.loads(cache.read_bytes())
    else:
        train, test = simulate(args.train, 0, args.seed), simulate(args.test, 100000, args.seed)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(pickle.dumps((train, test)))

    test.sort(key=lambda x: (list(FLUX_DATASETS).index(x["flux"]), x["dataset"], x["frame"]))
    finders = {}
    start = time.perf_counter()
    by_geometry = {}
    for item in train:  # one geometry per dataset; the cascade's ring bins follow the detector, not the dataset
        by_geometry.setdefault(item["geometry"].shape, item["geometry"])
    geometry = next(iter(by_geometry.values()))
    checkpoint = train_cascade(Frames(train), [x["truth"] for x in train],
                               [x["geometry"].mask for x in train], geometry=geometry,
                               config=CascadeConfig(seed=args.seed % 2**31))
    finders["cascade"] = CascadePeakFinder(checkpoint)
    print(f"cascade trained in {time.perf_counter() - start:.1f} s on {checkpoint['n_candidates']} candidates "
          f"({checkpoint['n_positive']} near reflections), threshold {checkpoint['threshold']}", flush=True)
    from cxlspeaks.peaks.evaluation import Peakfinder8Finder, peakfinder8_settings

    finders["peakfinder8"] = Peakfinder8Finder(peakfinder8_settings("peakfinder8"))
    if not args.no_network:
        start = time.perf_counter()
        try:
            finders["network"] = train_network(train, args.epochs, args.seed % 2**31)
            print(f"network trained in {time.perf_counter() - start:.1f} s, threshold "
                  f"{finders['network'].threshold}", flush=True)
        except (ImportError, TypeError, ValueError, RuntimeError) as exc:
            print(f"network skipped: {type(exc).__name__}: {exc}", file=sys.stderr)

    truth_parts, pred_parts, key_parts, speed = [], [], [], {}
    for name, finder in finders.items():
        tables, speed[name] = run_finder(finder, test)
        print(f"{name}: {speed[name]:.2f} frames/s", flush=True)
        keys = pd.DataFrame({"finder": name, "flux": [x["flux"] for x in test],
                             "dataset": [x["dataset"] for x in test], "frame": [x["frame"] for x in test]})
        t, p = match_frames(tables, [x["truth"] for x in test], 2.0, keys=keys)
        truth_parts.append(t)
        pred_parts.append(p)
        key_parts.append(keys)
    table = metrics_table(pd.concat(truth_parts), pd.concat(pred_parts), by=["finder", "flux"],
                          min_photons=MIN_PHOTONS, frames=pd.concat(key_parts))
    table["frames_per_s"] = table["finder"].map(speed)
    table["quoted_network_f1"] = [QUOTED_NETWORK_F1.get((f, m)) for f, m in zip(table["flux"], table["min_photons"])]
    if "network" in finders:
        net = table[table["finder"] == "network"].set_index(["flux", "min_photons"])["f1"]
        table["f1_minus_network"] = [f1 - net.get((f, m), np.nan) for f1, f, m in
                                     zip(table["f1"], table["flux"], table["min_photons"])]
    columns = [c for c in ("finder", "flux", "min_photons", "precision", "recall", "f1", "rms_px", "frames_per_s",
                           "f1_minus_network", "quoted_network_f1", "n_true", "tp", "fp", "fn", "n_frames")
               if c in table.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rows = json.loads(table[columns].to_json(orient="records"))
    meta = {"device": f"cpu, 1 thread ({platform.processor() or platform.machine()})",
            "train_crystal_frames_per_flux": args.train, "test_crystal_frames_per_flux": args.test,
            "empty_frames_per_flux": [max(1, args.train // 4), max(1, args.test // 4)], "seed": args.seed,
            "network_epochs": args.epochs if "network" in finders else None,
            "cascade_threshold": checkpoint["threshold"]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
