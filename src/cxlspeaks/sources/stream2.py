"""DECTRIS Stream V2 (SIMPLON >= 1.8, ZeroMQ PUSH on port 31001, one CBOR map per message): decoding, encoding
and a frame source.

Messages (dectris/documentation stream_v2/README.md): ``start`` once per series (arm: image size, channels,
``pixel_mask`` per channel, ``saturation_value``, ``incident_energy`` eV, ``detector_distance`` m, beam centre px,
``series_id``), ``image`` once per exposure (``data``: channel name -> 2-D array, ``image_id``, ``series_id``),
``end`` once per series (disarm). Arrays are RFC 8746 typed arrays (tags 64-87, a byte string) inside
multi-dimensional arrays (tag 40 row-major, 1040 column-major, ``[dims, array]``); any byte string may be the
DECTRIS compression tag 56500 ``[algorithm, element size, bytes]`` (``bslz4``, ``lz4``; decoded by the
``dectris-compression`` package). Image payloads are decoded lazily (:class:`EncodedArray`) so a frame that is
skipped for age is never decompressed.

The DCU deals each message to one connected client (round-robin), so with several clients only one sees the
``start`` and ``end`` of a series; :class:`StreamDecoder` therefore accepts series info learnt elsewhere
(:meth:`StreamDecoder.add_series`). Stray or malformed messages become :class:`Stray` events (logged), never a
crash.
"""

from __future__ import annotations

import logging

import cbor2
import numpy as np

from ..geometry import Geometry
from .messages import (Compressed, EncodedArray, End, Image, SeriesInfo, Start, Stray, StreamError, compress_bytes,
                       make_frame, resolve)

log = logging.getLogger(__name__)

DEFAULT_PORT = 31001
CHANNELS = ("threshold_1", "threshold_2", "difference")
_TYPED = {64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1",
          73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8", 80: ">f2", 81: ">f4", 82: ">f8",
          84: "<f2", 85: "<f4", 86: "<f8"}
_TAG_OF = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k
           for k, v in _TYPED.items() if k not in (64, 65, 66, 67, 73, 74, 75, 80, 81, 82)}


def _tag_hook(first, second):
    # cbor2 calls tag_hook(tag, immutable) (C decoder) or (decoder, tag) (documented); take whichever is the tag
    tag = first if isinstance(first, cbor2.CBORTag) else second
    if tag.tag == 56500:
        if not (isinstance(tag.value, (list, tuple)) and len(tag.value) == 3):
            raise StreamError("tag 56500 needs [algorithm, modifier, bytes]")
        return Compressed(str(tag.value[0]), int(tag.value[1]), bytes(tag.value[2]))
    if tag.tag in _TYPED:
        if not isinstance(tag.value, (bytes, Compressed)):
            raise StreamError(f"typed array tag {tag.tag} does not hold a byte string")
        return EncodedArray(np.dtype(_TYPED[tag.tag]), tag.value)
    if tag.tag in (40, 1040):
        dims, contents = tag.value
        shape = tuple(int(d) for d in dims)
        if isinstance(contents, EncodedArray):
            return EncodedArray(contents.dtype, contents.payload, shape, tag.tag == 1040)
        return np.asarray(contents).reshape(shape, order="F" if tag.tag == 1040 else "C")
    return tag


