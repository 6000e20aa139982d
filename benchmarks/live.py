"""Live throughput: replay full Eiger 4M frames (2167 x 2070, water-level Poisson counts + a few Bragg-like
spots on half of them) over Stream V2 (bslz4) at increasing rates into ``live`` with 1..N workers.

    python benchmarks/live.py [--workers 2] [--rates 10 25 50 100] [--seconds 4] [--finder peakfinder8]

Models: tiny hit/photon_energy/clen checkpoints trained here for one epoch on binned synthetic frames (the
throughput does not depend on the weights, only on the hit rate, which the table reports). Prints a table and
writes benchmarks/results/live.json (rows: finder, workers, device, offered_hz, sustained_hz, p50_ms, p99_ms,
lost, skipped, hit_rate).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cxlspeaks.features import FEATURES, bin_sum
from cxlspeaks.geometry import eiger4m_geometry
from cxlspeaks.live import live, replay
from cxlspeaks.train import TrainConfig, train_attribute

BIN = 8


def frames_4m(n: int, seed: int = 0) -> tuple[np.ndarray, object]:
    geometry = eiger4m_geometry()
    rng = np.random.default_rng(seed)
    ss, fs = geometry.shape
    frames = rng.poisson(0.05, size=(n, ss, fs)).astype(np.uint32)
    for i in range(0, n, 2):
        for _ in range(40):
            y, x = rng.integers(5, ss - 5), rng.integers(5, fs - 5)
            frames[i, y - 1:y + 2, x - 1:x + 2] += rng.poisson(8, size=(3, 3)).astype(np.uint32)
    frames[:, ~geometry.mask] = 0
    return frames, geometry


def train_models(root: Path, frames: np.ndarray, geometry) -> Path:
    counts = bin_sum(frames.astype(np.float32), BIN)
    features, rows = {}, []
    for d, (energy, clen) in enumerate(((7000.0, 0.15), (8000.0, 0.2))):
        path = root / f"f{d}.h5"
        with h5py.File(path, "w") as h5:
            g = h5.create_group(FEATURES)
            g["counts"], g["signal"] = counts, np.zeros_like(counts)
            g["mask_fraction"] = bin_sum(geometry.mask.astype(np.float32), BIN) / BIN ** 2
            g["radius_m"] = np.full(counts.shape[1:], 0.01, np.float32)
            g["has_peaks"] = np.arange(len(counts)) % 2 == 0
            g.attrs.update(photon_energy_ev=energy, clen_m=clen, bin_factor=BIN, dataset=f"d{d}")
        features[f"d{d}"] = path
        rows += [(f"d{d}", f, "test" if f == 0 else "train") for f in range(len(counts))]
    split = root / "split.csv"
    pd.DataFrame(rows, columns=["dataset", "frame", "subset"]).to_csv(split, index=False)
    models = root / "models"
    for attribute, model, target, loss in (("hit", "hit_fcn", "has_peaks", "bce"),
                                           ("photon_energy", "paper_linear", "photon_energy_ev", "ce"),
                                           ("clen", "paper_linear", "clen_m", "ce")):
        (models / attribute).mkdir(parents=True)
        train_attribute(TrainConfig(attribute=attribute, model=model, target=target, loss=loss, epochs=1,
                                    batch_size=4), features, split, models / attribute / "checkpoint.pt",
                        root / f"{attribute}.csv", progress=False)
    return models


def one_run(models, out, frames, geometry, workers, rate, seconds, finder, port) -> dict:
    endpoint = f"tcp://127.0.0.1:{port}"
    ready = mp.get_context("spawn").Event()
    result = {}
    thread = threading.Thread(target=lambda: result.update(summary=live(
        endpoint, models, out, workers=workers, finder=finder, ready=ready, max_seconds=seconds + 120,
        hits_per_cxi=1000)))
    thread.start()
    if not ready.wait(120):
        raise RuntimeError("workers did not connect")
    replay(None, endpoint, frames=frames, geometry=geometry, rate=rate, count=int(rate * seconds),
           wait_peers=workers)
    thread.join()
    s = result["summary"]
    return {"finder": finder, "workers": workers, "device": "cpu", "offered_hz": rate,
            "sustained_hz": round(s["frames_per_s"] or 0.0, 1), "p50_ms": round(s["latency_p50_ms"] or 0, 1),
            "p99_ms": round(s["latency_p99_ms"] or 0, 1), "lost": s["frames_lost"], "skipped": s["frames_skipped"],
            "processed": s["frames_processed"], "hit_rate": s["hit_rate"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rates", type=float, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--finder", default="peakfinder8")
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames, geometry = frames_4m(args.frames)
        models = train_models(root, frames, geometry)
        port = 40000 + os.getpid() % 20000
        for workers in range(1, args.workers + 1):
            for rate in args.rates:
                row = one_run(models, root / f"run_{workers}_{rate:g}", frames, geometry, workers, rate,
                              args.seconds, args.finder, port)
                port += 1
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    out = Path(__file__).parent / "results" / "live.json"
    out.write_text(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores", "rows": rows}, indent=2)
                   + "\n")


if __name__ == "__main__":
    main()
