"""A live worker process: PULL frames from the detector, score them, PUSH results to the collector.

Each worker connects its own ZeroMQ PULL socket to the DCU (which deals every message to one client,
round-robin), so a series' ``start`` and ``end`` reach one worker only: that worker forwards them to the
collector, which broadcasts them to every worker (PUB/SUB ``control`` socket); images of a series whose start a
worker has not seen yet wait (and the worker asks the collector for it) until it arrives.

Per image (the chosen channel): the good-pixel mask (geometry x the start's pixel mask x no-data values),
binning as :func:`cxlspeaks.pipeline.run_pipeline` (``features.binned_frames``, ``mask_fraction``), the
:class:`~cxlspeaks.pipeline.FramePredictor` (hit probability; photon energy and camera length for hits), for
hits the peaks (``network`` = :class:`~cxlspeaks.peaks.network.NetworkPeakFinder` or ``peakfinder8`` with its
photon-counting setting), and the good saturated pixels. Messages drained from the detector socket are queued with
their arrival time; one older than ``max_age_s`` when its turn comes is reported as ``skipped`` (backpressure
is explicit, never silent). Every image the worker took is first announced (``recv``) so that the collector
can record it as lost if the worker dies.

Messages to the collector are pickled tuples: ``("hello", w, pid)``, ``("hb", w)``, ``("start", w, info)``,
``("end", w, series)``, ``("need", w, series)``, ``("recv", w, series, image_id)``, ``("result", w, dict)``,
``("stray", w, reason)``, ``("done", w, series)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ATTRIBUTES = ("hit", "photon_energy", "clen")


class FrameScorer:
    """Models and finder of one worker.

    ``score_raw(info, image_id, raw, static_good, geometry)`` is the worker's path: it reads a sparse
    photon-counting frame through its non-zero pixels only (one pass to find them; binning, saturation count and
    peakfinder8's statistics from them; the hit model through :class:`~cxlspeaks.live.predict.LivePredictor`) and
    gives the result of ``score(make_frame(...), geometry)``, the reference path that scores a
    :class:`~cxlspeaks.sources.base.Frame` as :func:`cxlspeaks.pipeline.run_pipeline` does (``binned_frames``,
    ``FramePredictor.predict``); frames it cannot treat so (non-integer data, marker values inside the good
    pixels, a saturation value <= 0) take that path.
    """

    def __init__(self, models: str | Path, finder: str = "peakfinder8", threshold: float = 0.5,
                 threads: int = 1, peak_device: str | None = None):
        """``peak_device``: None runs the peak network with :class:`~cxlspeaks.peaks.network.NetworkPeakFinder`
        on this process's CPU threads; a torch device ("cuda", "cuda:1", "cpu") runs it through
        :class:`~cxlspeaks.peaks.batched.BatchedPeakPipeline` there (float16 on CUDA), the same peaks."""
        import torch

        from ..pipeline import FramePredictor
        from .predict import LivePredictor

        torch.set_num_threads(max(1, threads))
        models = Path(models)
        self.predictor = FramePredictor({a: models / a / "checkpoint.pt" for a in ATTRIBUTES}, threshold)
        self.live = LivePredictor(self.predictor)
        if finder == "network" and peak_device is not None:
            from ..peaks.batched import BatchedPeakPipeline

            dtype = "float16" if str(peak_device).startswith("cuda") else "float32"
            batched = BatchedPeakPipeline(models / "peaks" / "checkpoint.pt", device=peak_device, dtype=dtype,
                                          batch_size=1, decode_threads=1)
            self._network_find = lambda counts, good: batched.find(counts[None], good)[0]
        elif finder == "network":
            from ..peaks.network import NetworkPeakFinder

            self._network_find = NetworkPeakFinder(models / "peaks" / "checkpoint.pt", threads=threads).find
        elif finder != "peakfinder8":
            raise ValueError(f"unknown finder {finder!r} (network or peakfinder8)")
        self.finder = finder
        self._prepared: dict = {}
        self._by_id: dict = {}         # (id(geometry), id(good)) -> (geometry, good, prepared)
        self._by_content: dict = {}    # (geometry text, shape, mask digest) -> prepared

    def _make(self, geometry, good: np.ndarray):
        from ..features import mask_fraction

        pf8 = None
        if self.finder == "peakfinder8":
            from ..frames import panel_index
            from ..peaks.peakfinder8 import PHOTON_COUNTING, Peakfinder8

            pf8 = Peakfinder8(radius_px(geometry), good, PHOTON_COUNTING, panel_index(geometry))
        return mask_fraction(good, self.predictor.bin_factor), pf8

    def _prepare(self, geometry, good: np.ndarray):
        key = (id(geometry), good.tobytes().__hash__())
        if key not in self._prepared:
            self._prepared = {key: self._make(geometry, good)}
        return self._prepared[key]

    def score(self, frame, geometry) -> tuple[dict, object]:
        """Scores of one :class:`~cxlspeaks.sources.base.Frame`; the peak table (fs, ss, photons, snr) of a hit
        or None."""
        from ..features import binned_frames

        binned_mask, pf8 = self._prepare(geometry, frame.good)
        binned = binned_frames(frame.counts[None], frame.good, self.predictor.bin_factor)
        row = self.predictor.predict(binned, binned_mask, geometry=geometry).iloc[0].to_dict()
        peaks = None
        if row["is_hit"]:
            peaks = pf8.find(frame.counts) if pf8 is not None else self._network_find(frame.counts, frame.good)
        row["n_peaks"] = len(peaks) if peaks is not None else np.nan
        row["n_saturated"] = frame.n_saturated
        row["is_hit"] = bool(row["is_hit"])
        return row, peaks

    def prepare(self, geometry, good: np.ndarray) -> tuple:
        """(binned mask, peakfinder8, flat good, bin index, binned shape) of a series' static good mask: made once
        per distinct detector and mask (a new series of the same detector reuses them), looked up by identity."""
        from ..features import bin_index

        known = self._by_id.get((id(geometry), id(good)))
        if known is not None and known[0] is geometry and known[1] is good:
            return known[2]
        try:
            key = (geometry.to_geom_text(), good.shape, hashlib.blake2b(good.tobytes()).digest())
        except Exception:      # a detector without a text form: by identity only
            key = (id(geometry), id(good))
        entry = self._by_content.get(key)
        if entry is None:
            binned_mask, pf8 = self._make(geometry, good)
            f = self.predictor.bin_factor
            shape = (-(-good.shape[0] // f), -(-good.shape[1] // f))
            flat = good.ravel()
            bins = np.where(flat, bin_index(good.shape, f), shape[0] * shape[1]).astype(np.int32)  # masked: past
            entry = (binned_mask, pf8, flat, bins, shape)
            if len(self._by_content) >= 4:
                self._by_content.pop(next(iter(self._by_content)))
            self._by_content[key] = entry
        if len(self._by_id) >= 16:
            self._by_id.clear()
        self._by_id[(id(geometry), id(good))] = (geometry, good, entry)
        return entry

    def score_raw(self, info, image_id: int, raw: np.ndarray, static_good: np.ndarray, geometry
                  ) -> tuple[dict, object]:
        """``score(make_frame(info, image_id, raw, static_good), geometry)``, from the non-zero pixels."""
        from ..features import binned_frames, binned_sparse
        from ..sources.messages import make_frame

        raw = np.asarray(raw)
        sat = info.saturation_value
        if raw.dtype.kind not in "ui" or raw.shape != static_good.shape or (sat is not None and sat <= 0):
            return self.score(make_frame(info, image_id, raw, static_good), geometry)
        flat = raw.ravel()
        nz = np.flatnonzero(flat != 0)
        values = flat[nz]
        binned_mask, pf8, good, bins, shape = self.prepare(geometry, static_good)
        top = np.iinfo(raw.dtype).max
        if sat is None or sat < top:       # make_frame masks the no-data marker: only outside the good pixels here
            if good[nz[values == top]].any():
                return self.score(make_frame(info, image_id, raw, static_good), geometry)
        n_saturated = int(np.count_nonzero(good[nz[values >= sat]])) if sat is not None else 0
        binned = binned_sparse(bins[nz], values, shape)    # masked pixels map past the last bin
        if binned is None:
            binned = binned_frames(raw[None], static_good, self.predictor.bin_factor)[0]
        row = self.live.predict(binned[None], binned_mask, geometry)[0]
        peaks = None
        if row["is_hit"]:
            exact = values.size == 0 or (values.max() <= 2 ** 24 and values.min() >= -2 ** 24)
            if pf8 is not None and exact:  # float32 counts hold these values exactly: read them as they are
                peaks = pf8.find(raw, nonzero=(nz, values))
            elif pf8 is not None:
                peaks = pf8.find(raw.astype(np.float32))
            else:
                peaks = self._network_find(raw.astype(np.float32), static_good)
        row["n_peaks"] = len(peaks) if peaks is not None else np.nan
        row["n_saturated"] = n_saturated
        return row, peaks


def radius_px(geometry) -> np.ndarray:
    """:func:`cxlspeaks.frames.radius_px`, the same float64 numbers, panel by panel, without the detector's
    (ss, fs, 3) pixel-position array (the same operations in the same order on its x and y components)."""
    out = np.full(geometry.shape, np.nan)
    for p in geometry.panels:
        u = np.arange(p.n_fs) + 0.5
        v = np.arange(p.n_ss) + 0.5
        corner, fs, ss = p.corner_m(), p.fs_m(), p.ss_m()
        x = corner[0] + u[None, :] * fs[0] + v[:, None] * ss[0]
        y = corner[1] + u[None, :] * fs[1] + v[:, None] * ss[1]
        out[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = np.hypot(x, y) * np.float64(p.res)
    return out


def keep_memory(prefault_mb: int = 0) -> None:
    """Keep freed memory in this process (glibc: no trimming, large blocks from the heap) and touch
    ``prefault_mb`` MiB of it now: each frame's buffers (18 MB counts for a 4M Eiger) then reuse pages instead of
    faulting in new ones, which costs more than the frame's arithmetic on some virtual machines. No-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 31)   # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return
    if prefault_mb > 0:
        np.ones(prefault_mb << 20, np.uint8)   # touched, freed, kept


def _as_sent(encoded, raw: np.ndarray):
    """A hit's frame for the collector: the detector's own bitshuffle-LZ4 bytes when they are one HDF5 chunk of
    the (ss, fs) frame (the collector writes them as they are, ~30x smaller than the counts), else the counts."""
    from ..sources.messages import Compressed, EncodedArray

    if (isinstance(encoded, EncodedArray) and type(encoded.payload) is Compressed
            and encoded.payload.algorithm == "bslz4" and encoded.payload.elem_size == raw.dtype.itemsize
            and encoded.shape == raw.shape and not encoded.column_major and encoded.dtype == raw.dtype):
        return encoded
    return raw


def check_device_name(device: str) -> None:
    """ValueError (one line) unless ``device`` is "auto", "cpu" or "cuda[:N]" (no torch import: the collector
    checks the option before it starts the workers)."""
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda[:N])")


