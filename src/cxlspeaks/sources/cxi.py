"""CXI files as Cheetah and OM write them: frames at the geometry's ``data`` location, else
/entry_1/data_1/data, else /entry_1/instrument_1/detector_1/data; one (N, ss, fs) slab holding every panel (panels
at different ss/fs ranges of the slab, as the geometry's ``min/max_fs/ss`` say), or any layout the geometry's
``dim`` lines describe. Per-frame masks (``mask = /entry_1/data_1/mask``, N x slab) are honoured.

Metadata (when the geometry does not give them): the photon energy from /entry_1/instrument_1/source_1/energy
(J, CXI convention, scalar or per frame) and the detector distance from /entry_1/instrument_1/detector_1/distance
(m), reported as ``cxi_distance_m`` (the geometry's clen stays the detector's distance). A CXI file carries no
CrystFEL geometry: one must be given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import Geometry
from ..io import DataFileError
from .stack import StackSource

CXI_DATA = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
CXI_ENERGY_J = "/entry_1/instrument_1/source_1/energy"
CXI_DISTANCE_M = "/entry_1/instrument_1/detector_1/distance"
EV_J = 1.602176634e-19


class CXISource(StackSource):
    """A Cheetah/OM CXI file: ``CXISource(path, geometry)``; frames as :class:`StackSource`, events ``//i``."""

    def __init__(self, path: str | Path, geometry: Geometry | str | Path | None = None, data_path: str | None = None):
        if geometry is None:
            raise DataFileError(f"{path}: a CXI file carries no CrystFEL geometry; give one (--geometry)")
        super().__init__(path, geometry, data_path=data_path, default_data=CXI_DATA)
        h5 = self.segments[0].h5
        self._energy = self._per_frame(h5, CXI_ENERGY_J) if self.geometry.photon_energy_ev is None else None
        self._distance = self._per_frame(h5, CXI_DISTANCE_M)

    def _per_frame(self, h5, name: str) -> np.ndarray | None:
        if name not in h5:
            return None
        values = np.asarray(h5[name][()], dtype=float).reshape(-1)
        if values.size == 1:
            return np.full(len(self), values[0])
        if values.size != len(self):
            raise DataFileError(f"{self.path}: {name} has {values.size} values for {len(self)} frames")
        return values

    def read(self, i: int):
        frame = super().read(i)
        if self._energy is not None and "photon_energy_ev" not in frame.metadata:
            frame.metadata["photon_energy_ev"] = float(self._energy[i] / EV_J)
        if self._distance is not None:
            frame.metadata["cxi_distance_m"] = float(self._distance[i])
        return frame
