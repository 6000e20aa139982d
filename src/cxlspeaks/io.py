"""File input and output: atomic writes, Eiger-style HDF5 frame stacks (bitshuffle-LZ4 through hdf5plugin).

Every writer goes to a temporary file in the destination folder and renames it into place only when complete,
so a killed job never leaves a file that a rerun would trust. Readers raise :class:`DataFileError` with one line
that names the file and the problem.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import h5py
import hdf5plugin
import numpy as np


class DataFileError(ValueError):
    """A missing, unreadable, truncated or mis-shaped data file."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, delete it if not.

    Leftovers of an earlier killed writer of the same file (``.NAME.*.part``) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.part"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600; the result should be readable like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def bitshuffle_lz4() -> dict:
    """h5py keyword arguments for the Eiger/Dectris compression: bitshuffle + LZ4 (HDF5 filter 32008)."""
    return dict(hdf5plugin.Bitshuffle(cname="lz4"))


def create_frame_stack(group: h5py.Group, name: str, n_frames: int, frame_shape: tuple[int, int],
                       dtype, compress: bool = True) -> h5py.Dataset:
    """Create an (N, ss, fs) stack chunked one frame per chunk, compressed with bitshuffle-LZ4."""
    kwargs = bitshuffle_lz4() if compress else {}
    return group.create_dataset(name, shape=(n_frames, *frame_shape), dtype=dtype,
                                chunks=(1, *frame_shape), **kwargs)


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file, turning a missing or corrupt file into a one-line :class:`DataFileError`."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise DataFileError(f"{path}: file not found")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def read_dataset(path: str | Path, name: str, ndim: int | None = None) -> np.ndarray:
    """Read one dataset fully; errors name the file and the dataset."""
    with open_h5(path) as h5:
        if name not in h5:
            raise DataFileError(f"{path}: has no dataset {name}")
        try:
            data = h5[name][()]
        except OSError as exc:
            raise DataFileError(f"{path}: cannot read {name} ({str(exc).splitlines()[0]})") from None
    if ndim is not None and np.ndim(data) != ndim:
        raise DataFileError(f"{path}: {name} has {np.ndim(data)} dimensions, expected {ndim}")
    return data


# ---------------------------------------------------------------------- frame files (the output contract)
DATA = "/entry/data/data"
SIGNAL = "/entry/data/signal"
LABEL = "/entry/data/label"
BACKGROUND = "/entry/data/background"
HAS_PEAKS = "/entry/data/has_peaks"
WATER_SCALE = "/entry/data/water_scale"
RESULT = "/entry_1/result_1"
PEAK_FIELDS = {"peakXPosRaw": np.float32, "peakYPosRaw": np.float32, "peakTotalIntensity": np.float32,
               "peakH": np.int32, "peakK": np.int32, "peakL": np.int32}
CRYSTAL_AXES = ("astar", "bstar", "cstar")
PHOTON_ENERGY = "/entry/instrument/beam/photon_energy_ev"
CLEN = "/entry/instrument/detector/clen_m"
GEOMETRY_TEXT = "/entry/instrument/detector/geometry"


