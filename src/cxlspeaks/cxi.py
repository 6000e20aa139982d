"""CXI peak lists and the CrystFEL files that go with them (.lst event lists, geometry with a peak list, .cell).

Readers raise :class:`~cxlspeaks.io.DataFileError` with one line naming the file; writers are atomic
(:func:`~cxlspeaks.io.atomic_path`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from .io import DATA, RESULT, DataFileError, atomic_path, atomic_write_text, open_h5

CXI_PEAK_FIELDS = ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakSNR")
CXI_PEAK_COLUMNS = {"peakXPosRaw": "fs", "peakYPosRaw": "ss", "peakTotalIntensity": "photons", "peakSNR": "snr"}
CXI_VERSION = 150
CXI_FRAME = "frame"           # /entry_1/result_1/frame: the source-stack frame of each written peak list
_CXI_BLOCK_ROWS = 512          # rows assembled in memory at once by write_cxi_peaks


def _cap_peak_table(table: pd.DataFrame, max_peaks: int) -> pd.DataFrame:
    """The ``max_peaks`` highest-ranked rows, in their original order (rank: score, else snr, else photons;
    NaN ranks last, ties keep the earlier row); a table without any of these keeps its first rows."""
    if len(table) <= max_peaks:
        return table
    for column in ("score", "snr", "photons"):
        if column in table.columns:
            rank = table[column].to_numpy(np.float64)
            rank = np.where(np.isnan(rank), -np.inf, rank)
            keep = np.sort(np.argsort(-rank, kind="stable")[:max_peaks])
            return table.iloc[keep]
    return table.iloc[:max_peaks]


def write_cxi_peaks(path: str | Path, peak_tables: Sequence[pd.DataFrame], max_peaks: int = 2048,
                    data_file: str | Path | None = None, data_path: str = DATA,
                    frames: Sequence[int] | None = None, extra: dict[str, np.ndarray] | None = None) -> None:
    """Write peak tables as a CXI peak list that CrystFEL's ``indexamajig --peaks=cxi`` reads, atomically.

    Layout: ``/cxi_version`` (int 150); /entry_1/result_1/nPeaks int32 (R,) and peakXPosRaw = fs,
    peakYPosRaw = ss, peakTotalIntensity = photons, peakSNR = snr, float32 (R, max_peaks), zero-padded, raw
    convention (CrystFEL adds 0.5). A missing ``photons`` or ``snr`` column is written as 0; ``fs``/``ss`` must be
    finite. A table longer than ``max_peaks`` keeps its ``max_peaks`` highest-``score`` peaks (``snr`` if it has
    no score column, then ``photons``; ties keep the earlier row), in their original order.

    Row r of the peak list is always frame r of the source stack, because indexamajig reads the peaks of event
    ``//r`` from row r of the file it opens. Without ``frames``, table i is row i (R = number of tables). With
    ``frames`` (the source-stack frame of each table, distinct, >= 0), table i goes to row ``frames[i]``,
    R = max(frames) + 1, the rows of unlisted frames hold nPeaks = 0, and /entry_1/result_1/frame (int64, one
    per table, in table order) records which rows were written; :func:`read_cxi_peaks` returns those tables in
    that order. The .lst for indexamajig then names this file with those frames:
    ``write_event_list(lst, cxi_path, frames)``.

    ``data_file``: /entry/data/data of the new file becomes an HDF5 external link to ``data_file:data_path``, so
    one file offers indexamajig both the frames and the peaks (the geometry's ``data = /entry/data/data`` and
    ``dim0 = %`` read through the link). The stored file name is relative to the folder of ``path`` (computed on
    resolved paths); HDF5 resolves a relative external-link name against the folder of the file holding the link
    (after HDF5_EXT_PREFIX / an elink prefix, if set) before the current directory, so the pair can be moved
    together and read from anywhere. ``data_file`` must exist with ``data_path`` of at least 3 dimensions and at
    least R frames. Compressed frames still need the filter plugin in the reader (for CrystFEL:
    ``HDF5_PLUGIN_PATH=$(python3 -c 'import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)')``).

    ``extra``: more datasets, written as given (not scattered by ``frames``): a name starting with "/" is an
    absolute path, any other is under /entry_1/result_1.
    """
    path = Path(path)
    max_peaks = int(max_peaks)
    if max_peaks < 1:
        raise ValueError(f"{path}: max_peaks must be >= 1, got {max_peaks}")
    n_tables = len(peak_tables)
    if frames is None:
        rows = np.arange(n_tables, dtype=np.int64)
    else:
        rows = np.asarray(frames).reshape(-1)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"{path}: frames must be integers")
        rows = rows.astype(np.int64)
        if rows.size != n_tables:
            raise ValueError(f"{path}: {rows.size} frames for {n_tables} peak tables")
        if rows.size and (rows.min() < 0 or np.unique(rows).size != rows.size):
            raise ValueError(f"{path}: frames must be distinct and >= 0")
    n_rows = int(rows.max()) + 1 if rows.size else 0

    link_name = None
    if data_file is not None:
        data_file = Path(data_file)
        with open_h5(data_file) as src:
            if data_path not in src or not isinstance(src[data_path], h5py.Dataset):
                raise DataFileError(f"{data_file}: has no dataset {data_path}")
            shape = src[data_path].shape
        if len(shape) < 3:
            raise DataFileError(f"{data_file}: {data_path} has {len(shape)} dimensions, expected (N, ss, fs)")
        if n_rows > shape[0]:
            raise ValueError(f"{path}: frame {n_rows - 1} is beyond {data_file}:{data_path} ({shape[0]} frames)")
        link_name = os.path.relpath(data_file.resolve(), path.parent.resolve())

    standard = {"nPeaks", CXI_FRAME, *CXI_PEAK_FIELDS}
    for name in extra or {}:
        if not name.startswith("/") and name in standard:
            raise ValueError(f"{path}: extra dataset {name} would replace a peak-list field")

    columns: dict[int, dict[str, np.ndarray]] = {}
    counts = np.zeros(n_rows, dtype=np.int32)
    for i, (row, table) in enumerate(zip(rows, peak_tables)):
        missing = [c for c in ("fs", "ss") if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: peak table {i} has no column {', '.join(missing)}")
        table = _cap_peak_table(table, max_peaks)
        values = {}
        for field, column in CXI_PEAK_COLUMNS.items():
            values[field] = (table[column].to_numpy(np.float32) if column in table.columns
                             else np.zeros(len(table), np.float32))
        if not (np.isfinite(values["peakXPosRaw"]).all() and np.isfinite(values["peakYPosRaw"]).all()):
            raise ValueError(f"{path}: peak table {i} has non-finite fs/ss")
        counts[row] = len(table)
        columns[int(row)] = values

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("cxi_version", data=np.int32(CXI_VERSION))
            if link_name is not None:
                h5.require_group(DATA.rsplit("/", 1)[0])
                h5[DATA] = h5py.ExternalLink(link_name, data_path)
            result = h5.require_group(RESULT)
            result.create_dataset("nPeaks", data=counts)
            layout = (dict(chunks=(1, max_peaks), compression="gzip", compression_opts=4, shuffle=True)
                      if n_rows else {})
            dsets = {field: result.create_dataset(field, shape=(n_rows, max_peaks), dtype=np.float32,
                                                  fillvalue=0, **layout) for field in CXI_PEAK_FIELDS}
            written = np.sort(rows)
            for start in np.unique(written // _CXI_BLOCK_ROWS) * _CXI_BLOCK_ROWS:
                stop = min(int(start) + _CXI_BLOCK_ROWS, n_rows)
                block_rows = written[(written >= start) & (written < stop)]
                for field, dset in dsets.items():
                    block = np.zeros((stop - start, max_peaks), dtype=np.float32)
                    for row in block_rows:
                        v = columns[int(row)][field]
                        block[row - start, :v.size] = v
                    dset[start:stop] = block
            if frames is not None:
                result.create_dataset(CXI_FRAME, data=rows)
            for name, value in (extra or {}).items():
                target = name if name.startswith("/") else f"{RESULT}/{name}"
                h5.create_dataset(target, data=np.asarray(value))


def peak_list_shape(h5: h5py.File, path, required: Sequence[str], optional: Sequence[str] = ()) -> tuple:
    """(nPeaks dataset, max_peaks) of the peak list at /entry_1/result_1 of an open file, after checking that
    nPeaks and the ``required`` fields exist, nPeaks is 1-D and every field present is (N, max_peaks)."""
    for name in ("nPeaks", *required):
        if f"{RESULT}/{name}" not in h5:
            raise DataFileError(f"{path}: has no dataset {RESULT}/{name}")
    n_ds = h5[f"{RESULT}/nPeaks"]
    if n_ds.ndim != 1:
        raise DataFileError(f"{path}: {RESULT}/nPeaks has {n_ds.ndim} dimensions, expected 1")
    n_rows = n_ds.shape[0]
    width = None
    for name in (*required, *(o for o in optional if f"{RESULT}/{o}" in h5)):
        shape = h5[f"{RESULT}/{name}"].shape
        if len(shape) != 2 or shape[0] != n_rows or (width is not None and shape[1] != width):
            raise DataFileError(f"{path}: {RESULT}/{name} has shape {shape}, expected ({n_rows}, max_peaks) "
                                "like the other peak fields")
        width = shape[1]
    return n_ds, width


def _cxi_layout(h5: h5py.File, path) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated (counts, rows, width) of a CXI peak list open in ``h5`` (peakSNR may be absent)."""
    n_ds, width = peak_list_shape(h5, path, CXI_PEAK_FIELDS[:3], CXI_PEAK_FIELDS[3:])
    n_rows = n_ds.shape[0]
    counts = n_ds[()].astype(np.int64)
    if counts.size and (counts.min() < 0 or counts.max() > width):
        raise DataFileError(f"{path}: {RESULT}/nPeaks holds counts outside 0..{width}")
    if f"{RESULT}/{CXI_FRAME}" in h5:
        rows = h5[f"{RESULT}/{CXI_FRAME}"][()]
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise DataFileError(f"{path}: {RESULT}/{CXI_FRAME} is not a list of frame numbers")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
            raise DataFileError(f"{path}: {RESULT}/{CXI_FRAME} points outside the {n_rows} peak-list rows")
    else:
        rows = np.arange(n_rows, dtype=np.int64)
    return counts, rows, width


