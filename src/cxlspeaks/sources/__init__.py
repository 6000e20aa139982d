"""Every way frames come into cxlspeaks (files, event lists, the Eiger stream), behind one interface
(:mod:`cxlspeaks.sources.base`).

``open_source(path, geometry=None, channel=None)`` picks the source by content:

- ``.lst``: a CrystFEL event list (:class:`EventListSource`);
- an NXmx master file (/entry/data/data_000001 or /entry/instrument/detector/detectorSpecific):
  :class:`NXmxSource` (legacy external links or the v2024.2 VDS, ``channel`` by index or name);
- a CXI file (/entry_1): :class:`CXISource`;
- any other HDF5 file with /entry/data/data or the geometry's ``data`` location: :class:`StackSource`.

Usage::

    with open_source("run_master.h5") as source:      # a geometry is built from the NXmx metadata
        for frame in source:                          # Frame(event, counts, good, saturated, source_file, ...)
            use(frame.counts, frame.good, frame.geometry or source.geometry)
"""

from __future__ import annotations

from pathlib import Path

import h5py

from ..geometry import Geometry
from ..io import DataFileError, open_h5
from .base import Frame, FrameSource, good_pixel_mask
from .cxi import CXISource
from .eventlist import EventListSource
from .nxmx import NXmxSource
from .stack import StackSource

__all__ = ["CXISource", "EventListSource", "Frame", "FrameSource", "NXmxSource", "StackSource", "good_pixel_mask",
           "open_source", "source_kind"]


def source_kind(path: str | Path) -> str:
    """``lst``, ``nxmx``, ``cxi`` or ``stack`` from the file's name and content; DataFileError otherwise."""
    path = Path(path)
    if path.suffix == ".lst":
        return "lst"
    with open_h5(path) as h5:
        if "/entry/data/data_000001" in h5 or "/entry/instrument/detector/detectorSpecific" in h5 or (
                _has_link(h5, "/entry/data", "data_000001")):
            return "nxmx"
        # A frame stack at /entry/data/data comes first: cxlspeaks frames files (and the CXI files `--cxi` writes)
        # also hold /entry_1/result_1 peak lists, which do not make them Cheetah CXI files.
        if isinstance(h5.get("/entry/data/data"), h5py.Dataset):
            return "stack"
        if "/entry_1" in h5:
            return "cxi"
    raise DataFileError(f"{path}: unknown layout (not an NXmx master, CXI file, frame stack at /entry/data/data "
                        "or .lst event list)")


def _has_link(h5: h5py.File, group: str, name: str) -> bool:
    """True when ``group/name`` is a link, even a dangling one (a missing data file)."""
    try:
        return group in h5 and h5[group].get(name, getlink=True) is not None
    except (KeyError, OSError):
        return False


def open_source(path: str | Path, geometry: Geometry | str | Path | None = None, channel: int | str | None = None,
                data_path: str | None = None) -> FrameSource:
    """Open frames by content (see the module docstring). ``geometry`` is a Geometry or a geometry file path;
    ``data_path`` overrides the frames dataset of a stack or CXI file. Raises DataFileError (one line)."""
    try:
        kind = source_kind(path)
    except DataFileError:
        if geometry is None and data_path is None:
            raise
        kind = "stack"  # the frames may be at the geometry's ``data`` location (or data_path)
    if kind == "lst":
        return EventListSource(path, geometry=geometry, channel=channel)
    if kind == "nxmx":
        return NXmxSource(path, geometry=geometry, channel=channel)
    if channel is not None:
        raise DataFileError(f"{path}: only NXmx master files have channels")
    if kind == "cxi":
        return CXISource(path, geometry=geometry, data_path=data_path)
    return StackSource(path, geometry=geometry, data_path=data_path)
