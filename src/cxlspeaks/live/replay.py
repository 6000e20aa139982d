"""Replay a file of frames exactly as a DECTRIS DCU streams them: ZeroMQ PUSH bound to an endpoint, Stream V2
(CBOR: start, image..., end) or Stream V1 (multipart dheader / dimage / dseries_end).

Frames come from ``cxlspeaks.sources.open_source`` when that exists, else from a cxlspeaks frames file
(/entry/data/data (N, ss, fs) with /entry/instrument/detector/geometry). The start message carries the detector
(size, pixel size, distance, beam centre from the geometry), the photon energy, the saturation value and the
geometry's bad pixels as the pixel mask (bit 0 = gap, as DECTRIS sets it). Images are bitshuffle-LZ4 compressed
(tag 56500 ``bslz4``, made with the HDF5 filter of ``hdf5plugin``; ``dectris-compression`` only decompresses),
or ``lz4`` / ``none``. Each distinct frame is encoded once; ``count`` > N cycles over the file with increasing
image ids.
"""

from __future__ import annotations

import time
from pathlib import Path

import cbor2
import numpy as np

from ..sources import messages, stream1, stream2


def _read_frames(source: str | Path) -> tuple[np.ndarray, object, dict]:
    """(frames (N, ss, fs) unsigned int, geometry, metadata) of a frames file."""
    try:
        from ..sources import open_source  # the file sources, when present
    except ImportError:
        open_source = None
    if open_source is not None:
        src = open_source(source)
        try:
            frames = [f for f in src]
            stack = np.stack([np.clip(np.nan_to_num(f.counts), 0, None) for f in frames]).astype(np.uint32)
            return stack, src.geometry, dict(frames[0].metadata) if frames else {}
        finally:
            src.close()
    from ..frames import FramesFile
    from ..io import PHOTON_ENERGY, open_h5

    with FramesFile(source) as f:
        stack = np.stack([f.read(i) for i in range(f.n_frames)]).astype(np.uint32)
        geometry = f.geometry
    meta = {}
    with open_h5(source) as h5:
        if PHOTON_ENERGY in h5:
            meta["photon_energy_ev"] = float(h5[PHOTON_ENERGY][()])
    return stack, geometry, meta


def series_info(geometry, shape, n_images: int, series_id: int, photon_energy_ev: float | None = None,
                saturation_value: int | None = None, dtype: str = "uint32"):
    """The :class:`~cxlspeaks.sources.messages.SeriesInfo` a DCU would state for frames of ``geometry``."""
    panel = geometry.panels[0]
    mask = (~geometry.mask).astype(np.uint32)
    return messages.SeriesInfo(
        series_id=series_id, shape=tuple(shape), dtype=dtype, number_of_images=n_images,
        pixel_mask={"threshold_1": mask}, saturation_value=saturation_value or int(np.iinfo(dtype).max - 1),
        photon_energy_ev=photon_energy_ev or geometry.photon_energy_ev or 9000.0, clen_m=float(panel.clen_m),
        beam_center_px=(-float(panel.corner_x), -float(panel.corner_y)), pixel_size_m=1.0 / float(panel.res))


def image_bytes(series_id: int, image_id: int, data_cbor: bytes) -> bytes:
    """``stream2.image_message(series_id, image_id, data)`` from the CBOR encoding of its data map (``data_cbor`` =
    ``cbor2.dumps(channel -> encoded array)``, made once per frame): the data map is the message's last entry."""
    head = stream2.image_message(series_id, image_id, {})
    if not head.endswith(b"\xa0"):   # an empty data map
        raise AssertionError("image_message no longer ends with its data map")
    return head[:-1] + data_cbor


def wait_for_peers(socket, n: int, timeout_s: float, bind: str | None = None) -> None:
    """Block until ``n`` peers completed the ZeroMQ handshake with ``socket`` (TimeoutError after timeout_s).
    ``bind``: bind the socket to this endpoint only after the monitor is attached, so that a client already
    waiting (it connects the moment the socket binds) is not missed."""
    import zmq

    events = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", zmq.EVENT_ACCEPTED)
    monitor = socket.get_monitor_socket(events | zmq.EVENT_DISCONNECTED)
    peers, deadline = 0, time.monotonic() + timeout_s
    try:
        from zmq.utils.monitor import recv_monitor_message

        if bind is not None:
            socket.bind(bind)
        while peers < n:
            left = deadline - time.monotonic()
            if left <= 0 or not monitor.poll(int(left * 1000)):
                raise TimeoutError(f"only {peers} of {n} stream clients connected within {timeout_s:g} s")
            event = recv_monitor_message(monitor)["event"]
            peers += 1 if event == events else -1
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)


