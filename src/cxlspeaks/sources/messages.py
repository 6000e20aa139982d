"""Stream messages of both DECTRIS protocols, as :mod:`.stream2` (CBOR) and :mod:`.stream1` (multipart JSON) decode
them: the lazily decoded arrays (:class:`Compressed`, :class:`EncodedArray`), the series state (:class:`SeriesInfo`,
:func:`make_frame`), the events (:class:`Start`, :class:`Image`, :class:`End`, :class:`Stray`) and
:class:`StreamError`. Shared by both protocols, so neither imports the other.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..geometry import Geometry
from .base import Frame, good_pixel_mask


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


def resolve(value):
    """Decode every :class:`EncodedArray` inside ``value`` (maps, lists) into numpy arrays."""
    if isinstance(value, EncodedArray):
        return value.array()
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [resolve(v) for v in value]
    return value


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
