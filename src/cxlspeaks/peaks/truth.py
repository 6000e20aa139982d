"""True reflection lists: the expected peaks stored in a frames file (/entry_1/result_1), read as true-peak tables
(``fs``, ``ss``, ``photons`` float64 in the raw convention, ``photons`` = the expected photons of the reflection;
Miller indices ``h``, ``k``, ``l`` int64) for :mod:`cxlspeaks.peaks.matching` to score the finders against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..cxi import peak_list_shape
from ..io import RESULT, DataFileError, open_h5

TRUE_PEAK_COLUMNS = ("fs", "ss", "photons", "h", "k", "l")


def _empty_true_table() -> pd.DataFrame:
    return pd.DataFrame({"fs": np.empty(0), "ss": np.empty(0), "photons": np.empty(0),
                         "h": np.empty(0, np.int64), "k": np.empty(0, np.int64), "l": np.empty(0, np.int64)})


def read_true_peaks(frames_path, frames: Sequence[int] | None = None) -> list[pd.DataFrame]:
    """The true reflection lists of ``frames`` (all frames when None, in the order given) of a frames file.

    Reads /entry_1/result_1/{nPeaks, peakXPosRaw, peakYPosRaw, peakTotalIntensity, peakH, peakK, peakL}; each
    table has fs, ss, photons (float64, raw convention; photons = expected photons) and h, k, l (int64), in the
    file's order. A missing, corrupt or mis-shaped file, or a frame out of range, raises a one-line
    :class:`DataFileError` naming the file.
    """
    fields = {"fs": "peakXPosRaw", "ss": "peakYPosRaw", "photons": "peakTotalIntensity",
              "h": "peakH", "k": "peakK", "l": "peakL"}
    with open_h5(frames_path) as h5:
        try:
            counts_ds, width = peak_list_shape(h5, frames_path, list(fields.values()))
            n_frames = counts_ds.shape[0]
            rows = np.arange(n_frames) if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= n_frames):
                bad = rows[(rows < 0) | (rows >= n_frames)][0]
                raise DataFileError(f"{frames_path}: frame {bad} out of range (the file has {n_frames} frames)")
            unique = np.unique(rows)
            counts_all = counts_ds[()].astype(np.int64)
            counts = counts_all[unique]
            if counts.size and (counts.min() < 0 or counts.max() > width):
                raise DataFileError(f"{frames_path}: {RESULT}/nPeaks holds counts outside 0..{width}")
            m = int(counts.max()) if counts.size else 0
            data = {}
            for column, name in fields.items():
                dset = h5[f"{RESULT}/{name}"]
                if m == 0 or unique.size == 0:
                    data[column] = np.zeros((unique.size, m), dtype=dset.dtype)
                elif unique.size == n_frames:
                    data[column] = dset[:, :m]
                else:
                    data[column] = dset[unique, :m]
        except OSError as exc:
            raise DataFileError(f"{frames_path}: cannot read the true peaks ({str(exc).splitlines()[0]})") from None
    position = {int(f): i for i, f in enumerate(unique)}
    tables = []
    for frame in rows:
        i = position[int(frame)]
        n = int(counts[i])
        if n == 0:
            tables.append(_empty_true_table())
            continue
        tables.append(pd.DataFrame({
            "fs": data["fs"][i, :n].astype(np.float64), "ss": data["ss"][i, :n].astype(np.float64),
            "photons": data["photons"][i, :n].astype(np.float64),
            "h": data["h"][i, :n].astype(np.int64), "k": data["k"][i, :n].astype(np.int64),
            "l": data["l"][i, :n].astype(np.int64)}))
    return tables


def read_true_peaks_of_rows(frames: dict, rows: pd.DataFrame) -> list[pd.DataFrame]:
    """The true reflection lists of a table's (dataset, frame) rows, in row order; ``frames`` maps each dataset
    to its frames file (one read per dataset)."""
    truth_at: dict = {}
    for dataset, group in rows.groupby("dataset", sort=True):
        truth_at.update(zip(group.index, read_true_peaks(frames[dataset], group["frame"].to_numpy())))
    return [truth_at[i] for i in rows.index]