def peak_device(device: str) -> str | None:
    """The torch device of the peak network for ``--device``: "auto" is CUDA when torch sees a GPU, else None
    (the CPU finder); "cpu" is None; "cuda" (or "cuda:N") must exist (ValueError otherwise)."""
    import torch

    check_device_name(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    if device == "cpu":
        return None
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    return device


def worker_main(index: int, config: dict) -> None:
    """Entry point of worker ``index`` (a spawned process). ``config``: connect, protocol, channel, collector,
    control, models, geometry (path or None), finder, max_age_s, heartbeat_s, threads."""
    import zmq

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the collector's; it stops the workers
    logging.basicConfig(level=logging.WARNING, format=f"worker {index}: %(message)s")
    ctx = zmq.Context()
    out = ctx.socket(zmq.PUSH)
    out.connect(config["collector"])
    send = out.send_pyobj
    keep_memory(config.get("prefault_mb", 512))
    try:
        scorer = FrameScorer(config["models"], config["finder"], threads=config.get("threads", 1),
                             peak_device=peak_device(config.get("device", "auto")))
        geometry_file = None
        if config.get("geometry"):
            from ..geometry import read_geometry

            geometry_file = read_geometry(config["geometry"])
    except Exception as exc:
        send(("fatal", index, f"{type(exc).__name__}: {exc}"))
        out.close(linger=2000)
        return
    ctl = ctx.socket(zmq.SUB)
    ctl.setsockopt(zmq.SUBSCRIBE, b"")
    ctl.connect(config["control"])
    det = ctx.socket(zmq.PULL)
    det.setsockopt(zmq.RCVHWM, config.get("rcvhwm", 1000))
    det.connect(config["connect"])
    send(("hello", index, os.getpid()))
    Worker(index, config, scorer, geometry_file, det, ctl, send).loop()
    for s in (det, ctl):
        s.close(linger=0)
    out.close(linger=5000)
    ctx.term()


class Worker:
    """The state and main loop of one worker (see the module docstring)."""

    def __init__(self, index, config, scorer, geometry_file, det, ctl, send):
        from ..sources.stream1 import parse_v1
        from ..sources.stream2 import parse_v2

        self.index, self.config, self.scorer, self.send = index, config, scorer, send
        self.geometry_file, self.det, self.ctl = geometry_file, det, ctl
        self.parse = (lambda s: parse_v2(s.recv())) if config["protocol"] == "stream2" else \
            (lambda s: parse_v1(s.recv_multipart()))
        self.series: dict = {}          # series id -> (info, geometry, static good)
        self.queue: deque = deque()     # (t_received, Image) ready to score
        self.pending: dict = {}         # series id -> [(t_received, Image)] waiting for the start
        self.asked: dict = {}           # series id -> time the collector was last asked for the start
        self.ending: dict = {}          # series id -> time of the last detector message since its end
        self.stop = False

    def learn(self, info) -> None:
        from ..sources.messages import StreamError

        if info.series_id in self.series:
            return
        try:
            geometry = self.geometry_file or info.geometry()
            good = info.static_good(geometry.mask, self.config["channel"])
        except (StreamError, ValueError) as exc:
            self.send(("stray", self.index, f"series {info.series_id}: {exc}"))
            geometry, good = None, None
        self.series[info.series_id] = (info, geometry, good)
        if good is not None:   # the detector's look-up tables now, before its first image
            try:
                self.scorer.prepare(geometry, good)
            except ValueError as exc:   # the first image reports it
                log.warning("series %s: %s", info.series_id, exc)
        self.queue.extend(self.pending.pop(info.series_id, []))

    def receive(self) -> None:
        import zmq

        from ..sources.messages import End, Image, Start

        while self.ctl.poll(0):
            message = self.ctl.recv_pyobj()
            if message[0] == "start":
                self.learn(message[1])
            elif message[0] == "end":
                self.ending.setdefault(message[1], time.monotonic())
            elif message[0] == "stop":
                self.stop = True
        for _ in range(1000):
            if not self.det.poll(0, zmq.POLLIN):
                break
            now = time.monotonic()
            event = self.parse(self.det)
            for series in self.ending:
                self.ending[series] = now
            if isinstance(event, Image):
                self.send(("recv", self.index, event.series_id, event.image_id))
                if event.series_id in self.series:
                    self.queue.append((now, event))
                else:
                    self.pending.setdefault(event.series_id, []).append((now, event))
            elif isinstance(event, Start):
                self.learn(event.info)
                self.send(("start", self.index, event.info))
            elif isinstance(event, End):
                self.send(("end", self.index, event.series_id))
            else:
                self.send(("stray", self.index, event.reason))

    def process(self, t_received: float, image) -> None:
        from ..sources.messages import StreamError

        info, geometry, good = self.series[image.series_id]
        base = {"series_id": image.series_id, "image_id": image.image_id, "worker": self.index,
                "event": f"{image.series_id} //{image.image_id}"}
        if time.monotonic() - t_received > self.config["max_age_s"]:
            base.update(status="skipped", latency_ms=(time.monotonic() - t_received) * 1e3)
            self.send(("result", self.index, base))
            return
        try:
            if geometry is None:
                raise StreamError(f"series {image.series_id}: no usable detector description")
            raw = image.channel(self.config["channel"])
            row, peaks = self.scorer.score_raw(info, image.image_id, raw, good, geometry)
        except (StreamError, ValueError) as exc:
            base.update(status="error", error=str(exc).splitlines()[0],
                        latency_ms=(time.monotonic() - t_received) * 1e3)
            self.send(("result", self.index, base))
            return
        base.update(row, status="processed", latency_ms=(time.monotonic() - t_received) * 1e3)
        if peaks is not None:
            base["peaks"] = {c: peaks[c].to_numpy() for c in ("fs", "ss", "photons", "snr") if c in peaks}
            base["frame"] = _as_sent(image.data[self.config["channel"]], raw)
        self.send(("result", self.index, base))

    def loop(self) -> None:
        last_beat = 0.0
        while not self.stop:
            now = time.monotonic()
            if now - last_beat >= self.config.get("heartbeat_s", 0.5):
                self.send(("hb", self.index))
                last_beat = now
            self.receive()
            if self.queue:
                self.process(*self.queue.popleft())
                continue
            for series, since in list(self.pending.items()):
                if now - self.asked.get(series, 0.0) > 0.5:
                    self.send(("need", self.index, series))
                    self.asked[series] = now
                if now - since[0][0] > self.config.get("start_wait_s", 10.0):
                    for _, image in self.pending.pop(series):
                        self.send(("result", self.index, {
                            "series_id": series, "image_id": image.image_id, "worker": self.index,
                            "event": f"{series} //{image.image_id}", "status": "stray",
                            "error": f"series {series}: no start message arrived"}))
            for series, last in list(self.ending.items()):
                if now - last > self.config.get("drain_s", 0.3) and series not in self.pending:
                    self.send(("done", self.index, series))
                    del self.ending[series]
            import zmq

            zmq.select([self.det, self.ctl], [], [], 0.02)
