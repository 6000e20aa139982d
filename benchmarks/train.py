"""Training throughput of the hit finder (hit_fcn) on full-size binned frames, on the CPU and on a GPU if present.

Synthetic binned Eiger 4M frames (bin 8: 271 x 259 -> padded 272 x 264) of Poisson water with a few bright Bragg
bins in the hits are written as feature files in the workflow's layout; the same training loop the workflow uses
(cxlspeaks.train.train_attribute) trains hit_fcn for a few epochs, once with ``gpus=0`` (CPU, all threads) and,
when CUDA is available, once with ``gpus=1``. Prints a table and writes benchmarks/results/train.json with
seconds per epoch and frames per second per device.

    python benchmarks/train.py [--frames 600] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from cxlspeaks.features import FEATURES
from cxlspeaks.train import TrainConfig, train_attribute

HERE = Path(__file__).resolve().parent
SHAPE = (272, 264)


def write_features(path: Path, n_frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.4, size=(n_frames, *SHAPE)).astype(np.float32)
    hits = np.arange(n_frames) < n_frames // 2
    for i in np.flatnonzero(hits):
        ys, xs = rng.integers(0, SHAPE[0], 40), rng.integers(0, SHAPE[1], 40)
        counts[i, ys, xs] += rng.exponential(20.0, 40).astype(np.float32)
    with h5py.File(path, "w") as h5:
        g = h5.create_group(FEATURES)
        g["counts"] = counts
        g["signal"] = np.zeros_like(counts)
        g["mask_fraction"] = np.ones(SHAPE, np.float32)
        g["has_peaks"] = hits
        g.attrs.update(photon_energy_ev=7000.0, clen_m=0.15, bin_factor=8, dataset=path.stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600, help="frames per synthetic dataset (two datasets)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "train.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        features = {name: tmp / f"{name}.h5" for name in ("a", "b")}
        for seed, path in enumerate(features.values()):
            write_features(path, args.frames, seed)
        split = tmp / "split.csv"
        pd.DataFrame([(d, f, "test" if f % 5 == 0 else "train") for d in features for f in range(args.frames)],
                     columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
        n_train = sum(1 for f in range(args.frames) if f % 5) * len(features)
        devices = [("cpu", 0)] + ([("cuda", 1)] if torch.cuda.is_available() else [])
        for device, gpus in devices:
            config = TrainConfig(attribute="hit", model="hit_fcn", epochs=args.epochs, batch_size=16, seed=1)
            start = time.perf_counter()
            last = train_attribute(config, features, split, tmp / f"{device}.pt", tmp / f"{device}.csv",
                                   threads=os.cpu_count() or 1, gpus=gpus, progress=False)
            seconds = time.perf_counter() - start
            rows.append({"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{os.cpu_count()}",
                         "seconds_per_epoch": seconds / args.epochs, "train_frames_per_s": n_train * args.epochs
                         / seconds, "final_train_loss": last["train_loss"], "test_accuracy": last["test_accuracy"]})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.4g"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": "hit_fcn", "input_shape": [2, *SHAPE], "frames_per_dataset":
                                       args.frames, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
