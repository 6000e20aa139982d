"""Reading recorded frames one at a time, with the detector that describes them.

A frames file is any HDF5 file with an (N, ss, fs) stack at /entry/data/data; its detector is the CrystFEL
geometry stored in the file (/entry/instrument/detector/geometry, as cxlspeaks writes it) or one given
separately. Every read error becomes a one-line :class:`~cxlspeaks.io.DataFileError` naming the file.
"""

from __future__ import annotations

from functools import cached_property
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from .geometry import Geometry, parse_geometry, read_geometry
from .io import DATA, GEOMETRY_TEXT, DataFileError, open_h5


def frames_geometry(frames_path: str | Path, geometry_path: str | Path | None = None) -> Geometry:
    """The detector of a frames file: an explicit geometry file, else the geometry text stored in the file."""
    if geometry_path is not None:
        return read_geometry(geometry_path)
    with open_h5(frames_path) as h5:
        if GEOMETRY_TEXT not in h5:
            raise DataFileError(f"{frames_path}: has no {GEOMETRY_TEXT}; give the detector with --geometry")
        return parse_geometry(h5[GEOMETRY_TEXT][()].decode())


def radius_px(geometry: Geometry) -> np.ndarray:
    """Distance of every pixel centre from the beam axis, in pixels of its panel (NaN outside every panel)."""
    pos = geometry.pixel_positions_m
    res = np.full(geometry.shape, np.nan)
    for p in geometry.panels:
        res[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = p.res
    return np.hypot(pos[..., 0], pos[..., 1]) * res


def panel_index(geometry: Geometry) -> np.ndarray:
    """Panel number of every pixel (-1 outside every panel)."""
    index = np.full(geometry.shape, -1, dtype=np.int32)
    for k, p in enumerate(geometry.panels):
        index[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = k
    return index


class FramesFile:
    """An open frames file: ``read(i)`` returns frame i as float32 (ss, fs), checked against the detector.

    Raises :class:`DataFileError` for a missing/corrupt file, no /entry/data/data, a stack that is not integer
    or float numbers (bool, complex, strings, compound), or one that is not (N, ss, fs) of the detector's shape.
    """

    def __init__(self, path: str | Path, geometry_path: str | Path | None = None):
        self.path = Path(path)
        self.geometry = frames_geometry(path, geometry_path)
        self.h5 = open_h5(path)
        if DATA not in self.h5:
            self.h5.close()
            raise DataFileError(f"{path}: has no dataset {DATA}")
        self.data = self.h5[DATA]
        if not isinstance(self.data, h5py.Dataset) or self.data.dtype.kind not in "uif":
            kind = self.data.dtype if isinstance(self.data, h5py.Dataset) else "a group"
            self.h5.close()
            raise DataFileError(f"{path}: {DATA} is {kind}, not photon counts (integer or float numbers)")
        if self.data.ndim != 3 or self.data.shape[1:] != self.geometry.shape:
            shape = self.data.shape
            self.h5.close()
            raise DataFileError(f"{path}: {DATA} has shape {shape}, expected (N, {self.geometry.shape[0]}, "
                                f"{self.geometry.shape[1]}) for its detector")

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @cached_property
    def mask(self) -> np.ndarray:
        return self.geometry.mask

    def check_indices(self, frames: Sequence[int] | None) -> np.ndarray:
        """The given frame indices (all when None), checked to lie in the file."""
        indices = np.arange(self.n_frames) if frames is None else np.asarray(frames, dtype=int)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_frames):
            bad = indices.max() if indices.max() >= self.n_frames else indices.min()
            raise DataFileError(f"{self.path}: holds {self.n_frames} frames, asked for frame {bad}")
        return indices

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as float32 (ss, fs); truncated/corrupt chunks, non-finite values and negative counts of an
        integer stack are one-line errors (a float stack, e.g. photons after dark subtraction, may go negative)."""
        try:
            frame = np.asarray(self.data[int(i)], dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DataFileError(f"{self.path}: cannot read frame {i} (truncated or corrupt: "
                                f"{str(exc).splitlines()[0]})") from None
        if not np.isfinite(frame).all():
            raise DataFileError(f"{self.path}: frame {i} holds NaN or infinite values")
        if self.data.dtype.kind == "i" and frame.min(initial=0) < 0:
            raise DataFileError(f"{self.path}: frame {i} holds negative counts ({frame.min():g}) on an integer "
                                "detector")
        return frame

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> "FramesFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_in_frames(finder, frames: dict[str, str | Path], rows: pd.DataFrame, seconds: list | None = None,
                   **find_kwargs) -> list[pd.DataFrame]:
    """Run a peak finder (``find(frame, good)``, optionally ``prepare(geometry)`` per detector) over the
    (dataset, frame) rows of a table, returning one peak table per row in row order; the seconds spent in
    ``find`` per frame (not reading) are appended to ``seconds`` when given."""
    out: dict = {}
    for dataset, group in rows.groupby("dataset", sort=True):
        with FramesFile(frames[dataset]) as source:
            source.check_indices(group["frame"].to_numpy())
            if hasattr(finder, "prepare"):
                finder.prepare(source.geometry)
            for position, i in zip(group.index, group["frame"]):
                frame = source.read(i)
                start = time.perf_counter()
                out[position] = finder.find(frame, source.mask, **find_kwargs)
                if seconds is not None:
                    seconds.append(time.perf_counter() - start)
    return [out[p] for p in rows.index]
