"""The CrystFEL files of ``cxlspeaks run --cxi``: the hits' peaks (CXI), their event list (.lst), a geometry that
reads both (.geom) and the unit cell (.cell), for ``indexamajig -i X.lst -g X.geom -p X.cell --peaks=cxi``.

Two ways to give indexamajig the frames:

- linked (a single HDF5 stack, (N, ss, fs) at one dataset, no mask arrays in the file): /entry/data/data of the
  CXI is an external link to the input stack, peak-list row r is input frame r and the .lst names ``X.cxi //r``
  for each hit r;
- frames in the CXI (every other source: NXmx master files, event lists, CXI files, multi-module or
  multi-channel layouts): the hit frames themselves go to /entry/data/data (float32 (H, ss, fs) slabs, masked
  pixels 0, bitshuffle-LZ4) with their good-pixel masks in /entry/data/mask (uint8, 1 = bad); row r is the r-th
  hit, and /entry_1/result_1/event, source_file and source_frame say which input frame it was. The .geom reads
  ``data = /entry/data/data``, ``dim0 = %`` and ``mask0_data = /entry/data/mask``, ``mask0_badbits = 0x1``.

The hit frames are spooled to a temporary HDF5 file beside the CXI while the run goes (memory: one frame), then
joined with the peak list and renamed into place, so a killed run leaves no CXI that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from .cxi import geometry_with_peak_list, write_cxi_peaks, write_event_list
from .geometry.parts import MaskSpec
from .io import DATA, atomic_write_text, bitshuffle_lz4

CXI_MASK = "/entry/data/mask"


def linkable(source) -> bool:
    """Whether the CXI can link to the source's frames: one plain HDF5 stack file, (N, ss, fs) slabs, no mask
    arrays stored in the data file."""
    from .sources import CXISource, StackSource

    if not isinstance(source, StackSource) or isinstance(source, CXISource) or len(source.segments) != 1:
        return False
    dataset = source.segments[0].dataset
    panels = source.geometry.panels
    return (dataset.ndim == 3 and all(tuple(p.dims) == ("%", "ss", "fs") for p in panels)
            and tuple(dataset.shape[1:]) == tuple(source.geometry.shape)
            and not any(m.file is None for p in panels for m in p.masks))


class FrameSpool:
    """Hit frames written one at a time to a temporary HDF5 file beside ``cxi_output``."""

    def __init__(self, cxi_output: str | Path):
        self.cxi_output = Path(cxi_output)
        self.cxi_output.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.cxi_output.with_name(f".{self.cxi_output.name}.frames-{os.getpid()}.tmp")
        self.h5 = h5py.File(self.path, "w")
        self.data = self.mask = None
        self.events: list[str] = []
        self.files: list[str] = []
        self.frames: list[int] = []

    def add(self, index: int, event: str, source_file: str, counts: np.ndarray, good: np.ndarray) -> None:
        shape = counts.shape
        if self.data is None:
            kwargs = dict(chunks=(1, *shape), maxshape=(None, *shape), **bitshuffle_lz4())
            self.data = self.h5.create_dataset(DATA, shape=(0, *shape), dtype=np.float32, **kwargs)
            self.mask = self.h5.create_dataset(CXI_MASK, shape=(0, *shape), dtype=np.uint8, **kwargs)
        n = self.data.shape[0]
        for ds in (self.data, self.mask):
            ds.resize(n + 1, axis=0)
        self.data[n] = np.where(good, counts, 0).astype(np.float32)
        self.mask[n] = (~good).astype(np.uint8)
        self.frames.append(int(index))
        self.events.append(str(event))
        self.files.append(str(source_file))

    def discard(self) -> None:
        try:
            self.h5.close()
        finally:
            self.path.unlink(missing_ok=True)

    def finish(self, peak_tables: Sequence[pd.DataFrame], shape: tuple[int, int]) -> None:
        """Write the CXI: the peak list (row r = the r-th added frame) joined with the spooled frames."""
        if self.data is None:  # no hits: an empty stack of the detector's shape
            kwargs = dict(chunks=(1, *shape), maxshape=(None, *shape))
            self.data = self.h5.create_dataset(DATA, shape=(0, *shape), dtype=np.float32, **kwargs)
            self.mask = self.h5.create_dataset(CXI_MASK, shape=(0, *shape), dtype=np.uint8, **kwargs)
        self.h5.close()
        part = self.cxi_output.with_name(f".{self.cxi_output.name}.part-{os.getpid()}.tmp")
        try:
            strings = h5py.string_dtype()
            write_cxi_peaks(part, peak_tables, extra={
                "event": np.array(self.events, dtype=object).astype(strings),
                "source_file": np.array(self.files, dtype=object).astype(strings),
                "source_frame": np.asarray(self.frames, dtype=np.int64)})
            with h5py.File(part, "a") as out, h5py.File(self.path, "r") as spool:
                group = out.require_group(DATA.rsplit("/", 1)[0])
                for name in (DATA, CXI_MASK):
                    spool.copy(spool[name], group, name.rsplit("/", 1)[1])
            os.replace(part, self.cxi_output)
        finally:
            part.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)


def write_peak_files(cxi_output: str | Path, geometry, peak_tables: Sequence[tuple[int, pd.DataFrame]],
                     cell: str | None = None, data_file: str | Path | None = None, data_path: str = DATA,
                     spool: FrameSpool | None = None) -> None:
    """The hits' peaks as CXI, their CrystFEL event list, a geometry that reads both and (``cell``: the text of a
    CrystFEL unit cell file) the .cell for ``indexamajig -p``. Linked to ``data_file:data_path`` (rows = input
    frames), or, with ``spool``, holding the spooled hit frames (rows = hits in order)."""
    cxi_output = Path(cxi_output)
    tables = [t for _, t in peak_tables]
    if spool is not None:
        spool.finish(tables, geometry.shape)
        rows = list(range(len(tables)))
        mask = MaskSpec(index=0, data=CXI_MASK, badbits=1)
        detector = geometry.replace_panels(data=DATA, dims=("%", "ss", "fs"), masks=(mask,), flags=(),
                                           slab_offset_ss=0)
    else:
        rows = [int(i) for i, _ in peak_tables]
        write_cxi_peaks(cxi_output, tables, data_file=data_file, data_path=data_path, frames=rows)
        detector = geometry.replace_panels(data=DATA, dims=("%", "ss", "fs"))
    write_event_list(cxi_output.with_suffix(".lst"), cxi_output.resolve(), rows)
    atomic_write_text(cxi_output.with_suffix(".geom"), geometry_with_peak_list(detector.to_geom_text()))
    if cell is not None:
        atomic_write_text(cxi_output.with_suffix(".cell"), cell)
