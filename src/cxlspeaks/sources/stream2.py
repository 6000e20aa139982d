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

import io
import logging
from dataclasses import dataclass, field

import cbor2
import numpy as np

from ..geometry import Geometry
from .base import Frame, good_pixel_mask

log = logging.getLogger(__name__)

DEFAULT_PORT = 31001
CHANNELS = ("threshold_1", "threshold_2", "difference")
_TYPED = {64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1",
          73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8", 80: ">f2", 81: ">f4", 82: ">f8",
          84: "<f2", 85: "<f4", 86: "<f8"}
_TAG_OF = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k
           for k, v in _TYPED.items() if k not in (64, 65, 66, 67, 73, 74, 75, 80, 81, 82)}


class StreamError(ValueError):
    """A message that does not follow the stream format (one line)."""


@dataclass
class Compressed:
    """A DECTRIS-compressed byte string (tag 56500): algorithm, element size in bytes, payload."""

    algorithm: str
    elem_size: int
    payload: bytes

    def decompress(self) -> bytes:
        from dectris.compression import decompress

        try:
            return decompress(self.payload, self.algorithm, elem_size=self.elem_size)
        except Exception as exc:  # the C extension raises RuntimeError/ValueError on a corrupt payload
            raise StreamError(f"cannot decompress {self.algorithm} data: {exc}") from None


@dataclass
class EncodedArray:
    """A typed (multi-dimensional) array not decoded yet: ``shape`` (row-major order), numpy ``dtype``."""

    dtype: np.dtype
    payload: bytes | Compressed
    shape: tuple[int, ...] | None = None
    column_major: bool = False

    def array(self) -> np.ndarray:
        data = self.payload.decompress() if isinstance(self.payload, Compressed) else self.payload
        flat = np.frombuffer(data, dtype=self.dtype)
        if self.shape is None:
            return flat
        if flat.size != int(np.prod(self.shape)):
            raise StreamError(f"array of shape {self.shape} holds {flat.size} elements")
        return flat.reshape(self.shape, order="F" if self.column_major else "C")


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


def resolve(value):
    """Decode every :class:`EncodedArray` inside ``value`` (maps, lists) into numpy arrays."""
    if isinstance(value, EncodedArray):
        return value.array()
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(v) for v in value]
    return value


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
def compress_bytes(array: np.ndarray, algorithm: str) -> bytes:
    """``array`` compressed as the HDF5 bitshuffle-LZ4 (``bslz4``) or LZ4 (``lz4``) filter frames one chunk,
    which is what tag 56500 carries; made by the HDF5 filters of ``hdf5plugin`` on an in-memory file."""
    import h5py
    import hdf5plugin

    filters = {"bslz4": lambda: hdf5plugin.Bitshuffle(nelems=0, cname="lz4"), "lz4": lambda: hdf5plugin.LZ4()}
    if algorithm not in filters:
        raise ValueError(f"unknown compression {algorithm!r} (bslz4, lz4 or none)")
    array = np.ascontiguousarray(array)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        shape = array.shape or (1,)
        dset = h5.create_dataset("x", data=array.reshape(shape), chunks=shape, **filters[algorithm]())
        _, chunk = dset.id.read_direct_chunk((0,) * len(shape))
    return bytes(chunk)


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


