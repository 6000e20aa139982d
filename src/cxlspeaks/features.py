"""Model inputs: frames binned to a manageable size, with photon-count-aware transforms.

A 4.5 Mpx Eiger frame is summed over ``factor x factor`` pixel bins (photon counts add, so a binned pixel is still
Poisson) after padding to a multiple of the factor; masked pixels (module gaps) contribute nothing and each bin
carries the fraction of good pixels it holds. Binning before any dense layer keeps every model small (no
17.8 M-input linear layer) and fast on a CPU; the Anscombe transform 2 sqrt(n + 3/8) makes Poisson counts
approximately unit-variance Gaussian, so a network sees comparable noise in empty and bright regions.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .geometry import parse_geometry
from .io import (CLEN, DATA, GEOMETRY_TEXT, HAS_PEAKS, PHOTON_ENERGY, SIGNAL, DataFileError, atomic_path,
                 bitshuffle_lz4, open_h5)

FEATURES = "/features"


def bin_sum(images: np.ndarray, factor: int) -> np.ndarray:
    """Sum (..., ss, fs) images over factor x factor bins, zero-padding the edges to a multiple of factor."""
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    *lead, ss, fs = images.shape
    pad_ss, pad_fs = -ss % factor, -fs % factor
    if pad_ss or pad_fs:
        images = np.pad(images, [(0, 0)] * len(lead) + [(0, pad_ss), (0, pad_fs)])
    n_ss, n_fs = (ss + pad_ss) // factor, (fs + pad_fs) // factor
    return images.reshape(*lead, n_ss, factor, n_fs, factor).sum(axis=(-3, -1))


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Variance-stabilising transform of Poisson counts: 2 sqrt(n + 3/8) (Anscombe 1948)."""
    return 2.0 * np.sqrt(np.asarray(counts, dtype=np.float32) + 0.375)


