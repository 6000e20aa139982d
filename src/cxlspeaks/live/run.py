"""``live``: score the Eiger stream as it comes, with N worker processes and one collector (this process).

Workers (:mod:`cxlspeaks.live.workers`) each PULL from the detector endpoint and PUSH results to the collector's
PULL socket; the collector PUBlishes control messages (a series' start info, its end, stop) to every worker.
The run ends when a series' ``end`` has arrived and every live worker has drained its frames of that series
(``stop_after_end``), or on Ctrl-C (SIGINT), or after ``max_seconds``; the summary is written in every case.
A worker that dies (process sentinel) or stops sending heartbeats for ``heartbeat_timeout_s`` is dropped and its
in-flight frames are recorded as lost.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from pathlib import Path

from .collector import Collector
from .workers import check_device_name, worker_main

log = logging.getLogger(__name__)


def live(connect: str, models: str | Path, out: str | Path, workers: int = 2, geometry: str | Path | None = None,
         finder: str = "peakfinder8", http: str | None = None, channel: str = "threshold_1",
         protocol: str = "stream2", max_age_s: float = 2.0, hits_per_cxi: int = 100,
         heartbeat_timeout_s: float = 10.0, stop_after_end: bool = True, max_seconds: float | None = None,
         ready: "mp.Event | None" = None, threads_per_worker: int = 1, prefault_mb: int = 512,
         device: str = "auto") -> dict:
    """Run the live analysis; returns the summary (also RUN_DIR/summary.json).

    Args:
        connect: the detector's stream endpoint, e.g. ``tcp://dcu:31001``.
        models: folder with hit/, photon_energy/, clen/ (and peaks/ for ``finder="network"``) checkpoint.pt.
        out: RUN_DIR.
        workers: worker processes (>= 1).
        geometry: CrystFEL geometry file (default: a single panel from the start message).
        http: ``HOST:PORT`` of the web monitor (None: none).
        max_age_s: a frame waiting longer than this in a worker is skipped (s).
        ready: set once every worker is connected (tests, benchmarks).
        device: where the peak network runs (``finder="network"``): "auto" (a GPU when torch sees one, else
            the CPU), "cpu" or "cuda[:N]"; on a GPU through :class:`~cxlspeaks.peaks.batched.BatchedPeakPipeline`.
        prefault_mb: memory each worker touches (and keeps) before it connects, so that building a detector's
            look-up tables and each frame's buffers reuse pages instead of faulting in new ones
            (:func:`~cxlspeaks.live.workers.keep_memory`).
    Raises:
        ValueError: bad arguments, or a worker that cannot start (its one-line reason).
    """
    import zmq

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if protocol not in ("stream2", "stream1"):
        raise ValueError(f"unknown protocol {protocol!r} (stream2 or stream1)")
    if finder not in ("peakfinder8", "network"):
        raise ValueError(f"unknown finder {finder!r} (network or peakfinder8)")
    check_device_name(device)
    geometry_obj = None
    if geometry is not None:
        from ..geometry import read_geometry

        geometry_obj = read_geometry(geometry)
    collector = Collector(out, geometry_obj, hits_per_cxi)
    ctx = zmq.Context()
    results = ctx.socket(zmq.PULL)
    port = results.bind_to_random_port("tcp://127.0.0.1")
    control = ctx.socket(zmq.PUB)
    control_port = control.bind_to_random_port("tcp://127.0.0.1")
    config = {"connect": connect, "protocol": protocol, "channel": channel, "models": str(models),
              "geometry": str(geometry) if geometry else None, "finder": finder, "max_age_s": max_age_s,
              "collector": f"tcp://127.0.0.1:{port}", "control": f"tcp://127.0.0.1:{control_port}",
              "threads": threads_per_worker, "prefault_mb": prefault_mb, "device": device}
    spawn = mp.get_context("spawn")
    procs = {i: spawn.Process(target=worker_main, args=(i, config), daemon=True, name=f"cxlspeaks-worker-{i}")
             for i in range(workers)}
    for p in procs.values():
        p.start()
    server = None
    if http:
        from .monitor import serve

        server = serve(collector, http)
    alive: set[int] = set()
    beats: dict[int, float] = {}
    hello = 0
    t0 = time.monotonic()
    stop_reason = None
    try:
        while stop_reason is None:
            if results.poll(100):
                for _ in range(1000):
                    if not results.poll(0):
                        break
                    message = results.recv_pyobj()
                    kind, w = message[0], message[1]
                    beats[w] = time.monotonic()
                    if kind == "hello":
                        alive.add(w)
                        hello += 1
                        if hello == workers and ready is not None:
                            ready.set()
                    elif kind == "fatal":
                        raise ValueError(f"worker {w} cannot start: {message[2]}")
                    elif kind == "recv":
                        collector.received(message[2], message[3], w)
                    elif kind == "result":
                        collector.result(message[2])
                    elif kind == "start":
                        collector.start(message[2])
                        control.send_pyobj(("start", message[2]))
                    elif kind == "need":
                        s = collector.series.get(message[2])
                        if s is not None and s.info is not None:
                            control.send_pyobj(("start", s.info))
                    elif kind == "end":
                        collector.get(message[2]).ended = True
                        control.send_pyobj(("end", message[2]))
                    elif kind == "done":
                        collector.get(message[2]).done_workers.add(w)
                    elif kind == "stray":
                        log.warning("worker %d: stray message skipped: %s", w, message[2])
                        collector.stray(message[2])
            now = time.monotonic()
            for w, p in procs.items():
                dead = not p.is_alive() or (w in alive and now - beats.get(w, now) > heartbeat_timeout_s)
                if w in alive and dead:
                    alive.discard(w)
                    lost = collector.worker_lost(w)
                    log.warning("worker %d died; %d frames in flight recorded as lost", w, lost)
                    if p.is_alive():
                        p.kill()
            if hello < workers and not any(p.is_alive() for p in procs.values()):
                raise ValueError("every worker exited before connecting")
            for sid, s in list(collector.series.items()):
                if s.ended and not s.closed and (alive <= s.done_workers):
                    collector.close_series(sid)
                    # an earlier series that never ended was aborted: what it left in flight is lost
                    for other in collector.series.values():
                        if other.series_id != sid and not other.closed and not other.inflight:
                            other.closed = True
                    if stop_after_end:
                        stop_reason = f"series {sid} ended"
            if alive == set() and hello == workers:
                stop_reason = "every worker died"
            if max_seconds is not None and now - t0 > max_seconds:
                stop_reason = "time limit"
            if now - getattr(collector, "_last_summary", 0.0) > 1.0:
                collector._last_summary = now
                collector.write_summary()
    except KeyboardInterrupt:
        stop_reason = "interrupted (SIGINT)"
    finally:
        control.send_pyobj(("stop",))
        deadline = time.monotonic() + 5.0
        for p in procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        # results that arrived while the workers stopped
        while results.poll(200):
            message = results.recv_pyobj()
            if message[0] == "result":
                collector.result(message[2])
        for s in collector.series.values():
            for image_id, w in list(s.inflight.items()):
                collector.result({"series_id": s.series_id, "image_id": image_id, "worker": w,
                                  "status": "lost", "event": f"{s.series_id} //{image_id}"})
        collector.stop_reason = stop_reason
        summary = collector.close()
        if server is not None:
            server.should_exit = True
        for s in (results, control):
            s.close(linger=0)
        ctx.term()
    log.info("live run stopped: %s", stop_reason)
    return summary
