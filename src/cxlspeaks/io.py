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
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, delete it if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
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
