"""Live throughput: replay full Eiger 4M frames (2167 x 2070 uint32, Poisson water counts, 0.01 photons/pixel by
default, + 40 Bragg-like spots on half of them) over Stream V2 (bslz4) at increasing rates into ``live`` with 1..N
workers.

    python benchmarks/live.py [--workers 2] [--rates 25 50 100 150] [--seconds 6] [--finder peakfinder8]
                              [--water 0.01] [--arm 2] [--replay-nice 0] [--out benchmarks/results/live.json]

The replay runs in its own process (every frame encoded once, before the first message; then each message is a
copy), on the same cores as the workers and the collector: its CPU time and the collector's are reported per row
(``replay_cpu_s``, ``collector_cpu_s``, ``workers_cpu_s``), with the load average before the row
(``load_before``). ``--replay-nice`` lowers its priority. ``--arm``: seconds between the start message and the
first image, as a detector is armed before its trigger (the workers build a detector's look-up tables, ~0.2 s
for a 4M, when the start arrives). Models: tiny hit/photon_energy/clen checkpoints trained
here for one epoch on binned synthetic frames (the throughput does not depend on the weights, only on the hit rate,
which the table reports). A row is ``sustained`` when every offered frame was processed (none skipped or lost)
with p99 latency <= 100 ms. Prints a table and writes the JSON (rows: finder, workers, device, water, offered_hz,
sent_hz, sustained_hz, p50_ms, p99_ms, lost, skipped, processed, hit_rate, cpu times, sustained).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import threading
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import psutil

from cxlspeaks.features import FEATURES, bin_sum
from cxlspeaks.geometry import eiger4m_geometry
from cxlspeaks.live import live, replay
from cxlspeaks.train import TrainConfig, train_attribute

BIN = 8


def frames_4m(n: int, seed: int = 0, water: float = 0.01) -> tuple[np.ndarray, object]:
    geometry = eiger4m_geometry()
    rng = np.random.default_rng(seed)
    ss, fs = geometry.shape
    frames = rng.poisson(water, size=(n, ss, fs)).astype(np.uint32)
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


def _replay_process(endpoint, n_frames, water, rate, count, workers, nice, arm_s, queue) -> None:
    """The replay in its own process; puts (images sent, first..last send seconds, its CPU seconds) on ``queue``."""
    if nice:
        os.nice(nice)
    frames, geometry = frames_4m(n_frames, water=water)
    import sys
    import time

    rp = sys.modules["cxlspeaks.live.replay"]   # (the package's ``replay`` is the function)

    sends = []
    real_image_bytes = rp.image_bytes

    def timed(*args):   # the time of each send, for the rate actually offered
        sends.append(time.monotonic())
        return real_image_bytes(*args)

    rp.image_bytes = timed
    cpu0 = sum(os.times()[:2])
    sent = replay(None, endpoint, frames=frames, geometry=geometry, rate=rate, count=count, wait_peers=workers,
                  arm_s=arm_s)
    queue.put((sent, sends[-1] - sends[0] if len(sends) > 1 else 0.0, sum(os.times()[:2]) - cpu0))


def one_run(models, out, n_frames, water, workers, rate, seconds, finder, port, nice, arm_s) -> dict:
    endpoint = f"tcp://127.0.0.1:{port}"
    spawn = mp.get_context("spawn")
    ready = spawn.Event()
    result = {}
    load = os.getloadavg()[0]
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    thread = threading.Thread(target=lambda: result.update(summary=live(
        endpoint, models, out, workers=workers, finder=finder, ready=ready, max_seconds=seconds + 120)))
    thread.start()
    if not ready.wait(120):
        raise RuntimeError("workers did not connect")
    count = int(rate * seconds)
    queue = spawn.Queue()
    worker_ps = [c for c in psutil.Process().children() if "spawn_main" in " ".join(c.cmdline())]
    cpu0 = {c.pid: sum(c.cpu_times()[:2]) for c in worker_ps}
    cpu1 = dict(cpu0)
    proc = spawn.Process(target=_replay_process, args=(endpoint, n_frames, water, rate, count, workers, nice, arm_s,
                                                              queue))
    proc.start()
    while thread.is_alive():   # the workers' CPU time while the replay runs and they drain (last reading each)
        for c in worker_ps:
            try:
                cpu1[c.pid] = sum(c.cpu_times()[:2])
            except psutil.Error:
                pass
        thread.join(0.05)
    sent, span, replay_cpu = queue.get(timeout=600)
    proc.join()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    s = result["summary"]
    p99 = s["latency_p99_ms"] or 0
    return {"finder": finder, "workers": workers, "device": "cpu", "water": water, "offered_hz": rate,
            "sent_hz": round((sent - 1) / span, 1) if span else None,
            "sustained_hz": round(s["frames_per_s"] or 0.0, 1), "p50_ms": round(s["latency_p50_ms"] or 0, 1),
            "p99_ms": round(p99, 1), "lost": s["frames_lost"], "skipped": s["frames_skipped"],
            "processed": s["frames_processed"], "hit_rate": s["hit_rate"],
            "replay_cpu_s": round(replay_cpu, 2), "workers_cpu_s": round(sum(cpu1.values()) - sum(cpu0.values()), 2),
            "collector_cpu_s": round((self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime), 2),
            "run_s": round(count / rate, 2), "load_before": round(load, 2),
            "sustained": bool(s["frames_processed"] == count and not s["frames_lost"] and not s["frames_skipped"]
                              and p99 <= 100.0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100, 150])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--finder", nargs="+", default=["peakfinder8"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--water", type=float, default=0.01, help="photons per pixel")
    p.add_argument("--replay-nice", type=int, default=0)
    p.add_argument("--arm", type=float, default=2.0, help="seconds between the start message and the first image")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "live.json")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames, geometry = frames_4m(args.frames, water=args.water)
        models = train_models(root, frames, geometry)
        del frames
        port = 40000 + os.getpid() % 20000
        for finder in args.finder:
            for workers in args.workers:
                for rate in args.rates:
                    row = one_run(models, root / f"run_{finder}_{workers}_{rate:g}", args.frames, args.water,
                                  workers, rate, args.seconds, finder, port, args.replay_nice, args.arm)
                    port += 1
                    rows.append(row)
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                    shutil.rmtree(root / f"run_{finder}_{workers}_{rate:g}", ignore_errors=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    args.out.write_text(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores",
                                    "replay_nice": args.replay_nice, "seconds": args.seconds, "arm_s": args.arm,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
