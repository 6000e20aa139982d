"""Apply trained models to new frames: hit probability, then, for hits, photon energy, camera length and peaks.

Input: any HDF5 file with an (N, ss, fs) stack at /entry/data/data, its detector described by the CrystFEL
geometry stored in the file (/entry/instrument/detector/geometry, as cxlspeaks writes it) or given separately.
Frames are masked and binned exactly as for training (the bin factor is read from the hit checkpoint). Output: one
CSV row per frame: frame, hit_probability, is_hit, and for hits photon_energy_ev, photon_energy_probability,
clen_m, clen_probability and, with a peak network, n_peaks (empty for non-hits). With ``cxi_output`` the hits'
peaks also go to a CXI file that CrystFEL reads (/entry_1/result_1, raw convention, /entry/data/data an external
link to the frames), beside it the CrystFEL event list of the hits (``.lst``: ``peaks.cxi //N``) and a geometry
with ``peak_list = /entry_1/result_1`` and ``peak_list_type = cxi`` (``.geom``), so that
``indexamajig -i peaks.lst -g peaks.geom --peaks=cxi`` indexes the hits from cxlspeaks' peaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .features import binned_frames, mask_fraction
from .frames import FramesFile
from .io import (DATA, DataFileError, atomic_path, atomic_write_text, geometry_with_peak_list, write_cxi_peaks,
                 write_event_list)
from .train import load_checkpoint, model_from_checkpoint

PIPELINE_ATTRIBUTES = ("hit", "photon_energy", "clen")


class FramePredictor:
    """The hit, photon-energy and camera-length models, ready to score binned frames."""

    def __init__(self, checkpoints: dict[str, str | Path], threshold: float = 0.5):
        missing = [a for a in PIPELINE_ATTRIBUTES if a not in checkpoints]
        if missing:
            raise ValueError(f"the pipeline needs a checkpoint for {missing[0]!r}")
        self.checkpoints = {a: load_checkpoint(checkpoints[a], a) for a in PIPELINE_ATTRIBUTES}
        factors = {int(c.get("bin_factor", 1)) for c in self.checkpoints.values()}
        if len(factors) != 1:
            raise ValueError(f"the pipeline's checkpoints use different bin factors: {sorted(factors)}")
        self.bin_factor = factors.pop()
        self.models = {a: model_from_checkpoint(c) for a, c in self.checkpoints.items()}
        self.threshold = threshold

    def _inputs(self, model, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        channels = {"counts": counts, "mask": mask.expand_as(counts)}
        if "signal" in model.inputs:
            raise ValueError("a model that reads the expected signal (an oracle) cannot run on recorded frames")
        return torch.stack([channels[name] for name in model.inputs], dim=1)

    def predict(self, counts: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
        """Scores of binned frames (N, H, W) with the binned good-pixel fraction (H, W)."""
        shape = tuple(self.checkpoints["hit"]["input_shape"][1:])
        if counts.shape[1:] != shape:
            raise DataFileError(f"binned frames have shape {counts.shape[1:]}, the models were trained on {shape}")
        x = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        with torch.no_grad():
            p_hit = torch.sigmoid(self.models["hit"](self._inputs(self.models["hit"], x, m))[:, 0]).numpy()
            out = pd.DataFrame({"hit_probability": p_hit, "is_hit": p_hit >= self.threshold})
            for attribute, column in (("photon_energy", "photon_energy_ev"), ("clen", "clen_m")):
                probabilities = torch.softmax(self.models[attribute](
                    self._inputs(self.models[attribute], x, m)), dim=1).numpy()
                values = np.asarray(self.checkpoints[attribute]["class_values"])
                out[column] = np.where(out["is_hit"], values[probabilities.argmax(axis=1)], np.nan)
                out[f"{attribute}_probability"] = np.where(out["is_hit"], probabilities.max(axis=1), np.nan)
        return out


def run_pipeline(frames_path: str | Path, checkpoints: dict[str, str | Path], output: str | Path | None = None,
                 geometry_path: str | Path | None = None, frames: Sequence[int] | None = None,
                 threshold: float = 0.5, batch_size: int = 8, cxi_output: str | Path | None = None) -> pd.DataFrame:
    """Score the frames of one file (all, or the given indices); write the CSV when ``output`` is given.

    ``checkpoints`` holds hit, photon_energy and clen, and optionally ``peaks`` (the peak network), which finds the
    peaks of every hit; ``cxi_output`` (needs ``peaks``) writes them with the .lst and .geom beside it.
    """
    predictor = FramePredictor(checkpoints, threshold)
    peak_finder = None
    if checkpoints.get("peaks") is not None:
        from .peaknet import NetworkPeakFinder

        peak_finder = NetworkPeakFinder(checkpoints["peaks"])
    elif cxi_output is not None:
        raise ValueError("a CXI peak list needs the peak network's checkpoint")
    rows, peak_tables = [], []
    with FramesFile(frames_path, geometry_path) as source:
        geometry, mask = source.geometry, source.mask
        indices = source.check_indices(frames)
        binned_mask = mask_fraction(mask, predictor.bin_factor)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            block = np.stack([source.read(i) for i in chunk])
            scored = predictor.predict(binned_frames(block, mask, predictor.bin_factor), binned_mask)
            if peak_finder is not None:
                found = [peak_finder.find(frame, mask) if hit else None for frame, hit in zip(block, scored["is_hit"])]
                scored["n_peaks"] = [len(t) if t is not None else np.nan for t in found]
                peak_tables += [(i, t) for i, t in zip(chunk, found) if t is not None]
            rows.append(scored.assign(frame=chunk))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["frame"])
    table = table[["frame"] + [c for c in table.columns if c != "frame"]]
    if cxi_output is not None:
        write_peak_files(cxi_output, frames_path, geometry, peak_tables)
    if output is not None:
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False)
    return table


def write_peak_files(cxi_output: str | Path, frames_path: str | Path, geometry,
                     peak_tables: Sequence[tuple[int, pd.DataFrame]]) -> None:
    """The hits' peaks as CXI (linked to the frames), their CrystFEL event list and a geometry that reads both."""
    cxi_output = Path(cxi_output)
    hits = [int(i) for i, _ in peak_tables]
    write_cxi_peaks(cxi_output, [t for _, t in peak_tables], data_file=frames_path, frames=hits)
    write_event_list(cxi_output.with_suffix(".lst"), cxi_output.resolve(), hits)
    detector = geometry.replace_panels(data=DATA, dims=("%", "ss", "fs"))
    atomic_write_text(cxi_output.with_suffix(".geom"), geometry_with_peak_list(detector.to_geom_text()))


