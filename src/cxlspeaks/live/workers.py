"""A live worker process: PULL frames from the detector, score them, PUSH results to the collector.

Each worker connects its own ZeroMQ PULL socket to the DCU (which deals every message to one client,
round-robin), so a series' ``start`` and ``end`` reach one worker only: that worker forwards them to the
collector, which broadcasts them to every worker (PUB/SUB ``control`` socket); images of a series whose start a
worker has not seen yet wait (and the worker asks the collector for it) until it arrives.

Per image (the chosen channel): the good-pixel mask (geometry x the start's pixel mask x no-data values),
binning as :func:`cxlspeaks.pipeline.run_pipeline` (``features.binned_frames``, ``mask_fraction``), the
:class:`~cxlspeaks.pipeline.FramePredictor` (hit probability; photon energy and camera length for hits), for
hits the peaks (``network`` = :class:`~cxlspeaks.peaknet.NetworkPeakFinder` or ``peakfinder8`` with its
photon-counting setting), and the good saturated pixels. Messages drained from the detector socket are queued with
their arrival time; one older than ``max_age_s`` when its turn comes is reported as ``skipped`` (backpressure
is explicit, never silent). Every image the worker took is first announced (``recv``) so that the collector
can record it as lost if the worker dies.

Messages to the collector are pickled tuples: ``("hello", w, pid)``, ``("hb", w)``, ``("start", w, info)``,
``("end", w, series)``, ``("need", w, series)``, ``("recv", w, series, image_id)``, ``("result", w, dict)``,
``("stray", w, reason)``, ``("done", w, series)``.
"""

from __future__ import annotations

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
    """Models and finder of one worker; ``score(frame, geometry, static_good)`` -> result dict (+ peaks)."""

    def __init__(self, models: str | Path, finder: str = "peakfinder8", threshold: float = 0.5,
                 threads: int = 1):
        import torch

        from ..pipeline import FramePredictor

        torch.set_num_threads(max(1, threads))
        models = Path(models)
        self.predictor = FramePredictor({a: models / a / "checkpoint.pt" for a in ATTRIBUTES}, threshold)
        if finder == "network":
            from ..peaknet import NetworkPeakFinder

            self.network = NetworkPeakFinder(models / "peaks" / "checkpoint.pt", threads=threads)
        elif finder != "peakfinder8":
            raise ValueError(f"unknown finder {finder!r} (network or peakfinder8)")
        self.finder = finder
        self._prepared: dict = {}

    def _prepare(self, geometry, good: np.ndarray):
        key = (id(geometry), good.tobytes().__hash__())
        if key not in self._prepared:
            from ..features import mask_fraction

            pf8 = None
            if self.finder == "peakfinder8":
                from ..frames import panel_index, radius_px
                from ..peakfinder8 import PHOTON_COUNTING, Peakfinder8

                pf8 = Peakfinder8(radius_px(geometry), good, PHOTON_COUNTING, panel_index(geometry))
            self._prepared = {key: (mask_fraction(good, self.predictor.bin_factor), pf8)}
        return self._prepared[key]

    def score(self, frame, geometry) -> tuple[dict, object]:
        """Scores of one :class:`~cxlspeaks.sources.base.Frame`; the peak table (fs, ss, photons, snr) of a hit
        or None."""
        from ..features import binned_frames

        binned_mask, pf8 = self._prepare(geometry, frame.good)
        binned = binned_frames(frame.counts[None], frame.good, self.predictor.bin_factor)
        row = self.predictor.predict(binned, binned_mask).iloc[0].to_dict()
        peaks = None
        if row["is_hit"]:
            peaks = pf8.find(frame.counts) if pf8 is not None else self.network.find(frame.counts, frame.good)
        row["n_peaks"] = len(peaks) if peaks is not None else np.nan
        row["n_saturated"] = frame.n_saturated
        row["is_hit"] = bool(row["is_hit"])
        return row, peaks


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
    try:
        scorer = FrameScorer(config["models"], config["finder"], threads=config.get("threads", 1))
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
        from ..sources.stream2 import StreamError

        if info.series_id in self.series:
            return
        try:
            geometry = self.geometry_file or info.geometry()
            good = info.static_good(geometry.mask, self.config["channel"])
        except (StreamError, ValueError) as exc:
            self.send(("stray", self.index, f"series {info.series_id}: {exc}"))
            geometry, good = None, None
        self.series[info.series_id] = (info, geometry, good)
        self.queue.extend(self.pending.pop(info.series_id, []))

    def receive(self) -> None:
        import zmq

        from ..sources.stream2 import End, Image, Start

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
        from ..sources.stream2 import StreamError, make_frame

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
            frame = make_frame(info, image.image_id, raw, good)
            row, peaks = self.scorer.score(frame, geometry)
        except (StreamError, ValueError) as exc:
            base.update(status="error", error=str(exc).splitlines()[0],
                        latency_ms=(time.monotonic() - t_received) * 1e3)
            self.send(("result", self.index, base))
            return
        base.update(row, status="processed", latency_ms=(time.monotonic() - t_received) * 1e3)
        if peaks is not None:
            base["peaks"] = {c: peaks[c].to_numpy() for c in ("fs", "ss", "photons", "snr") if c in peaks}
            base["frame"] = raw
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
