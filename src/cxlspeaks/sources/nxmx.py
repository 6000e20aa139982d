"""NXmx master files as the DECTRIS file writer makes them (github.com/dectris/documentation, filewriter/).

Layouts:
- legacy (``"hdf5 nexus legacy nxmx"``): /entry/data/data_000001, data_000002, ... are external links to data
  files, each holding /entry/data/data (n, ss, fs) with attributes image_nr_low/image_nr_high (1-based image
  numbers); frames are spread over the data files in image-number order.
- v2024.2 (``"hdf5 nexus v2024.2 nxmx"``): /entry/data/data is a virtual dataset (VDS) over the data files, 3-D
  (n, ss, fs) or multi-channel 4-D (n, channel, ss, fs) with the channel names in /entry/data/channel; choose a
  channel by index or name (required when there are several). Each channel may have its own pixel mask in
  /entry/instrument/detector/<name>_channel/pixel_mask.

A missing data file or VDS source file is a DataFileError naming the file and the image numbers it held (h5py
would return the fill value, zeros, for a missing VDS source).

Metadata (units converted by the ``units`` attribute where present): ``photon_energy_ev`` (from
/entry/instrument/beam/incident_wavelength, else incident_energy, else detectorSpecific/photon_energy),
``wavelength_A``, ``clen_m`` (detector_distance or distance), ``beam_center_fs_px``/``beam_center_ss_px``
(beam_center_x/y), ``pixel_size_m`` (x_pixel_size), ``sensor_material``, ``sensor_thickness_m``, ``bit_depth``
(bit_depth_image, else bit_depth_readout), ``saturation_value`` (saturation_value, else
detectorSpecific/countrate_correction_count_cutoff), ``pixel_mask_applied``, ``channel``, ``image_nr``.

Good pixels: the pixel mask (/entry/instrument/detector/pixel_mask, else detectorSpecific/pixel_mask; any set bit
is bad: bit 0 gap, 1 dead, 2 cold, 3 hot, 4 noisy, higher bits other defects), the marker 2**bit_depth - 1 where
pixel_mask_applied says the mask was written into the data, plus the geometry's masks. Without a geometry, one is
built from the metadata (:func:`cxlspeaks.geometry.nxmx_geometry`): one panel, fs along +x, the gap rows and
columns of mask bit 0 as bad regions.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from ..constants import HC_EV_A
from ..geometry import Geometry, GeometryError, nxmx_geometry
from ..io import DataFileError, open_h5
from .hdf5 import HDF5FrameSource, Segment
from .stack import load_geometry

DETECTOR = "/entry/instrument/detector"
SPECIFIC = DETECTOR + "/detectorSpecific"
_LENGTH = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "microns": 1e-6, "cm": 1e-2, "nm": 1e-9}
_WAVELENGTH_A = {"angstrom": 1.0, "A": 1.0, "Angstrom": 1.0, "nm": 10.0, "m": 1e10}
_ENERGY_EV = {"eV": 1.0, "keV": 1e3}


def _value(h5: h5py.File, name: str, units: dict[str, float] | None = None, default_unit: str | None = None):
    """A scalar field (first value of an array), converted by its ``units`` attribute; None when absent."""
    if name not in h5 or not isinstance(h5[name], h5py.Dataset):
        return None
    ds = h5[name]
    value = ds[()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else None
    if isinstance(value, bytes):
        value = value.decode()
    if units is None or value is None:
        return value.item() if isinstance(value, np.generic) else value
    unit = ds.attrs.get("units", default_unit)
    unit = unit.decode() if isinstance(unit, bytes) else unit
    if unit not in units:
        raise DataFileError(f"{h5.filename}: {name} has unknown units {unit!r}")
    return float(value) * units[unit]


def read_nxmx_metadata(h5: h5py.File) -> dict:
    """The NXmx metadata cxlspeaks uses (keys in the module docstring); absent fields are left out."""
    meta: dict = {}
    wavelength = _value(h5, "/entry/instrument/beam/incident_wavelength", _WAVELENGTH_A, "angstrom")
    energy = _value(h5, "/entry/instrument/beam/incident_energy", _ENERGY_EV, "eV")
    if energy is None:
        energy = _value(h5, SPECIFIC + "/photon_energy", _ENERGY_EV, "eV")
    if wavelength:
        meta["wavelength_A"] = wavelength
        meta["photon_energy_ev"] = HC_EV_A / wavelength
    elif energy:
        meta["photon_energy_ev"] = energy
        meta["wavelength_A"] = HC_EV_A / energy
    for key, name in (("clen_m", DETECTOR + "/detector_distance"), ("clen_m", DETECTOR + "/distance"),
                      ("pixel_size_m", DETECTOR + "/x_pixel_size"), ("y_pixel_size_m", DETECTOR + "/y_pixel_size"),
                      ("sensor_thickness_m", DETECTOR + "/sensor_thickness")):
        if key not in meta:
            value = _value(h5, name, _LENGTH, "m")
            if value is not None:
                meta[key] = value
    for key, name in (("beam_center_fs_px", DETECTOR + "/beam_center_x"),
                      ("beam_center_ss_px", DETECTOR + "/beam_center_y"),
                      ("sensor_material", DETECTOR + "/sensor_material"),
                      ("bit_depth", DETECTOR + "/bit_depth_image"), ("bit_depth", SPECIFIC + "/bit_depth_image"),
                      ("bit_depth", DETECTOR + "/bit_depth_readout"),
                      ("saturation_value", DETECTOR + "/saturation_value"),
                      ("saturation_value", SPECIFIC + "/countrate_correction_count_cutoff"),
                      ("pixel_mask_applied", DETECTOR + "/pixel_mask_applied"),
                      ("pixel_mask_applied", SPECIFIC + "/pixel_mask_applied")):
        if key not in meta:
            value = _value(h5, name)
            if value is not None:
                meta[key] = value
    if "pixel_mask_applied" in meta:
        meta["pixel_mask_applied"] = bool(meta["pixel_mask_applied"])
    return meta


def marker_value(bit_depth: int, dtype: np.dtype):
    """The value 2**bit_depth - 1 as it reads in ``dtype`` (-1 in a signed integer of that width)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "i" and dtype.itemsize * 8 <= bit_depth:
        return -1
    return 2 ** int(bit_depth) - 1