def run_pipeline_on_split(frames: dict[str, str | Path], manifests: dict[str, str | Path],
                          checkpoints: dict[str, str | Path], split_path: str | Path, output: str | Path,
                          summary_output: str | Path, subset: str = "test", threshold: float = 0.5) -> None:
    """The pipeline on every frame of a split subset, next to the truth; plus a one-row summary of the chain."""
    from .dataset import read_manifest, read_split

    split = read_split(split_path)
    chosen = split[split["subset"] == subset]
    tables = []
    for dataset, group in chosen.groupby("dataset", sort=True):
        scored = run_pipeline(frames[dataset], checkpoints, frames=group["frame"].to_numpy(), threshold=threshold)
        truth = read_manifest(manifests[dataset], dataset)[
            ["frame", "has_peaks", "photon_energy_ev", "clen_m", "flux"]].rename(
            columns={"has_peaks": "true_has_peaks", "photon_energy_ev": "true_photon_energy_ev",
                     "clen_m": "true_clen_m"})
        tables.append(scored.merge(truth, on="frame").assign(dataset=dataset))
    table = pd.concat(tables, ignore_index=True)
    table = table[["dataset"] + [c for c in table.columns if c != "dataset"]]
    hits = table[table["true_has_peaks"] & table["is_hit"]]
    summary = pd.DataFrame([{
        "frames": len(table),
        "hit_accuracy": float((table["is_hit"] == table["true_has_peaks"]).mean()),
        "photon_energy_accuracy_on_found_hits": float(np.isclose(hits["photon_energy_ev"],
                                                                 hits["true_photon_energy_ev"]).mean()),
        "clen_accuracy_on_found_hits": float(np.isclose(hits["clen_m"], hits["true_clen_m"]).mean()),
        "all_correct": float(((table["is_hit"] == table["true_has_peaks"])
                              & (~table["true_has_peaks"] | (np.isclose(table["photon_energy_ev"],
                                                                        table["true_photon_energy_ev"])
                                                             & np.isclose(table["clen_m"], table["true_clen_m"]))))
                             .mean()),
    }])
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(summary_output) as tmp:
        summary.to_csv(tmp, index=False)
