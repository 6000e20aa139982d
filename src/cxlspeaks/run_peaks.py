"""The peak finder of ``cxlspeaks run`` (:func:`cxlspeaks.pipeline.run_pipeline`): the finders it offers
(``--finder``), their loading and per-detector preparation, and the filter that keeps peaks on good pixels.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd


def peaks_on_good_pixels(table: pd.DataFrame, good: np.ndarray) -> pd.DataFrame:
    """The peaks whose position (nearest pixel, raw convention) is a good pixel."""
    if len(table) == 0:
        return table
    ss = np.clip(np.rint(table["ss"].to_numpy()).astype(int), 0, good.shape[0] - 1)
    fs = np.clip(np.rint(table["fs"].to_numpy()).astype(int), 0, good.shape[1] - 1)
    return table[good[ss, fs]].reset_index(drop=True)


#: peak finders of ``cxlspeaks run --finder`` -> the folder of their checkpoint under --models
PEAK_FINDERS = {"network": "peaks", "cascade": "peaks_cascade"}


class RunPeakFinder:
    """The peak finder of a run: ``network`` (:class:`~cxlspeaks.peaks.network.NetworkPeakFinder`) or ``cascade``
    (:class:`~cxlspeaks.peaks.cascade.CascadePeakFinder`, prepared for each frame's detector). Saturated pixels are
    left out of the centroids where the finder supports it (``centroid_good``). Raises
    :class:`CheckpointError` for a checkpoint of another finder (a missing one names its Snakemake target)."""

    def __init__(self, name: str, checkpoint: str | Path):
        self.name = name
        if name == "cascade":
            from .peaks.cascade import CascadePeakFinder

            self.finder = CascadePeakFinder(checkpoint)
        else:
            from .peaks.network import NetworkPeakFinder

            self.finder = NetworkPeakFinder(checkpoint)
        self.centroid_good = "centroid_good" in inspect.signature(self.finder.find).parameters
        self._geometry = None

    def find(self, values: np.ndarray, frame, geometry) -> pd.DataFrame:
        """Peaks of one frame's counts (``values``, zero on bad pixels) with its good and saturated masks."""
        if hasattr(self.finder, "prepare") and geometry is not None and geometry is not self._geometry:
            self.finder.prepare(geometry)
            self._geometry = geometry
        if self.centroid_good:
            return self.finder.find(values, frame.good, centroid_good=frame.good & ~frame.saturated)
        return self.finder.find(values, frame.good)