def read_cxi_peak_frames(path: str | Path) -> np.ndarray:
    """The source-stack frame (= peak-list row) of each table :func:`read_cxi_peaks` returns, int64."""
    with open_h5(path) as h5:
        try:
            return _cxi_layout(h5, path)[1]
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read the peak list ({str(exc).splitlines()[0]})") from None


def read_cxi_peaks(path: str | Path) -> list[pd.DataFrame]:
    """The peak tables of a CXI peak list (as :func:`write_cxi_peaks` writes it, or Cheetah-like).

    One table per written frame (the rows listed in /entry_1/result_1/frame when present, in that order; else
    every row), columns fs, ss, photons, snr (float64; snr NaN when the file has no peakSNR), the file's order.
    A missing, corrupt or mis-shaped file raises a one-line :class:`DataFileError` naming it. The external data
    link is not followed.
    """
    with open_h5(path) as h5:
        try:
            counts, rows, _ = _cxi_layout(h5, path)
            m = int(counts[rows].max()) if rows.size else 0
            data = {}
            for field, column in CXI_PEAK_COLUMNS.items():
                name = f"{RESULT}/{field}"
                if name in h5:
                    data[column] = h5[name][:, :m] if m else np.zeros((len(counts), 0), np.float32)
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read the peak list ({str(exc).splitlines()[0]})") from None
    tables = []
    for row in rows:
        n = int(counts[row])
        tables.append(pd.DataFrame({
            column: (data[column][row, :n].astype(np.float64) if column in data else np.full(n, np.nan))
            for column in CXI_PEAK_COLUMNS.values()}))
    return tables


