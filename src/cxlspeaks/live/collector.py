"""The live collector's records: frames.csv, the hits as rolling CXI files + hits.lst, summary.json, and the state
the web monitor shows.

RUN_DIR/frames.csv: one row per frame taken from the detector, written (and flushed) when its fate is known:
``frame`` (arrival order in this run), ``event`` ("series //image"), ``series_id``, ``image_id``, ``status``
(processed | skipped: older than the age limit when its turn came | lost: its worker died, or never received
from a series that ended | stray: no start message | error), ``worker``, the ``cxlspeaks run`` columns
``hit_probability, is_hit, photon_energy_ev, photon_energy_probability, clen_m, clen_probability, n_peaks``, and
``n_saturated``, ``latency_ms`` (worker receive -> result, ms).
RUN_DIR/hits_NNNN.cxi: ``hits_per_cxi`` hits each, the peaks in /entry_1/result_1 (CXI, raw convention) and the
frames themselves in /entry/data/data (a stream has no file to link to; bitshuffle-LZ4, one chunk per frame, the
detector's own compressed bytes when it sent ``bslz4``: readers need the HDF5 filter, ``import hdf5plugin`` or, for
CrystFEL, ``HDF5_PLUGIN_PATH``) and their events in /entry_1/result_1/event; RUN_DIR/hits.lst lists each hit
(``/abs/hits_NNNN.cxi //row``) once its file is complete, RUN_DIR/hits.geom reads them
(``indexamajig -i hits.lst -g hits.geom --peaks=cxi``).
RUN_DIR/summary.json: frames received / processed / skipped / lost / stray, hits, hit rate, frames/s,
latency p50/p99 (ms), per series.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLUMNS = ("frame", "event", "series_id", "image_id", "status", "worker", "hit_probability", "is_hit",
           "photon_energy_ev", "photon_energy_probability", "clen_m", "clen_probability", "n_peaks",
           "n_saturated", "latency_ms")
POWDER_BINS = 128


@dataclass
class Series:
    """Bookkeeping of one series: what was received, what is still in flight (image id -> worker)."""

    series_id: int
    info: object = None
    seen: set = field(default_factory=set)
    written: set = field(default_factory=set)
    inflight: dict = field(default_factory=dict)
    ended: bool = False
    done_workers: set = field(default_factory=set)
    closed: bool = False


class Collector:
    """Writes the run's files; thread-safe ``monitor_state()`` for the web monitor.

    Args:
        out: RUN_DIR (created).
        geometry: the detector for hits.geom (None: from the first start message).
        hits_per_cxi: hits per CXI file (>= 1).
    """

    def __init__(self, out: str | Path, geometry=None, hits_per_cxi: int = 100):
        if hits_per_cxi < 1:
            raise ValueError(f"hits_per_cxi must be >= 1, got {hits_per_cxi}")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.geometry, self.hits_per_cxi = geometry, hits_per_cxi
        self.lock = threading.Lock()
        self._csv_file = open(self.out / "frames.csv", "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=COLUMNS, extrasaction="ignore")
        self._csv.writeheader()
        self._csv_file.flush()
        self.series: dict[int, Series] = {}
        self.counts = {"processed": 0, "skipped": 0, "lost": 0, "stray": 0, "error": 0}
        self.stray_messages = 0
        self.n_rows = 0
        self.hits = 0
        self.latencies: list[float] = []
        self.t_first = self.t_last = None
        self.started = time.time()
        self._hit_buffer: list = []
        self._cxi_index = 0
        self._lst_lines: list[str] = []
        self.timeline: deque = deque(maxlen=600)   # (t, processed, hits, peaks, saturated, lost) per second
        self._bucket = None
        self.latest_hit: dict | None = None
        self.powder = np.zeros((POWDER_BINS, POWDER_BINS), np.int64)
        self.energies: deque = deque(maxlen=1000)
        self.clens: deque = deque(maxlen=1000)
        self.saturated_frames = 0

    # ------------------------------------------------------------------ series
    def get(self, series_id: int) -> Series:
        return self.series.setdefault(int(series_id), Series(int(series_id)))

    def start(self, info) -> None:
        with self.lock:
            self.get(info.series_id).info = info
            if self.geometry is None:
                try:
                    self.geometry = info.geometry()
                except ValueError:
                    pass

    def received(self, series_id: int, image_id: int, worker: int) -> None:
        s = self.get(series_id)
        s.seen.add(int(image_id))
        s.inflight[int(image_id)] = worker

    def stray(self, reason: str) -> None:
        with self.lock:
            self.stray_messages += 1

    def worker_lost(self, worker: int) -> int:
        """Record every frame in flight on ``worker`` as lost; returns how many."""
        n = 0
        for s in self.series.values():
            for image_id in [i for i, w in s.inflight.items() if w == worker]:
                self.result({"series_id": s.series_id, "image_id": image_id, "worker": worker, "status": "lost",
                             "event": f"{s.series_id} //{image_id}"})
                n += 1
        return n

    def close_series(self, series_id: int, count_unseen: bool = True) -> None:
        """Close an ended series: frames still in flight, and (``count_unseen``) image ids below the start's
        number_of_images never received by any worker, are recorded as lost."""
        s = self.get(series_id)
        if s.closed:
            return
        for image_id, worker in list(s.inflight.items()):
            self.result({"series_id": series_id, "image_id": image_id, "worker": worker, "status": "lost",
                         "event": f"{series_id} //{image_id}"})
        n = getattr(s.info, "number_of_images", None) if s.info is not None else None
        if count_unseen and n:
            for image_id in sorted(set(range(int(n))) - s.seen):
                s.seen.add(image_id)
                self.result({"series_id": series_id, "image_id": image_id, "worker": -1, "status": "lost",
                             "event": f"{series_id} //{image_id}"})
        s.closed = True

    # ------------------------------------------------------------------ results
    def result(self, r: dict) -> None:
        """One frame's fate (a worker's result dict, or lost/stray made here): row in frames.csv + statistics."""
        with self.lock:
            s = self.get(r["series_id"])
            image_id = int(r["image_id"])
            s.inflight.pop(image_id, None)
            s.seen.add(image_id)
            if image_id in s.written:
                return
            s.written.add(image_id)
            status = r.get("status", "processed")
            self.counts[status] = self.counts.get(status, 0) + 1
            row = {k: r.get(k, "") for k in COLUMNS}
            row["frame"] = self.n_rows
            for k in ("hit_probability", "photon_energy_ev", "photon_energy_probability", "clen_m",
                      "clen_probability", "n_peaks", "latency_ms"):
                if isinstance(row[k], float) and np.isnan(row[k]):
                    row[k] = ""
            self.n_rows += 1
            self._csv.writerow(row)
            self._csv_file.flush()
            now = time.time()
            if status == "processed":
                self.t_first = self.t_first or now
                self.t_last = now
                self.latencies.append(float(r["latency_ms"]))
                self.saturated_frames += int(r.get("n_saturated", 0) > 0)
            self._tick(now, status, r)
            if r.get("is_hit") and "peaks" in r:
                self.hits += 1
                self.energies.append(r.get("photon_energy_ev"))
                self.clens.append(r.get("clen_m"))
                self._hit(r)

    def _tick(self, now: float, status: str, r: dict) -> None:
        second = int(now)
        if self._bucket is None or self._bucket[0] != second:
            self._bucket = [second, 0, 0, 0, 0, 0]
            self.timeline.append(self._bucket)
        b = self._bucket
        if status == "processed":
            b[1] += 1
            b[2] += int(bool(r.get("is_hit")))
            b[3] += int(r.get("n_peaks") or 0) if r.get("is_hit") else 0
            b[4] += int(r.get("n_saturated", 0) > 0)
        elif status == "lost":
            b[5] += 1

    def _hit(self, r: dict) -> None:
        peaks = r["peaks"]
        frame = r["frame"] if hasattr(r["frame"], "payload") else np.asarray(r["frame"])   # bslz4 as sent
        self.latest_hit = {"event": r["event"], "frame": frame, "peaks": peaks, "n_peaks": int(r["n_peaks"]),
                           "hit_probability": float(r["hit_probability"]), "serial": self.hits}
        ss, fs = frame.shape
        h, _, _ = np.histogram2d(peaks["ss"], peaks["fs"], bins=POWDER_BINS, range=[[0, ss], [0, fs]])
        self.powder += h.astype(np.int64)
        self._hit_buffer.append((r["event"], frame, peaks))
        if len(self._hit_buffer) >= self.hits_per_cxi:
            self._write_cxi()

    def _write_cxi(self) -> None:
        import pandas as pd

        import h5py

        from ..cxi import geometry_with_peak_list, write_cxi_peaks
        from ..io import DATA, atomic_write_text, create_frame_stack

        if not self._hit_buffer:
            return
        path = (self.out / f"hits_{self._cxi_index:04d}.cxi").resolve()
        tables = [pd.DataFrame(p) for _, _, p in self._hit_buffer]
        frames = [f for _, f, _ in self._hit_buffer]
        events = np.array([e.encode() for e, _, _ in self._hit_buffer])
        # the frames as bitshuffle-LZ4 chunks, one per frame: the detector's own bytes where it sent them so
        part = path.with_name(path.name + ".part")
        write_cxi_peaks(part, tables, extra={"event": events})
        with h5py.File(part, "a") as h5:
            first = frames[0]
            stack = create_frame_stack(h5, DATA, len(frames), tuple(first.shape), first.dtype)
            for i, f in enumerate(frames):
                if hasattr(f, "payload") and f.shape == tuple(first.shape) and f.dtype == first.dtype:
                    stack.id.write_direct_chunk((i, 0, 0), f.payload.payload)
                else:
                    stack[i] = f.array() if hasattr(f, "payload") else f
        os.replace(part, path)
        self._lst_lines += [f"{path} //{r}\n" for r in range(len(tables))]
        atomic_write_text(self.out / "hits.lst", "".join(self._lst_lines))
        if self._cxi_index == 0 and self.geometry is not None:
            detector = self.geometry.replace_panels(data=DATA, dims=("%", "ss", "fs"))
            atomic_write_text(self.out / "hits.geom", geometry_with_peak_list(detector.to_geom_text()))
        self._cxi_index += 1
        self._hit_buffer = []

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict:
        """The run's totals (frames, rates, latency percentiles in ms)."""
        lat = np.asarray(self.latencies, float)
        elapsed = (self.t_last - self.t_first) if self.t_first and self.t_last and self.t_last > self.t_first \
            else None
        processed = self.counts["processed"]
        return {
            "frames_received": int(sum(len(s.seen) for s in self.series.values())),
            "frames_processed": processed, "frames_skipped": self.counts["skipped"],
            "frames_lost": self.counts["lost"], "frames_stray": self.counts["stray"],
            "frames_error": self.counts["error"], "stray_messages": self.stray_messages,
            "hits": self.hits, "hit_rate": self.hits / processed if processed else None,
            "frames_per_s": (processed - 1) / elapsed if elapsed else None,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "saturation_rate": self.saturated_frames / processed if processed else None,
            "photon_energy_ev_mean": _mean(self.energies), "photon_energy_ev_std": _std(self.energies),
            "clen_m_mean": _mean(self.clens), "clen_m_std": _std(self.clens),
            "series": {str(k): {"received": len(s.seen), "ended": s.ended, "closed": s.closed,
                                "number_of_images": getattr(s.info, "number_of_images", None)}
                       for k, s in self.series.items()},
            "cxi_files": self._cxi_index, "run_seconds": time.time() - self.started,
            "stop_reason": getattr(self, "stop_reason", None),
        }

    def write_summary(self) -> dict:
        from ..io import atomic_write_text

        with self.lock:
            summary = self.summary()
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> dict:
        """Write the last CXI file, the summary; close frames.csv."""
        with self.lock:
            self._write_cxi()
        summary = self.write_summary()
        self._csv_file.close()
        return summary

    def monitor_state(self) -> dict:
        """JSON-able state for the web page: the summary plus per-second timelines."""
        with self.lock:
            state = self.summary()
            state["timeline"] = [{"t": b[0], "frames": b[1], "hits": b[2], "peaks": b[3], "saturated": b[4],
                                  "lost": b[5]} for b in self.timeline]
            hit = self.latest_hit
            state["latest_hit"] = None if hit is None else {k: hit[k] for k in ("event", "n_peaks",
                                                                               "hit_probability", "serial")}
        return state


def _mean(values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return float(v.mean()) if v.size else None


def _std(values):
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    return float(v.std()) if v.size else None