# ---------------------------------------------------------------------- series state -> frames
@dataclass
class SeriesInfo:
    """What a ``start`` (V2) or ``dheader`` (V1) message states about a series; plain data (picklable).

    ``shape`` (ss, fs) px; ``pixel_mask`` channel -> uint32 (ss, fs), nonzero = bad; ``saturation_value`` counts
    (None: unknown); ``photon_energy_ev`` eV, ``clen_m`` m, beam centre px (fs, ss), ``pixel_size_m`` m."""

    series_id: int
    shape: tuple[int, int] | None = None
    dtype: str = "uint32"
    number_of_images: int | None = None
    pixel_mask: dict = field(default_factory=dict)
    saturation_value: int | None = None
    photon_energy_ev: float | None = None
    clen_m: float | None = None
    beam_center_px: tuple[float, float] | None = None
    pixel_size_m: float | None = None
    channels: tuple = ("threshold_1",)
    unique_id: str = ""

    @classmethod
    def from_start(cls, message: dict) -> "SeriesInfo":
        """From a decoded V2 start message (lazy arrays are decoded here)."""
        mask = {k: np.asarray(resolve(v)) for k, v in (message.get("pixel_mask") or {}).items()}
        ny, nx = message.get("image_size_y"), message.get("image_size_x")
        bx, by = message.get("beam_center_x"), message.get("beam_center_y")
        return cls(series_id=int(message.get("series_id", -1)),
                   shape=(int(ny), int(nx)) if ny is not None and nx is not None else None,
                   dtype=str(message.get("image_dtype", "uint32")),
                   number_of_images=_int_or_none(message.get("number_of_images")),
                   pixel_mask=mask, saturation_value=_int_or_none(message.get("saturation_value")),
                   photon_energy_ev=_float_or_none(message.get("incident_energy")),
                   clen_m=_float_or_none(message.get("detector_distance")),
                   beam_center_px=(float(bx), float(by)) if bx is not None and by is not None else None,
                   pixel_size_m=_float_or_none(message.get("pixel_size_x")),
                   channels=tuple(message.get("channels") or ("threshold_1",)),
                   unique_id=str(message.get("series_unique_id", "")))

    def geometry(self) -> Geometry:
        """A one-panel detector from the stated size, pixel size, distance and beam centre (no geometry file)."""
        if self.shape is None or not self.pixel_size_m or not self.clen_m:
            raise StreamError(f"series {self.series_id}: the start message lacks image size, pixel size or "
                              "detector distance; give a geometry file")
        from ..geometry.shipped import nxmx_geometry

        beam = self.beam_center_px or (self.shape[1] / 2, self.shape[0] / 2)
        return nxmx_geometry(self.shape, beam, self.pixel_size_m, self.clen_m, photon_energy_ev=self.photon_energy_ev,
                             comment=f"from the stream's start message of series {self.series_id}")

    def static_good(self, geometry_good: np.ndarray, channel: str) -> np.ndarray:
        """bool (ss, fs): the geometry's good pixels less the channel's pixel mask (any mask for ``difference``)."""
        good = geometry_good.copy()
        masks = [self.pixel_mask[channel]] if channel in self.pixel_mask else list(self.pixel_mask.values())
        for mask in masks:
            if mask.shape != good.shape:
                raise StreamError(f"series {self.series_id}: pixel mask of shape {mask.shape}, detector "
                                  f"{good.shape}")
            good &= mask == 0
        return good

    def metadata(self, image_id: int) -> dict:
        out = {"image_id": int(image_id), "series_id": self.series_id}
        for key in ("photon_energy_ev", "clen_m", "pixel_size_m", "saturation_value"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.beam_center_px is not None:
            out["beam_center_fs_px"], out["beam_center_ss_px"] = self.beam_center_px
        return out


def _int_or_none(x):
    return None if x is None else int(x)


def _float_or_none(x):
    return None if x is None else float(x)


def make_frame(info: SeriesInfo, image_id: int, raw: np.ndarray, static_good: np.ndarray) -> Frame:
    """A :class:`Frame` (event ``"{series_id} //{image_id}"``) from the raw (ss, fs) counts of one channel.

    Pixels at the dtype's maximum (DECTRIS' no-data value, when above the saturation value) are masked;
    saturated = counts >= saturation_value on good pixels."""
    raw = np.asarray(raw)
    if raw.shape != static_good.shape:
        raise StreamError(f"series {info.series_id} image {image_id}: shape {raw.shape}, detector "
                          f"{static_good.shape}")
    markers = ()
    if raw.dtype.kind in "ui":
        top = np.iinfo(raw.dtype).max
        if info.saturation_value is None or info.saturation_value < top:
            markers = (top,)
    good = good_pixel_mask(raw, static_good, markers)
    if info.saturation_value is not None:
        saturated = (raw >= info.saturation_value) & good
    else:
        saturated = np.zeros(raw.shape, bool)
    return Frame(event=f"{info.series_id} //{image_id}", counts=raw.astype(np.float32), good=good,
                 saturated=saturated, source_file="", metadata=info.metadata(image_id))


# ---------------------------------------------------------------------- events (both protocols)
@dataclass
class Start:
    info: SeriesInfo


@dataclass
class Image:
    """One exposure: ``data`` channel -> :class:`EncodedArray` or ndarray (ss, fs)."""

    series_id: int
    image_id: int
    data: dict

    def channel(self, name: str) -> np.ndarray:
        if name not in self.data:
            raise StreamError(f"series {self.series_id} image {self.image_id}: no channel {name!r} "
                              f"(has {sorted(self.data)})")
        value = self.data[name]
        return value.array() if isinstance(value, EncodedArray) else np.asarray(value)


@dataclass
class End:
    series_id: int


@dataclass
class Stray:
    """A message that could not be used (malformed, unknown type); ``reason`` is one line."""

    reason: str


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