class FrameStackWriter:
    """Writes an (N, ss, fs) frame stack in the cxlspeaks layout, atomically (renamed into place on close).

    Layout: /entry/data/{data uint32, signal float32, label uint8} (N, ss, fs) one chunk per frame, bitshuffle-LZ4;
    /entry/data/has_peaks bool (N,); /entry/data/water_scale float32 (N,); /entry_1/result_1/nPeaks (N,) and
    peakXPosRaw, peakYPosRaw, peakTotalIntensity, peakH, peakK, peakL (N, max_peaks) in the raw CXI convention;
    /entry/crystal/astar, bstar, cstar (N, 3) float64 1/m and quaternion (N, 4).
    """

    def __init__(self, path: str | Path, n_frames: int, frame_shape: tuple[int, int], max_peaks: int):
        self.path = Path(path)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self.h5 = h5py.File(self._tmp, "w")
        self.n_frames, self.max_peaks = n_frames, max_peaks
        entry = self.h5.require_group("/entry/data")
        self.data = create_frame_stack(entry, "data", n_frames, frame_shape, np.uint32)
        self.signal = create_frame_stack(entry, "signal", n_frames, frame_shape, np.float32)
        self.label = create_frame_stack(entry, "label", n_frames, frame_shape, np.uint8)
        self.has_peaks = entry.create_dataset("has_peaks", shape=(n_frames,), dtype=bool)
        self.water_scale = entry.create_dataset("water_scale", shape=(n_frames,), dtype=np.float32)
        result = self.h5.require_group(RESULT)
        self.n_peaks = result.create_dataset("nPeaks", shape=(n_frames,), dtype=np.int32)
        self.peaks = {name: result.create_dataset(name, shape=(n_frames, max_peaks), dtype=dtype,
                                                  chunks=(1, max_peaks), **bitshuffle_lz4())
                      for name, dtype in PEAK_FIELDS.items()}
        crystal = self.h5.require_group("/entry/crystal")
        self.axes = {name: crystal.create_dataset(name, shape=(n_frames, 3), dtype=np.float64)
                     for name in CRYSTAL_AXES}
        self.quaternion = crystal.create_dataset("quaternion", shape=(n_frames, 4), dtype=np.float64)

    def write_frame(self, i: int, counts: np.ndarray, signal: np.ndarray | None, label: np.ndarray | None,
                    peaks: dict[str, np.ndarray] | None = None, astar_bstar_cstar: np.ndarray | None = None,
                    quaternion: np.ndarray | None = None, water_scale: float = 1.0) -> None:
        """Frame ``i``: counts, expected signal, label, peak arrays (keys of PEAK_FIELDS), orientation and the
        frame's water thickness factor (its expected water is water_scale x /entry/data/background).

        ``signal``/``label`` None write zeros (an empty frame); peak lists longer than max_peaks are an error.
        """
        self.data[i] = counts
        self.water_scale[i] = water_scale
        if signal is not None:
            self.signal[i] = signal
        if label is not None:
            self.label[i] = label
        n = 0 if peaks is None else len(peaks["peakXPosRaw"])
        if n > self.max_peaks:
            raise ValueError(f"{self.path}: frame {i} has {n} peaks, more than max_peaks = {self.max_peaks}")
        self.n_peaks[i] = n
        self.has_peaks[i] = n > 0
        if n:
            for name, dset in self.peaks.items():
                row = np.zeros(self.max_peaks, dtype=dset.dtype)
                row[:n] = peaks[name]
                dset[i] = row
        if astar_bstar_cstar is not None:
            for j, name in enumerate(CRYSTAL_AXES):
                self.axes[name][i] = np.asarray(astar_bstar_cstar)[:, j]
        if quaternion is not None:
            self.quaternion[i] = quaternion

    def copy_frame(self, source: h5py.File, j: int, i: int) -> None:
        """Copy frame ``j`` of another file in this layout to frame ``i``, moving compressed chunks as they are."""
        for name in ("data", "signal", "label"):
            src = source["/entry/data/" + name]
            dst = {"data": self.data, "signal": self.signal, "label": self.label}[name]
            if src.compression_opts == dst.compression_opts and src.chunks == dst.chunks:
                filter_mask, chunk = src.id.read_direct_chunk((j, 0, 0))
                dst.id.write_direct_chunk((i, 0, 0), chunk, filter_mask)
            else:
                dst[i] = src[j]
        n = int(source[RESULT + "/nPeaks"][j])
        if n > self.max_peaks:
            raise ValueError(f"{self.path}: frame {i} has {n} peaks, more than max_peaks = {self.max_peaks}")
        self.n_peaks[i] = n
        self.has_peaks[i] = bool(source[HAS_PEAKS][j])
        self.water_scale[i] = source[WATER_SCALE][j]
        for name, dset in self.peaks.items():
            row = np.zeros(self.max_peaks, dtype=dset.dtype)
            src_row = source[RESULT + "/" + name][j]
            row[:min(len(src_row), self.max_peaks)] = src_row[:self.max_peaks]
            dset[i] = row
        for name in CRYSTAL_AXES:
            self.axes[name][i] = source["/entry/crystal/" + name][j]
        self.quaternion[i] = source["/entry/crystal/quaternion"][j]

    def set_metadata(self, photon_energy_ev: float, clen_m: float, geometry_text: str,
                     background: np.ndarray | None = None, attrs: dict | None = None) -> None:
        """Beam and detector values, the CrystFEL geometry text and the expected water image."""
        self.h5.create_dataset(PHOTON_ENERGY, data=float(photon_energy_ev))
        self.h5[PHOTON_ENERGY].attrs["units"] = "eV"
        self.h5.create_dataset(CLEN, data=float(clen_m))
        self.h5[CLEN].attrs["units"] = "m"
        self.h5.create_dataset(GEOMETRY_TEXT, data=geometry_text)
        if background is not None:
            self.h5.create_dataset(BACKGROUND, data=np.asarray(background, dtype=np.float32),
                                   **bitshuffle_lz4())
        for key, value in (attrs or {}).items():
            self.h5["/entry"].attrs[key] = value

    def close(self) -> None:
        """Finish the file and move it into place."""
        self.h5.close()
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Discard the partial file."""
        self.h5.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "FrameStackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------- CXI peak lists and CrystFEL files
# (imports here because this section was appended; pandas is used only by these functions)
from typing import Sequence  # noqa: E402

import pandas as pd  # noqa: E402

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
