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
