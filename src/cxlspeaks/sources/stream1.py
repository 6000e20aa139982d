"""DECTRIS Stream V1 (the legacy SIMPLON stream, ZeroMQ PUSH on port 9999, multipart JSON + binary messages).

Messages (SIMPLON API reference, stream interface), each one multipart ZeroMQ message:

- series header: ``{"htype": "dheader-1.0", "series": N, "header_detail": "all"|"basic"|"none"}``; with
  ``basic`` or ``all`` a second part holds the detector configuration as JSON (``x_pixels_in_detector``,
  ``y_pixels_in_detector``, ``x_pixel_size`` m, ``detector_distance`` m, ``incident_energy`` eV,
  ``beam_center_x``/``_y`` px, ``countrate_correction_count_cutoff`` = saturation value, ``nimages`` x
  ``ntrigger``, ``bit_depth_image``); with ``all`` pairs of a JSON header + binary blob follow
  (``dflatfield-1.0``, ``dpixelmask-1.0``, ``dcountrate_table-1.0``; ``shape`` [x, y], ``type``).
- image: ``{"htype": "dimage-1.0", "series", "frame", "hash"}``, ``{"htype": "dimage_d-1.0", "shape": [x, y],
  "type": "uint32", "encoding": "bs32-lz4<" | "lz4<" | "<", "size": bytes}``, the blob, then
  ``{"htype": "dconfig-1.0", "start_time", "stop_time", "real_time"}`` (ns).
- end of series: ``{"htype": "dseries_end-1.0", "series": N}``.

Parsing returns the same events as Stream V2 (:mod:`cxlspeaks.sources.messages`); the blob of an image is decoded
only when the frame is used. A malformed or partial message is a :class:`~cxlspeaks.sources.messages.Stray`.
"""

from __future__ import annotations

import json

import numpy as np

from .messages import Compressed, EncodedArray, End, Image, SeriesInfo, Start, Stray, StreamError, compress_bytes

DEFAULT_PORT = 9999


def _json(part) -> dict:
    try:
        value = json.loads(bytes(part))
    except (ValueError, UnicodeDecodeError):
        raise StreamError("stream1: a part that should be JSON is not") from None
    if not isinstance(value, dict):
        raise StreamError("stream1: a JSON part is not an object")
    return value


def _blob_array(header: dict, blob: bytes) -> EncodedArray:
    """An :class:`EncodedArray` (ss, fs) from a ``dimage_d``/``dpixelmask`` header (shape [x, y]) and its blob."""
    x, y = (int(v) for v in header["shape"])
    dtype = np.dtype(str(header.get("type", "uint32"))).newbyteorder("<")
    encoding = str(header.get("encoding", "<"))
    if encoding.startswith("bs") and "lz4" in encoding:
        payload = Compressed("bslz4", dtype.itemsize, bytes(blob))
    elif encoding.startswith("lz4"):
        payload = _lz4(bytes(blob), x * y * dtype.itemsize)
    elif encoding in ("<", ""):
        payload = bytes(blob)
    else:
        raise StreamError(f"stream1: unsupported encoding {encoding!r}")
    return EncodedArray(dtype, payload, (y, x))


class _Lz4Block(Compressed):
    """A plain LZ4 block (V1 ``lz4<``), or an HDF5-framed one."""

    def decompress(self) -> bytes:
        try:
            return super().decompress()
        except StreamError:
            try:
                import lz4.block
            except ImportError:
                raise StreamError("stream1: lz4 block data needs the lz4 package") from None
            return lz4.block.decompress(self.payload, uncompressed_size=self.elem_size)


def _lz4(blob: bytes, size: int) -> Compressed:
    return _Lz4Block("lz4", size, blob)


def parse_v1(parts: list) -> Start | Image | End | Stray:
    """One multipart V1 message as an event; never raises."""
    try:
        first = _json(parts[0])
        htype = str(first.get("htype", ""))
        if htype.startswith("dheader-"):
            return Start(_series_info(first, parts))
        if htype.startswith("dimage-"):
            if len(parts) < 3:
                raise StreamError(f"stream1: image message with {len(parts)} parts (needs >= 3)")
            return Image(int(first["series"]), int(first["frame"]),
                         {"threshold_1": _blob_array(_json(parts[1]), parts[2])})
        if htype.startswith("dseries_end-"):
            return End(int(first.get("series", -1)))
        return Stray(f"stream1: unknown htype {htype!r}")
    except (StreamError, KeyError, TypeError, ValueError, IndexError) as exc:
        return Stray(str(exc) if str(exc).startswith("stream1") else f"stream1: {type(exc).__name__}: {exc}")


