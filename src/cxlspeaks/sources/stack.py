"""Plain HDF5 frame stacks and cxlspeaks frames files: an (N, ss, fs) array at /entry/data/data (or the
geometry's ``data`` location, any layout its ``dim`` lines describe).

The detector is the geometry given (a :class:`~cxlspeaks.geometry.Geometry` or a geometry file path), else the
CrystFEL geometry text cxlspeaks stores in its frames files (/entry/instrument/detector/geometry). Metadata: the
geometry's photon energy and camera length (per frame where the geometry names HDF5 paths), else the frames
file's /entry/instrument/beam/photon_energy_ev. Events are ``//i``. Any integer or float dtype, any HDF5 filter
hdf5plugin provides (bitshuffle, LZ4, ...).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..geometry import Geometry, GeometryError, parse_geometry, read_geometry
from ..io import DATA, GEOMETRY_TEXT, PHOTON_ENERGY, DataFileError, open_h5
from .hdf5 import HDF5FrameSource, Segment


def load_geometry(geometry: Geometry | str | Path | None, h5: h5py.File | None, path: Path) -> Geometry | None:
    """The geometry given (object or file), else the geometry text stored in ``h5``, else None."""
    if isinstance(geometry, Geometry):
        return geometry
    if geometry is not None:
        return read_geometry(geometry)
    if h5 is not None and GEOMETRY_TEXT in h5:
        try:
            return parse_geometry(h5[GEOMETRY_TEXT][()].decode())
        except GeometryError as exc:
            raise DataFileError(f"{path}: {GEOMETRY_TEXT}: {exc}") from None
    return None


def data_location(geometry: Geometry, h5: h5py.File, path: Path, default: str | tuple[str, ...] = DATA) -> str:
    """The frames dataset: the geometry's ``data`` (one for all panels) when the file has it, else the first
    of ``default`` the file has."""
    named = {p.data for p in geometry.panels if p.data is not None}
    if len(named) > 1:
        raise DataFileError(f"{path}: the geometry's panels read {len(named)} different datasets; one is supported")
    candidates = list(named) + ([default] if isinstance(default, str) else list(default))
    for name in candidates:
        if name in h5 and isinstance(h5[name], h5py.Dataset):
            return name
    raise DataFileError(f"{path}: has no frames dataset (looked for {', '.join(dict.fromkeys(candidates))})")


class StackSource(HDF5FrameSource):
    """An HDF5 stack. ``StackSource(path, geometry=None, data_path=None)``; iterate for Frames, ``read(i)`` for one.

    Raises DataFileError (one line naming the file) for a missing file, dataset or geometry, or a frame shape
    that is not the geometry's.
    """

    def __init__(self, path: str | Path, geometry: Geometry | str | Path | None = None, data_path: str | None = None,
                 default_data: str | tuple[str, ...] = DATA, metadata: dict | None = None):
        path = Path(path)
        h5 = open_h5(path)
        try:
            geom = load_geometry(geometry, h5, path)
            if geom is None:
                raise DataFileError(f"{path}: has no {GEOMETRY_TEXT}; give the detector geometry (--geometry)")
            name = data_path or data_location(geom, h5, path, default_data)
            if name not in h5:
                raise DataFileError(f"{path}: has no dataset {name}")
            dataset = h5[name]
            frame_dims = sum(1 for d in geom.panels[0].dims if d == "%")
            n = int(dataset.shape[0]) if frame_dims and dataset.ndim else 1
            meta = dict(metadata or {})
            if geom.photon_energy_ev is None and geom.photon_energy_ref is None and PHOTON_ENERGY in h5:
                value = np.asarray(h5[PHOTON_ENERGY][()])
                if value.size == 1:
                    meta["photon_energy_ev"] = float(value.reshape(-1)[0])
        except BaseException:
            h5.close()
            raise
        super().__init__(path, geom, [Segment(path, h5, dataset, 0, n)], metadata=meta, files=[h5])
        self.data_path = name