def decode_message(raw: bytes, lazy: bool = True) -> dict:
    """One Stream V2 message as a dict; image ``data`` stays :class:`EncodedArray` when ``lazy``.

    Raises :class:`StreamError` for bytes that are not a CBOR map with a text ``type``."""
    try:
        message = cbor2.loads(raw, tag_hook=_tag_hook)
    except StreamError:
        raise
    except Exception as exc:
        raise StreamError(f"not a CBOR message: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise StreamError("CBOR message is not a map with a text 'type'")
    return message if lazy else resolve(message)


# ---------------------------------------------------------------------- encoding (replay, tests)
def encode_array(array: np.ndarray, compression: str | None = "bslz4") -> cbor2.CBORTag:
    """A tag 40 multi-dimensional array of a little-endian typed array, compressed with tag 56500 unless
    ``compression`` is None/"none"."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in _TAG_OF:
        raise ValueError(f"no RFC 8746 typed-array tag for dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=dtype)
    payload = array.tobytes()
    if compression not in (None, "none"):
        elem = array.dtype.itemsize if compression == "bslz4" else 0
        payload = cbor2.CBORTag(56500, [compression, elem, compress_bytes(array, compression)])
    return cbor2.CBORTag(40, [list(array.shape), cbor2.CBORTag(_TAG_OF[dtype], payload)])


def start_message(series_id: int, shape: tuple[int, int], dtype="uint32", number_of_images: int = 0,
                  pixel_mask: dict | None = None, saturation_value: int = 2 ** 20, incident_energy_ev: float = 9000.0,
                  detector_distance_m: float = 0.15, beam_center_px: tuple[float, float] = (0.0, 0.0),
                  pixel_size_m: float = 75e-6, channels=("threshold_1",), compression: str | None = "bslz4") -> bytes:
    """The CBOR ``start`` message of a series (``shape`` = (ss, fs) = (image_size_y, image_size_x))."""
    message = {"type": "start", "series_id": int(series_id), "series_unique_id": f"cxlspeaks-{series_id}",
               "channels": list(channels), "image_dtype": str(np.dtype(dtype)), "image_size_x": int(shape[1]),
               "image_size_y": int(shape[0]), "number_of_images": int(number_of_images),
               "saturation_value": int(saturation_value), "incident_energy": float(incident_energy_ev),
               "incident_wavelength": 12398.419843320026 / float(incident_energy_ev),
               "detector_distance": float(detector_distance_m), "beam_center_x": float(beam_center_px[0]),
               "beam_center_y": float(beam_center_px[1]), "pixel_size_x": float(pixel_size_m),
               "pixel_size_y": float(pixel_size_m), "pixel_mask_enabled": bool(pixel_mask)}
    if pixel_mask:
        message["pixel_mask"] = {k: encode_array(np.asarray(v, np.uint32), compression) for k, v in pixel_mask.items()}
    return cbor2.dumps(message)


def image_message(series_id: int, image_id: int, data: dict, compression: str | None = "bslz4",
                  encoded: dict | None = None) -> bytes:
    """The CBOR ``image`` message: ``data`` channel -> 2-D array (or ``encoded`` channel -> tag, pre-encoded)."""
    payload = dict(encoded or {})
    payload.update({k: encode_array(v, compression) for k, v in data.items()})
    return cbor2.dumps({"type": "image", "series_id": int(series_id), "series_unique_id": f"cxlspeaks-{series_id}",
                        "image_id": int(image_id), "real_time": [1, 1000], "start_time": [image_id, 1000],
                        "stop_time": [image_id + 1, 1000], "data": payload})


def end_message(series_id: int) -> bytes:
    """The CBOR ``end`` message of a series."""
    return cbor2.dumps({"type": "end", "series_id": int(series_id), "series_unique_id": f"cxlspeaks-{series_id}"})


def parse_v2(raw: bytes) -> Start | Image | End | Stray:
    """One V2 message as an event; never raises (a bad message is a :class:`Stray`)."""
    try:
        message = decode_message(raw)
        kind = message["type"]
        if kind == "start":
            return Start(SeriesInfo.from_start(message))
        if kind == "image":
            data = message.get("data")
            if not isinstance(data, dict):
                raise StreamError("image message without a data map")
            return Image(int(message["series_id"]), int(message["image_id"]), data)
        if kind == "end":
            return End(int(message.get("series_id", -1)))
        return Stray(f"unknown message type {kind!r}")
    except (StreamError, KeyError, TypeError, ValueError) as exc:
        return Stray(f"stream2: {exc}")


class StreamSource:
    """Frames of one series from a DCU (or a replay): ZeroMQ PULL connected to ``endpoint``.

    ``protocol`` "stream2" (CBOR) or "stream1" (multipart JSON); ``channel`` the image channel (V2);
    ``geometry`` the detector (default: one panel from the start message). Iteration yields :class:`Frame`
    objects until the series' ``end`` (or ``timeout_s`` seconds without a message: :class:`TimeoutError`).
    Messages before a ``start``, of another series, or malformed are logged and skipped."""

    def __init__(self, endpoint: str, protocol: str = "stream2", channel: str = "threshold_1",
                 geometry: Geometry | None = None, timeout_s: float = 60.0):
        import zmq

        if protocol not in ("stream2", "stream1"):
            raise ValueError(f"unknown stream protocol {protocol!r} (stream2 or stream1)")
        self.protocol, self.channel, self.timeout_s = protocol, channel, timeout_s
        self._given_geometry = geometry
        self.geometry = geometry
        self.info: SeriesInfo | None = None
        self._ctx = zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.PULL)
        self._socket.connect(endpoint)

    def __len__(self) -> int:
        if self.info is None or self.info.number_of_images is None:
            raise TypeError("a stream's length is known only after its start message")
        return self.info.number_of_images

    def receive(self):
        """The next event (blocking up to ``timeout_s``)."""
        if not self._socket.poll(int(self.timeout_s * 1000)):
            raise TimeoutError(f"no stream message for {self.timeout_s:g} s")
        if self.protocol == "stream2":
            return parse_v2(self._socket.recv())
        from .stream1 import parse_v1

        return parse_v1(self._socket.recv_multipart())

    def __iter__(self):
        good = None
        while True:
            event = self.receive()
            if isinstance(event, Start):
                self.info = event.info
                self.geometry = self._given_geometry or event.info.geometry()
                good = event.info.static_good(self.geometry.mask, self.channel)
            elif isinstance(event, Image) and self.info is not None and event.series_id == self.info.series_id:
                try:
                    yield make_frame(self.info, event.image_id, event.channel(self.channel), good)
                except StreamError as exc:
                    log.warning("skipped: %s", exc)
            elif isinstance(event, End) and self.info is not None and event.series_id == self.info.series_id:
                return
            else:
                log.warning("skipped stray message: %s", getattr(event, "reason", type(event).__name__))

    def close(self) -> None:
        self._socket.close(linger=0)