def _series_info(first: dict, parts: list) -> SeriesInfo:
    info = SeriesInfo(series_id=int(first.get("series", -1)))
    if str(first.get("header_detail", "none")) == "none" or len(parts) < 2:
        return info
    config = _json(parts[1])
    nx, ny = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
    if nx is not None and ny is not None:
        info.shape = (int(ny), int(nx))
    bits = config.get("bit_depth_image")
    if bits:
        info.dtype = f"uint{int(bits)}"
    n = config.get("nimages")
    if n is not None:
        info.number_of_images = int(n) * int(config.get("ntrigger", 1) or 1)
    cutoff = config.get("countrate_correction_count_cutoff")
    info.saturation_value = None if cutoff is None else int(cutoff)
    for key, name in (("incident_energy", "photon_energy_ev"), ("detector_distance", "clen_m"),
                      ("x_pixel_size", "pixel_size_m")):
        if config.get(key) is not None:
            setattr(info, name, float(config[key]))
    if config.get("beam_center_x") is not None and config.get("beam_center_y") is not None:
        info.beam_center_px = (float(config["beam_center_x"]), float(config["beam_center_y"]))
    for i in range(2, len(parts) - 1):
        try:
            header = json.loads(bytes(parts[i]))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(header, dict) and str(header.get("htype", "")).startswith("dpixelmask-"):
            info.pixel_mask = {"threshold_1": _blob_array(header, parts[i + 1]).array()}
    return info


# ---------------------------------------------------------------------- encoding (replay, tests)
def header_message(info: SeriesInfo, detail: str = "all") -> list[bytes]:
    """The multipart ``dheader-1.0`` message of a series (``detail``: all, basic or none)."""
    if detail not in ("all", "basic", "none"):
        raise ValueError(f"header_detail must be all, basic or none, got {detail!r}")
    parts = [json.dumps({"htype": "dheader-1.0", "series": info.series_id, "header_detail": detail}).encode()]
    if detail == "none":
        return parts
    ny, nx = info.shape
    config = {"x_pixels_in_detector": nx, "y_pixels_in_detector": ny, "bit_depth_image": np.dtype(info.dtype).itemsize
              * 8, "nimages": info.number_of_images or 0, "ntrigger": 1,
              "countrate_correction_count_cutoff": info.saturation_value, "incident_energy": info.photon_energy_ev,
              "detector_distance": info.clen_m, "x_pixel_size": info.pixel_size_m,
              "y_pixel_size": info.pixel_size_m}
    if info.beam_center_px is not None:
        config["beam_center_x"], config["beam_center_y"] = info.beam_center_px
    parts.append(json.dumps(config).encode())
    if detail == "all":
        mask = np.asarray(info.pixel_mask.get("threshold_1", np.zeros(info.shape)), dtype="<u4")
        parts += [json.dumps({"htype": "dflatfield-1.0", "shape": [nx, ny], "type": "float32"}).encode(),
                  np.ones(info.shape, "<f4").tobytes(),
                  json.dumps({"htype": "dpixelmask-1.0", "shape": [nx, ny], "type": "uint32"}).encode(),
                  mask.tobytes(),
                  json.dumps({"htype": "dcountrate_table-1.0", "shape": [2, 1], "type": "float32"}).encode(),
                  np.zeros(2, "<f4").tobytes()]
    return parts


def image_parts(series_id: int, frame: int, array: np.ndarray, compression: str | None = "bslz4") -> list[bytes]:
    """The multipart ``dimage-1.0`` message of one frame (``compression`` bslz4 or None)."""
    array = np.ascontiguousarray(array, dtype=np.asarray(array).dtype.newbyteorder("<"))
    if compression == "bslz4":
        blob, encoding = compress_bytes(array, "bslz4"), f"bs{array.dtype.itemsize * 8}-lz4<"
    elif compression in (None, "none"):
        blob, encoding = array.tobytes(), "<"
    else:
        raise ValueError(f"stream1 replay compresses with bslz4 or none, not {compression!r}")
    ny, nx = array.shape
    return [json.dumps({"htype": "dimage-1.0", "series": series_id, "frame": frame, "hash": ""}).encode(),
            json.dumps({"htype": "dimage_d-1.0", "shape": [nx, ny], "type": str(array.dtype.newbyteorder("=")),
                        "encoding": encoding, "size": len(blob)}).encode(),
            blob,
            json.dumps({"htype": "dconfig-1.0", "start_time": frame * 10 ** 6, "stop_time": (frame + 1) * 10 ** 6,
                        "real_time": 10 ** 6}).encode()]


def end_parts(series_id: int) -> list[bytes]:
    """The ``dseries_end-1.0`` message."""
    return [json.dumps({"htype": "dseries_end-1.0", "series": series_id}).encode()]