class NXmxSource(HDF5FrameSource):
    """A DECTRIS NXmx master file: ``NXmxSource(master, geometry=None, channel=None)``; events ``//i`` for frame i
    (0-based, image-number order), ``metadata["image_nr"]`` the DECTRIS image number."""

    def __init__(self, path: str | Path, geometry: Geometry | str | Path | None = None,
                 channel: int | str | None = None):
        path = Path(path)
        master = open_h5(path)
        files = [master]
        try:
            meta = read_nxmx_metadata(master)
            if "/entry/data/data" in master:
                segments, channel_index, channel_name = self._vds_segments(path, master, channel)
            else:
                if channel is not None:
                    raise DataFileError(f"{path}: legacy NXmx master files have one channel; do not choose one")
                segments, channel_index, channel_name = self._legacy_segments(path, master, files), None, None
            if channel_name is not None:
                meta["channel"] = channel_name
            shape = segments[0].dataset.shape[-2:]
            pixel_mask = self._pixel_mask(path, master, channel_name, shape)
            geom = load_geometry(geometry, None, path) or self._geometry(path, meta, shape, pixel_mask)
            markers = ()
            if meta.get("pixel_mask_applied"):
                bits = meta.get("bit_depth") or segments[0].dataset.dtype.itemsize * 8
                markers = (marker_value(int(bits), segments[0].dataset.dtype),)
            static_good = None if pixel_mask is None else pixel_mask == 0
            if static_good is not None and static_good.shape != geom.shape:
                raise DataFileError(f"{path}: pixel mask has shape {static_good.shape}, the geometry {geom.shape}")
        except BaseException:
            for h5 in files:
                h5.close()
            raise
        sat = meta.get("saturation_value")
        super().__init__(path, geom, segments, channel=channel_index, metadata=meta, marker_values=markers,
                         saturation_value=float(sat) if sat is not None else None, static_good=static_good,
                         meta_h5=master, files=files)

    # ------------------------------------------------------------------ layouts
    @staticmethod
    def _legacy_segments(path: Path, master: h5py.File, files: list) -> list[Segment]:
        group = master.get("/entry/data")
        names = sorted(k for k in (group.keys() if group is not None else []) if re.fullmatch(r"data_\d{6}", k))
        if not names:
            raise DataFileError(f"{path}: has neither /entry/data/data nor /entry/data/data_NNNNNN links")
        per_file = _value(master, SPECIFIC + "/nimages")
        segments, first, missing = [], 0, []
        for k, name in enumerate(names):
            link = group.get(name, getlink=True)
            target = path.parent / link.filename if isinstance(link, h5py.ExternalLink) else path
            if isinstance(link, h5py.ExternalLink) and not target.is_file():
                missing.append((target, k, name))
                continue
            h5 = open_h5(target)
            files.append(h5)
            inner = link.path if isinstance(link, h5py.ExternalLink) else f"/entry/data/{name}"
            if inner not in h5:
                raise DataFileError(f"{target}: has no {inner} ({path}:/entry/data/{name} links to it)")
            ds = h5[inner]
            low = int(ds.attrs.get("image_nr_low", first + 1))
            high = int(ds.attrs.get("image_nr_high", low + ds.shape[0] - 1))
            if high - low + 1 != ds.shape[0]:
                raise DataFileError(f"{target}: image_nr_low..high = {low}..{high} but {inner} holds "
                                    f"{ds.shape[0]} frames")
            per_file = per_file or ds.shape[0]
            segments.append(Segment(target, h5, ds, 0, ds.shape[0], image_nr_low=low))
        if missing:
            target, k, name = missing[0]
            n = int(per_file) if per_file else None
            images = f"images {k * n + 1}-{(k + 1) * n}" if n else "its images"
            raise DataFileError(f"{path}: data file {target} ({name}, {images}) is missing")
        segments.sort(key=lambda s: s.image_nr_low)
        for seg in segments:
            seg.first, first = first, first + seg.n
        return segments

    @staticmethod
    def _vds_segments(path: Path, master: h5py.File, channel: int | str | None):
        ds = master["/entry/data/data"]
        if not isinstance(ds, h5py.Dataset) or ds.ndim not in (3, 4):
            raise DataFileError(f"{path}: /entry/data/data is not a 3-D or 4-D image dataset")
        if ds.is_virtual:
            for vs in ds.virtual_sources():
                name = vs.file_name
                target = path if name == "." else (Path(name) if Path(name).is_absolute() else path.parent / name)
                if not target.is_file():
                    lo, hi = vs.vspace.get_select_bounds()
                    raise DataFileError(f"{path}: VDS source file {target} (images {lo[0] + 1}-{hi[0] + 1}) "
                                        "is missing")
        channel_index = channel_name = None
        if ds.ndim == 4:
            names = []
            if "/entry/data/channel" in master:
                names = [c.decode() if isinstance(c, bytes) else str(c) for c in master["/entry/data/channel"][()]]
            n = ds.shape[1]
            if channel is None:
                if n != 1:
                    raise DataFileError(f"{path}: has {n} channels ({', '.join(names) or 'unnamed'}); choose one "
                                        "by index or name")
                channel_index = 0
            elif isinstance(channel, str) and not channel.isdigit():
                if channel not in names:
                    raise DataFileError(f"{path}: has no channel {channel!r} (channels: {', '.join(names)})")
                channel_index = names.index(channel)
            else:
                channel_index = int(channel)
                if not 0 <= channel_index < n:
                    raise DataFileError(f"{path}: has {n} channels, asked for channel {channel_index}")
            channel_name = names[channel_index] if channel_index < len(names) else str(channel_index)
        elif channel not in (None, 0, "0"):
            raise DataFileError(f"{path}: /entry/data/data has one channel, asked for {channel!r}")
        return [Segment(path, master, ds, 0, int(ds.shape[0]), image_nr_low=1)], channel_index, channel_name

    # ------------------------------------------------------------------ detector
    @staticmethod
    def _pixel_mask(path: Path, master: h5py.File, channel_name: str | None, shape) -> np.ndarray | None:
        names = ([f"{DETECTOR}/{channel_name}_channel/pixel_mask"] if channel_name else [])
        names += [DETECTOR + "/pixel_mask", SPECIFIC + "/pixel_mask"]
        for name in names:
            if name in master:
                mask = np.asarray(master[name][()])
                if mask.shape != tuple(shape):
                    raise DataFileError(f"{path}: {name} has shape {mask.shape}, the images {tuple(shape)}")
                return mask
        return None

    @staticmethod
    def _geometry(path: Path, meta: dict, shape, pixel_mask) -> Geometry:
        need = ("beam_center_fs_px", "beam_center_ss_px", "pixel_size_m", "clen_m")
        missing = [k for k in need if k not in meta]
        if missing:
            raise DataFileError(f"{path}: cannot build a geometry without {', '.join(missing)}; give one")
        y_size = meta.get("y_pixel_size_m", meta["pixel_size_m"])
        if abs(y_size - meta["pixel_size_m"]) > 1e-9 * meta["pixel_size_m"] * 1e3:
            raise DataFileError(f"{path}: non-square pixels ({meta['pixel_size_m']} x {y_size} m); give a geometry")
        gaps = None if pixel_mask is None else (pixel_mask & 1).astype(bool)
        try:
            return nxmx_geometry(tuple(shape), (meta["beam_center_fs_px"], meta["beam_center_ss_px"]),
                                 meta["pixel_size_m"], meta["clen_m"], gap_pixels=gaps,
                                 photon_energy_ev=meta.get("photon_energy_ev"),
                                 comment=f"from the NXmx metadata of {path.name} (cxlspeaks)")
        except GeometryError as exc:
            raise DataFileError(f"{path}: {exc}") from None