def replay(source, bind: str | None = None, protocol: str = "stream2", rate: float | None = None,
           count: int | None = None, compression: str = "bslz4", series_id: int = 1, send_start: bool = True,
           send_end: bool = True, wait_peers: int = 1, peer_timeout_s: float = 60.0, socket=None,
           header_detail: str = "all", channels=("threshold_1",), saturation_value: int | None = None,
           number_of_images: int | None = None, frames: np.ndarray | None = None, geometry=None,
           arm_s: float = 0.0) -> int:
    """Serve the frames of ``source`` (a path; or ``frames`` + ``geometry`` given directly) as one series.

    Args:
        bind: endpoint to bind the PUSH socket to (default tcp://127.0.0.1:31001); with an open ``socket``, None
            means the socket is bound already, an endpoint that replay binds it (after it starts watching for
            clients, so none is missed).
        protocol: ``stream2`` or ``stream1``.
        rate: images per second (None: as fast as the clients take them).
        count: images to send (default: every frame once; more cycles over the file).
        compression: ``bslz4`` (default), ``lz4`` (stream2 only) or ``none``.
        send_start, send_end: False leaves them out (an aborted series, a stray series).
        wait_peers: wait for this many connected clients before sending (0: do not wait).
        channels: stream2 channels; each carries the frame (``threshold_2`` doubled, ``difference`` = t1 - t2
            clipped at 0), so a channel choice is visible.
        number_of_images: stated in the start message (default ``count``).
        arm_s: seconds between the start message and the first image (a detector armed before its trigger).
    Returns:
        images sent.
    Raises:
        ValueError: unknown protocol/compression; TimeoutError: clients did not connect.
    """
    import zmq

    if protocol not in ("stream2", "stream1"):
        raise ValueError(f"unknown protocol {protocol!r} (stream2 or stream1)")
    if compression not in ("bslz4", "lz4", "none"):
        raise ValueError(f"unknown compression {compression!r} (bslz4, lz4 or none)")
    if frames is None:
        frames, geometry, meta = _read_frames(source)
    else:
        meta = {}
    frames = np.asarray(frames)
    n_frames = len(frames)
    count = n_frames if count is None else int(count)
    if n_frames == 0 and count:
        raise ValueError(f"{source}: holds no frames")
    info = series_info(geometry, frames.shape[1:], number_of_images if number_of_images is not None else count,
                       series_id, meta.get("photon_energy_ev"), saturation_value, str(frames.dtype))
    own = socket is None
    if own:
        socket = zmq.Context.instance().socket(zmq.PUSH)
        socket.setsockopt(zmq.SNDHWM, 100000)
        bind = bind or "tcp://127.0.0.1:31001"
    try:
        if wait_peers:
            wait_for_peers(socket, wait_peers, peer_timeout_s, bind)
        elif bind is not None:
            socket.bind(bind)
        comp = None if compression == "none" else compression
        encoded: dict[int, object] = {}

        def payload(k: int):
            if k not in encoded:
                if protocol == "stream2":   # the CBOR of the data map, once; each message only adds its header
                    t1 = frames[k]
                    planes = {"threshold_1": t1, "threshold_2": t1 * 2,
                              "difference": np.zeros_like(t1)}
                    encoded[k] = cbor2.dumps({c: stream2.encode_array(planes[c], comp) for c in channels})
                else:
                    encoded[k] = stream1.image_parts(series_id, 0, frames[k], comp)
            return encoded[k]

        for k in range(min(count, n_frames)):   # encode once, before the first message: sending is then a copy
            payload(k)
        if send_start:
            if protocol == "stream2":
                socket.send(stream2.start_message(
                    series_id, info.shape, info.dtype, info.number_of_images,
                    {c: info.pixel_mask["threshold_1"] for c in channels}, info.saturation_value,
                    info.photon_energy_ev, info.clen_m, info.beam_center_px, info.pixel_size_m, channels, comp))
            else:
                socket.send_multipart(stream1.header_message(info, header_detail))
        if arm_s > 0:
            time.sleep(arm_s)
        t0 = time.monotonic()
        for i in range(count):
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            data = payload(i % n_frames)
            if protocol == "stream2":
                socket.send(image_bytes(series_id, i, data), copy=False)
            else:
                import json

                first = json.dumps({"htype": "dimage-1.0", "series": series_id, "frame": i, "hash": ""}).encode()
                socket.send_multipart([first, *data[1:]], copy=False)
        if send_end:
            socket.send(stream2.end_message(series_id)) if protocol == "stream2" else \
                socket.send_multipart(stream1.end_parts(series_id))
        return count
    finally:
        if own:
            socket.close(linger=30000)
