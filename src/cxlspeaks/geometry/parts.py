"""The parts of a detector description: panels, bad regions, mask specifications and per-frame value references
(CrystFEL semantics, see ``man crystfel_geometry``; the model is :class:`cxlspeaks.geometry.model.Geometry`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import HC_EV_A


class GeometryError(ValueError):
    """A geometry file or geometry parameter that cannot describe a detector."""


#: Unit factors to SI (metres, eV) of the units a geometry file may give.
LENGTH_UNITS = {"m": 1.0, "mm": 1e-3}
ENERGY_UNITS = {"eV": 1.0, "keV": 1e3}
WAVELENGTH_UNITS = {"m": 1.0, "A": 1e-10}


@dataclass(frozen=True)
class ValueRef:
    """A value the data file holds instead of the geometry: an HDF5 path read per frame, and its unit.

    ``quantity`` is ``clen`` (unit m or mm), ``coffset`` (m or mm), ``photon_energy`` (eV or keV) or
    ``wavelength`` (m or A). A scalar dataset applies to every frame of its file, a 1-D dataset of N values gives
    frame i value i.
    """

    quantity: str
    path: str
    unit: str

    def to_si(self, value: float) -> float:
        """The stored number in metres (clen, coffset) or eV (photon_energy, also for a wavelength)."""
        value = float(value)
        if self.quantity in ("clen", "coffset"):
            return value * LENGTH_UNITS[self.unit]
        if self.quantity == "photon_energy":
            return value * ENERGY_UNITS[self.unit]
        return HC_EV_A / (value * WAVELENGTH_UNITS[self.unit] * 1e10)

    def text(self) -> str:
        return f"{self.path} {self.unit}"


@dataclass(frozen=True)
class MaskSpec:
    """One of a panel's up to 8 bad-pixel masks (CrystFEL ``maskN_data/_file/_goodbits/_badbits``).

    A pixel is bad unless every bit of ``goodbits`` is set, and bad if any bit of ``badbits`` is set. ``file``
    None means the mask is in the image data file (per frame if it has the frame dimension).
    """

    index: int
    data: str | None = None
    file: str | None = None
    goodbits: int = 0
    badbits: int = 0

    def good(self, values: np.ndarray) -> np.ndarray:
        """bool array: True where the integer mask ``values`` leave the pixel good."""
        values = np.asarray(values).astype(np.int64)
        return ((values & self.goodbits) == self.goodbits) & ((values & self.badbits) == 0)


@dataclass
class Panel:
    """One rectangular detector panel (CrystFEL semantics; lengths in pixels unless named).

    ``min_ss``/``max_ss`` are slab rows (data rows + ``slab_offset_ss``). ``flags`` are CrystFEL's value flags
    (``("lessthan" | "morethan" | "equal", value)``, strict comparisons on the recorded value).
    """

    name: str
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    corner_x: float
    corner_y: float
    res: float
    clen_m: float
    fs_vec: tuple[float, float, float] = (1.0, 0.0, 0.0)
    ss_vec: tuple[float, float, float] = (0.0, 1.0, 0.0)
    coffset_m: float = 0.0
    adu_per_photon: float | None = None
    data: str | None = None
    dims: tuple[str, ...] = ("%", "ss", "fs")
    extra: dict[str, str] = field(default_factory=dict)
    masks: tuple[MaskSpec, ...] = ()
    flags: tuple[tuple[str, float], ...] = ()
    no_index: bool = False
    mask_edge_pixels: int = 0
    max_adu: float | None = None
    clen_ref: ValueRef | None = None
    coffset_ref: ValueRef | None = None
    slab_offset_ss: int = 0

    @property
    def n_fs(self) -> int:
        return self.max_fs - self.min_fs + 1

    @property
    def n_ss(self) -> int:
        return self.max_ss - self.min_ss + 1

    @property
    def module_index(self) -> tuple[int, ...]:
        """The numeric (module) dims of the data array, in order (empty for a 2-D slab)."""
        return tuple(int(d) for d in self.dims if d not in ("%", "ss", "fs"))

    @property
    def data_ss_range(self) -> tuple[int, int]:
        """Inclusive ss range in the data array (slab rows less the module offset)."""
        return self.min_ss - self.slab_offset_ss, self.max_ss - self.slab_offset_ss

    @property
    def distance_m(self) -> float:
        """Distance of the panel origin plane from the crystal along z: clen + coffset."""
        return self.clen_m + self.coffset_m

    def corner_m(self) -> np.ndarray:
        """Lab position (m) of the first pixel's corner."""
        return np.array([self.corner_x / self.res, self.corner_y / self.res, self.distance_m])

    def fs_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along fs."""
        return np.asarray(self.fs_vec, dtype=float) / self.res

    def ss_m(self) -> np.ndarray:
        """Lab displacement (m) of one pixel step along ss."""
        return np.asarray(self.ss_vec, dtype=float) / self.res


@dataclass
class BadRegion:
    """A region that records nothing: a pixel range (optionally on one panel) or a lab x/y range in pixels."""

    name: str
    min_fs: int | None = None
    max_fs: int | None = None
    min_ss: int | None = None
    max_ss: int | None = None
    min_x: float | None = None
    max_x: float | None = None
    min_y: float | None = None
    max_y: float | None = None
    panel: str | None = None

    @property
    def in_pixels(self) -> bool:
        return self.min_x is None
