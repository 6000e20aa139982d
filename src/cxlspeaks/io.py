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
#: Per-frame nuisance values, one (N,) dataset per name (simulate/nuisances.py RECORDED), when a dataset has any.
NUISANCES = "/entry/data/nuisances"
#: Ice spots (never Bragg peaks): a flat table, one row per spot: frame (int64), fs, ss (raw convention), photons
#: (expected), d_A (the ring's d spacing); written for every dataset with nuisances (maybe with no row).
ICE_SPOTS = "/entry/ice_spots"
ICE_SPOT_FIELDS = {"frame": np.int64, "fs": np.float32, "ss": np.float32, "photons": np.float32,
                   "d_A": np.float32}
#: The dataset's bad-pixel map (uint32 (ss, fs), DECTRIS pixel_mask bits; simulate/detector_response.py).
PIXEL_MASK = "/entry/instrument/detector/pixel_mask"


def write_columns(h5: h5py.File, group: str, columns: dict[str, np.ndarray],
                  descriptions: dict[str, str] | None = None) -> None:
    """Write equal-length 1-D ``columns`` as datasets ``group/<name>`` (dtype as given), each with its
    ``description`` attribute when ``descriptions`` names it."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"{h5.filename}: columns of {group} differ in length {sorted(lengths)}")
    for name, values in columns.items():
        h5.create_dataset(f"{group}/{name}", data=np.asarray(values))
        if descriptions and name in descriptions:
            h5[f"{group}/{name}"].attrs["description"] = descriptions[name]


def read_columns(h5: h5py.File, group: str) -> dict[str, np.ndarray]:
    """The 1-D datasets of ``group`` (empty when the file has no such group)."""
    if group not in h5:
        return {}
    return {name: h5[f"{group}/{name}"][()] for name in h5[group]}


class FrameStackWriter:
    """Writes an (N, ss, fs) frame stack in the cxlspeaks layout, atomically (renamed into place on close).

    Layout: /entry/data/{data uint32, signal float32, label uint8} (N, ss, fs) one chunk per frame, bitshuffle-LZ4;
    /entry/data/has_peaks bool (N,); /entry/data/water_scale float32 (N,); /entry_1/result_1/nPeaks (N,) and
    peakXPosRaw, peakYPosRaw, peakTotalIntensity, peakH, peakK, peakL (N, max_peaks) in the raw CXI convention;
    /entry/crystal/astar, bstar, cstar (N, 3) float64 1/m and quaternion (N, 4). Datasets with nuisances add
    :data:`NUISANCES`, :data:`ICE_SPOTS` and :data:`PIXEL_MASK` (written with :func:`write_columns`).
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

