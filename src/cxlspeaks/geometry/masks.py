"""From data arrays to the detector slab, and the masks a geometry names (mask arrays, value flags).

A frame's *block* is its data with the frame placeholder dims (``%``) indexed away: (ss, fs) for a slab layout,
(module..., ss, fs) for a multi-module array. :func:`to_slab` places it into the (ss, fs) slab of
:class:`~cxlspeaks.geometry.model.Geometry`; mask arrays are laid out like blocks and go through the same mapping.

The good-pixel mask of a frame (see :mod:`cxlspeaks.sources.base`) is the product of

- ``Geometry.mask``: panels, bad regions, ``no_index``, ``mask_edge_pixels``;
- :func:`mask_arrays_good`: the ``maskN_*`` arrays (``(value & goodbits) == goodbits`` and ``value & badbits == 0``,
  CrystFEL's rule), from a mask file (static) or from the image file (static or per frame);
- :func:`flags_good`: ``flag_lessthan``/``flag_morethan``/``flag_equal`` on the recorded values (strict).

Errors: a missing mask file or mask dataset is a one-line :class:`~cxlspeaks.io.DataFileError` naming the file
and the geometry key; a block of the wrong shape a :class:`GeometryError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .model import Geometry
from .parts import GeometryError, MaskSpec, Panel


def n_frame_dims(geometry: Geometry) -> int:
    """How many leading ``%`` dims the data arrays have (the same for every panel)."""
    counts = {p.dims.count("%") for p in geometry.panels}
    if len(counts) != 1:
        raise GeometryError("panels differ in their number of frame placeholder dims (%)")
    return counts.pop()


def block_shape(geometry: Geometry) -> tuple[int, ...]:
    """The smallest block (one frame's data without ``%`` dims) that holds every panel."""
    if not geometry.has_modules:
        return geometry.shape
    modules = np.array([p.module_index for p in geometry.panels])
    rows = max(p.data_ss_range[1] for p in geometry.panels) + 1
    return tuple(int(m) + 1 for m in modules.max(axis=0)) + (rows, geometry.shape[1])


def check_block(geometry: Geometry, shape: tuple[int, ...], what: str = "data") -> None:
    """Raise GeometryError unless a block of ``shape`` holds exactly the geometry's slab or every module."""
    need = block_shape(geometry)
    if geometry.has_modules:
        ok = len(shape) == len(need) and all(s >= n for s, n in zip(shape, need))
    else:
        ok = tuple(shape) == need
    if not ok:
        raise GeometryError(f"{what} has frame shape {tuple(shape)}, the geometry needs "
                            f"{'at least ' if geometry.has_modules else ''}{need}")


def panel_region(panel: Panel, block: np.ndarray) -> np.ndarray:
    """The panel's (n_ss, n_fs) pixels of a block."""
    ss0, ss1 = panel.data_ss_range
    return block[panel.module_index + (slice(ss0, ss1 + 1), slice(panel.min_fs, panel.max_fs + 1))]


def to_slab(geometry: Geometry, block: np.ndarray, fill=0) -> np.ndarray:
    """The (ss, fs) slab of one frame's block: the block itself for a slab layout (no copy), else the modules
    stacked along ss (pixels outside every panel hold ``fill``; ``Geometry.mask`` marks them not good)."""
    check_block(geometry, block.shape)
    if not geometry.has_modules:
        return block
    slab = np.full(geometry.shape, fill, dtype=block.dtype)
    for p in geometry.panels:
        slab[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = panel_region(p, block)
    return slab


def mask_arrays_good(geometry: Geometry, read: Callable[[Panel, MaskSpec], np.ndarray | None]) -> np.ndarray:
    """bool (ss, fs): True where every mask array of every panel leaves the pixel good.

    ``read(panel, spec)`` returns the mask block for the spec (laid out like a data block) or None to skip it
    (e.g. a per-frame mask handled elsewhere).
    """
    good = np.ones(geometry.shape, dtype=bool)
    for p in geometry.panels:
        for spec in p.masks:
            values = read(p, spec)
            if values is None:
                continue
            check_block(geometry, values.shape, f"mask {spec.data}")
            good[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] &= spec.good(panel_region(p, values))
    return good


def flags_good(geometry: Geometry, slab: np.ndarray) -> np.ndarray:
    """bool (ss, fs): False where a panel's value flags mark the recorded value (strict comparisons)."""
    good = np.ones(geometry.shape, dtype=bool)
    for p in geometry.panels:
        if not p.flags:
            continue
        region = slab[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1]
        bad = np.zeros(region.shape, dtype=bool)
        for kind, value in p.flags:
            bad |= {"lessthan": region < value, "morethan": region > value, "equal": region == value}[kind]
        good[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = ~bad
    return good


def mask_file_path(geometry: Geometry, spec: MaskSpec) -> Path:
    """Where a ``maskN_file`` is: absolute, else beside the geometry file, else in the working directory (as
    CrystFEL). A missing file is a DataFileError naming the geometry key."""
    from ..io import DataFileError

    path = Path(os.path.expanduser(spec.file))
    candidates = [path] if path.is_absolute() else (
        ([Path(geometry.source_path).parent / path] if geometry.source_path else []) + [Path.cwd() / path])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = f"{geometry.source_path}: " if geometry.source_path else ""
    raise DataFileError(f"{where}mask{spec.index}_file = {spec.file}: mask file not found")


def file_masks_good(geometry: Geometry) -> np.ndarray:
    """bool (ss, fs) of the mask arrays kept in separate mask files (``maskN_file``), read once."""
    from ..io import DataFileError, open_h5

    def read(panel: Panel, spec: MaskSpec):
        if spec.file is None:
            return None
        path = mask_file_path(geometry, spec)
        with open_h5(path) as h5:
            if spec.data not in h5:
                raise DataFileError(f"{path}: has no mask dataset {spec.data} (mask{spec.index}_data)")
            return h5[spec.data][()]

    return mask_arrays_good(geometry, read)