def write_event_list(path: str | Path, data_file: str | Path, frames: Sequence[int]) -> None:
    """A CrystFEL event list (.lst for ``indexamajig -i``): one line ``"{data_file} //{frame}"`` per frame, atomic.

    ``data_file`` is written as given: indexamajig resolves a relative name against its working directory (or
    its ``--prefix``), not against the .lst's folder.
    """
    frames = np.asarray(frames).reshape(-1)
    if frames.size and (not np.issubdtype(frames.dtype, np.integer) or frames.min() < 0):
        raise ValueError(f"{path}: frames must be integers >= 0")
    name = str(data_file)
    if not name or any(c in name for c in "\n\r") or name != name.strip():
        raise ValueError(f"{path}: unusable data file name {name!r}")
    atomic_write_text(path, "".join(f"{name} //{int(f)}\n" for f in frames))


_PEAK_LIST_KEYS = ("peak_list", "peak_list_type")


def geometry_with_peak_list(geometry_text: str, peak_list: str = RESULT) -> str:
    """CrystFEL geometry text with the global lines ``peak_list = {peak_list}`` and ``peak_list_type = cxi``.

    These CrystFEL 0.10 geometry keywords (crystfel_geometry(5)) tell ``indexamajig --peaks=cxi`` where the CXI
    peak-list group (nPeaks, peakXPosRaw, peakYPosRaw, peakTotalIntensity) is in each data file. Existing
    peak_list / peak_list_type lines are replaced, at the position of the first one; otherwise the two lines go
    before the first non-comment line. Everything else is kept, so applying it twice gives the same text.
    """
    if not peak_list or any(c in peak_list for c in ";=\n\r") or peak_list != peak_list.strip():
        raise ValueError(f"unusable peak_list location {peak_list!r}")
    new = [f"peak_list = {peak_list}", "peak_list_type = cxi"]
    out: list[str] = []
    replaced = False
    for line in geometry_text.splitlines():
        content = line.split(";", 1)[0]
        key = content.split("=", 1)[0].strip() if "=" in content else None
        if key in _PEAK_LIST_KEYS:
            if not replaced:
                out.extend(new)
                replaced = True
            continue
        out.append(line)
    if not replaced:
        first = next((i for i, line in enumerate(out) if line.strip() and not line.strip().startswith(";")),
                     len(out))
        out[first:first] = new
    return "\n".join(out) + "\n"