def binned_frames(frames: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """Counts of (N, ss, fs) frames summed over bins, masked pixels excluded (float32 (N, ss/f, fs/f))."""
    return bin_sum(np.where(mask, frames, 0).astype(np.float32), factor)


def bin_index(shape: tuple[int, int], factor: int) -> np.ndarray:
    """Flat index, in the ``(ceil(ss / factor), ceil(fs / factor))`` layout of :func:`bin_sum`, of the bin of every
    pixel of an (ss, fs) frame: int32 (ss * fs,), row-major."""
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    ss, fs = shape
    n_fs = -(-fs // factor)
    return ((np.arange(ss, dtype=np.int32) // factor)[:, None] * n_fs
            + (np.arange(fs, dtype=np.int32) // factor)[None, :]).ravel()


_EXACT_F32 = float(2 ** 24)   # float32 holds every integer up to 2**24: integer sums below it are order-free


def binned_sparse(bins: np.ndarray, values: np.ndarray, binned_shape: tuple[int, int]) -> np.ndarray | None:
    """Sum ``values`` (the good non-zero pixels of one frame) into ``bins`` (their :func:`bin_index` entries;
    entries >= the number of bins are left out, so a bin index that maps masked pixels past the end saves the caller
    from selecting the good pixels).

    Returns float32 ``binned_shape``, equal to :func:`binned_frames` of the frame (its zeros and masked pixels
    add nothing), or None when that cannot be guaranteed: :func:`binned_frames` adds float32 numbers, which is exact
    in any order only when every value is an integer after the float32 conversion and every bin's sum of absolute
    values stays within 2**24 (the caller then bins the frame with :func:`binned_frames`)."""
    values = np.asarray(values)
    v32 = values.astype(np.float32)
    n = int(np.prod(binned_shape))
    if values.dtype.kind not in "biu":
        with np.errstate(invalid="ignore"):
            if not np.all(np.floor(v32) == v32):       # fractions or NaN (inf is caught below)
                return None
    sums = np.bincount(bins, weights=v32, minlength=n)[:n]
    if len(v32):
        magnitude = sums if values.dtype.kind in "bu" else \
            np.bincount(bins, weights=np.abs(v32), minlength=n)[:n]
        if not magnitude.max() <= _EXACT_F32:          # also False for inf or NaN
            return None
    return sums.astype(np.float32).reshape(binned_shape)


def binned_frames_sparse(frames: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """:func:`binned_frames` from the non-zero good pixels only (a sparse photon-counting frame costs a pass to
    find them plus work proportional to their number); the same float32 (N, ss/f, fs/f) result, bit for bit."""
    frames = np.asarray(frames)
    *lead, ss, fs = frames.shape
    shape = (-(-ss // factor), -(-fs // factor))
    bins = bin_index((ss, fs), factor)
    goods = np.broadcast_to(np.asarray(mask, bool), frames.shape).reshape(-1, ss * fs)
    out = np.empty((*lead, *shape), np.float32).reshape(-1, *shape)
    for i, (frame, good) in enumerate(zip(frames.reshape(-1, ss * fs), goods)):
        nz = np.flatnonzero(frame != 0)
        nz = nz[good[nz]]
        binned = binned_sparse(bins[nz], frame[nz], shape)
        out[i] = binned if binned is not None else \
            binned_frames(frame.reshape(1, ss, fs), good.reshape(ss, fs), factor)[0]
    return out.reshape(*lead, *shape)


def mask_fraction(mask: np.ndarray, factor: int) -> np.ndarray:
    """Fraction of good pixels in every bin."""
    return (bin_sum(mask.astype(np.float32), factor) / factor ** 2).astype(np.float32)


def binned_radius_m(geometry, factor: int) -> np.ndarray:
    """Mean distance from the beam axis, in the detector plane, of the good pixels of every bin.

    r = sqrt(x^2 + y^2) of each pixel centre (metres, the geometry's lab frame: the beam along z through x = y = 0,
    so the geometry's beam centre and panel positions place it), averaged over the bin's good pixels.

    Returns:
        float32 (ceil(ss / factor), ceil(fs / factor)) metres; -1 where a bin holds no good pixel.
    """
    pos = geometry.pixel_positions_m
    good = geometry.mask & np.isfinite(pos[..., 0])
    radius = np.where(good, np.hypot(pos[..., 0], pos[..., 1]), 0.0)
    n_good = bin_sum(good.astype(np.float64), factor)
    mean = bin_sum(radius, factor) / np.maximum(n_good, 1)
    return np.where(n_good > 0, mean, -1.0).astype(np.float32)


def write_features(frames_path: str | Path, output: str | Path, factor: int, dataset: str = "") -> None:
    """Bin every frame of a frames file (counts and expected signal) and write the model inputs to HDF5.

    Output: /features/counts and /features/signal float32 (N, ss/f, fs/f), /features/mask_fraction
    float32 (ss/f, fs/f), /features/radius_m float32 (ss/f, fs/f)
    (:func:`binned_radius_m`), /features/has_peaks (N,), and the photon energy and camera length as attributes.
    """
    with open_h5(frames_path) as src:
        for name in (DATA, SIGNAL, HAS_PEAKS, PHOTON_ENERGY, CLEN, GEOMETRY_TEXT):
            if name not in src:
                raise DataFileError(f"{frames_path}: has no dataset {name}")
        geometry = parse_geometry(src[GEOMETRY_TEXT][()].decode())
        data = src[DATA]
        if data.ndim != 3 or data.shape[1:] != geometry.shape:
            raise DataFileError(f"{frames_path}: {DATA} has shape {data.shape}, the geometry needs (N, "
                                f"{geometry.shape[0]}, {geometry.shape[1]})")
        mask = geometry.mask
        n = data.shape[0]
        binned_shape = bin_sum(np.zeros((1, *geometry.shape), np.float32), factor).shape[1:]
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            group = out.create_group(FEATURES)
            kwargs = dict(dtype=np.float32, chunks=(1, *binned_shape), **bitshuffle_lz4())
            counts = group.create_dataset("counts", shape=(n, *binned_shape), **kwargs)
            signal = group.create_dataset("signal", shape=(n, *binned_shape), **kwargs)
            for i in range(n):
                counts[i] = binned_frames(data[i], mask, factor)
                signal[i] = binned_frames(src[SIGNAL][i], mask, factor)
            group.create_dataset("mask_fraction", data=mask_fraction(mask, factor))
            group.create_dataset("radius_m", data=binned_radius_m(geometry, factor))
            group.create_dataset("has_peaks", data=src[HAS_PEAKS][()])
            group.attrs.update({"photon_energy_ev": float(src[PHOTON_ENERGY][()]),
                                "clen_m": float(src[CLEN][()]), "bin_factor": factor, "dataset": dataset,
                                "frames_file": str(frames_path)})
