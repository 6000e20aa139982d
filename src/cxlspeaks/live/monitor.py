"""The live web monitor: one HTML page that polls a JSON endpoint (FastAPI on uvicorn, in a thread of the
collector process).

Routes: ``/`` the page (monitor.html beside this module); ``/api/state`` the collector's summary plus per-second
timelines (frames, hits, peaks, saturated, lost); ``/api/latest.png`` the latest hit (log counts) with its
peaks circled; ``/api/powder.png`` the virtual powder pattern (2-D histogram of every peak position).
Serve on localhost unless the beamline network is trusted: the page has no authentication.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np

PAGE = Path(__file__).with_name("monitor.html")


def _png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=80)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def make_app(collector):
    """The FastAPI application showing ``collector`` (a :class:`~cxlspeaks.live.collector.Collector`)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    app = FastAPI(title="cxlspeaks live")

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.read_text()

    @app.get("/api/state")
    def state():
        return JSONResponse(collector.monitor_state())

    @app.get("/api/latest.png")
    def latest():
        with collector.lock:
            hit = collector.latest_hit

        def draw(ax):
            if hit is None:
                ax.text(0.5, 0.5, "no hit yet", ha="center")
                ax.set_axis_off()
                return
            frame = hit["frame"].array() if hasattr(hit["frame"], "payload") else hit["frame"]  # bslz4 as sent
            ax.imshow(np.log1p(np.asarray(frame, float)), cmap="gray_r", origin="upper")
            ax.scatter(hit["peaks"]["fs"], hit["peaks"]["ss"], s=80, facecolors="none", edgecolors="red")
            ax.set_title(f"{hit['event']}: {hit['n_peaks']} peaks")

        return Response(_png(draw), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/powder.png")
    def powder():
        with collector.lock:
            counts = collector.powder.copy()

        def draw(ax):
            ax.imshow(np.log1p(counts), cmap="viridis", origin="upper")
            ax.set_title(f"virtual powder: {int(counts.sum())} peaks")

        return Response(_png(draw), media_type="image/png", headers={"Cache-Control": "no-store"})

    return app


def serve(collector, address: str = "127.0.0.1:8000"):
    """Start the monitor on ``HOST:PORT`` in a daemon thread; returns the uvicorn server (``should_exit``
    stops it). Raises ValueError for an address that is not HOST:PORT, OSError when it cannot listen."""
    import uvicorn

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--http must be HOST:PORT, got {address!r}")
    config = uvicorn.Config(make_app(collector), host=host, port=int(port), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="cxlspeaks-monitor")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise OSError(f"the monitor could not listen on {address}")
    return server
