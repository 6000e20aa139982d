"""Apply trained models to new frames: hit probability, then, for hits, photon energy, camera length and peaks.

Input: any HDF5 file with an (N, ss, fs) stack at /entry/data/data, its detector described by the CrystFEL
geometry stored in the file (/entry/instrument/detector/geometry, as cxlspeaks writes it) or given separately.
Frames are masked and binned exactly as for training (the bin factor is read from the hit checkpoint). Output: one
CSV row per frame: frame, hit_probability, is_hit, and for hits photon_energy_ev, photon_energy_probability,
clen_m, clen_probability and, with a peak network, n_peaks (an integer; empty for non-hits). With ``cxi_output``
the hits' peaks also go to a CXI file that CrystFEL reads (/entry_1/result_1, raw convention, /entry/data/data an
external link to the frames), beside it the CrystFEL event list of the hits (``.lst``: ``peaks.cxi //N``), a
geometry with ``peak_list = /entry_1/result_1`` and ``peak_list_type = cxi`` (``.geom``) and a CrystFEL unit cell
file (``.cell``: a copy of ``cell_file``, else the 1IC6 cell with a comment saying so), so that
``indexamajig -i peaks.lst -g peaks.geom -p peaks.cell --peaks=cxi`` indexes the hits from cxlspeaks' peaks.

Order of the checks, all before any frame is scored: output paths (:func:`check_run_paths`), the geometry and the
frames file (:class:`~cxlspeaks.frames.FramesFile`, :func:`check_stack`), then the checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .cxi import geometry_with_peak_list, write_cxi_peaks, write_event_list
from .features import binned_frames, mask_fraction
from .frames import FramesFile
from .io import DATA, DataFileError, atomic_path, atomic_write_text

PIPELINE_ATTRIBUTES = ("hit", "photon_energy", "clen")
CXI_SIBLINGS = (".lst", ".geom", ".cell")


class RunArgumentError(ValueError):
    """An output path or option of a pipeline run that cannot be honoured (one line naming it)."""


# ---------------------------------------------------------------------- checks before any frame is scored
def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file: os.path.samefile when both exist, else equal resolved paths."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_writable(label: str, path: Path) -> None:
    """Refuse an output path that is a folder, or whose nearest existing folder is not a writable folder.
    Missing folders in between are fine: they are created when the file is written (as ``atomic_path`` does)."""
    if path.is_dir():
        raise RunArgumentError(f"{label} {path}: is a folder, not a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RunArgumentError(f"{label} {path}: cannot create it, {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunArgumentError(f"{label} {path}: folder {parent} is not writable")


def run_outputs(output: str | Path | None, cxi_output: str | Path | None) -> dict[str, Path]:
    """The files a run writes, by the option that names them: -o (unless None or '-', standard output), and
    --cxi with its .lst, .geom and .cell siblings."""
    outputs = {}
    if output is not None and str(output) != "-":
        outputs["-o"] = Path(output)
    if cxi_output is not None:
        cxi_output = Path(cxi_output)
        if str(cxi_output) == "-" or cxi_output.suffix in CXI_SIBLINGS:
            raise RunArgumentError(f"--cxi {cxi_output}: needs a file name such as peaks.cxi (its .lst, .geom "
                                   "and .cell go beside it)")
        outputs["--cxi"] = cxi_output
        outputs.update({f"--cxi {suffix}": cxi_output.with_suffix(suffix) for suffix in CXI_SIBLINGS})
    return outputs


def check_run_paths(inputs: dict[str, str | Path | None], outputs: dict[str, Path]) -> None:
    """Refuse outputs that are an input (same file or same resolved path), that coincide with each other, or
    that cannot be written (:func:`check_writable`). ``inputs``: label (option or 'input') -> path (None skipped)."""
    named = [(label, Path(p)) for label, p in inputs.items() if p is not None]
    seen: list[tuple[str, Path]] = []
    for label, path in outputs.items():
        for in_label, in_path in named:
            if _same_file(path, in_path):
                raise RunArgumentError(f"{label} {path}: is the {in_label} {in_path}; it would be overwritten")
        for other_label, other in seen:
            if _same_file(path, other):
                raise RunArgumentError(f"{label} {path}: is also the {other_label} output")
        check_writable(label, path)
        seen.append((label, path))


def check_stack(source: FramesFile) -> None:
    """Refuse a frames file whose stack holds no frames (N = 0)."""
    if source.n_frames == 0:
        raise DataFileError(f"{source.path}: {DATA} holds no frames (shape {source.data.shape})")


def cell_text(cell_file: str | Path | None) -> str:
    """The CrystFEL unit cell file written beside a CXI peak list: ``cell_file``'s text (it must be a readable
    CrystFEL cell file or PDB file), else the source paper's 1IC6 cell (a = b = 67.288 A, c = 106.582 A,
    P 43 21 2), with a comment line saying it is that default."""
    if cell_file is None:
        from types import SimpleNamespace

        import gemmi

        from .crystal import CELL_1IC6_A, SPACEGROUP_1IC6
        from .simulate.pattern_sim import cell_file_text

        crystal = SimpleNamespace(spacegroup=gemmi.SpaceGroup(SPACEGROUP_1IC6), cell_parameters=CELL_1IC6_A)
        return cell_file_text(crystal) + ("; cxlspeaks' default: the 1IC6 (proteinase K) cell, not read from the "
                                          "data; give the crystal's own cell with --cell\n")
    path = Path(cell_file)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
        raise RunArgumentError(f"--cell {path}: cannot read it ({reason})") from None
    if not (text.startswith("CrystFEL unit cell file") or "CRYST1" in text):
        raise RunArgumentError(f"--cell {path}: not a CrystFEL unit cell file (first line 'CrystFEL unit cell "
                               "file version 1.0') or PDB file with a CRYST1 line")
    return text


# ---------------------------------------------------------------------- models
class FramePredictor:
    """The hit, photon-energy and camera-length models, ready to score binned frames.

    ``checkpoints``: attribute -> checkpoint path (hit, photon_energy, clen). Raises :class:`CheckpointError`
    naming the checkpoint for any that is missing, unreadable, for another attribute, has no class values for
    its outputs, or whose weights do not fit; and when the three use different bin factors.
    """

    def __init__(self, checkpoints: dict[str, str | Path], threshold: float = 0.5):
        missing = [a for a in PIPELINE_ATTRIBUTES if a not in checkpoints]
        if missing:
            raise RunArgumentError(f"the pipeline needs a checkpoint for {missing[0]!r}")
        self.paths = {a: Path(checkpoints[a]) for a in PIPELINE_ATTRIBUTES}
        self.checkpoints = {a: load_checkpoint(self.paths[a], a) for a in PIPELINE_ATTRIBUTES}
        self.models = {a: model_from_checkpoint(c, self.paths[a]) for a, c in self.checkpoints.items()}
        for attribute, model in self.models.items():
            unknown = [name for name in model.inputs if name not in ("counts", "mask")]
            if unknown:
                why = " (the expected signal: an oracle)" if unknown[0] == "signal" else ""
                raise CheckpointError(f"{self.paths[attribute]}: its model reads input {unknown[0]!r}{why}, which "
                                      "the pipeline cannot give it from recorded frames")
        for attribute in PIPELINE_ATTRIBUTES[1:]:
            values = self.checkpoints[attribute].get("class_values")
            n = len(self.checkpoints[attribute]["class_names"])
            if not isinstance(values, list) or len(values) != n:
                raise CheckpointError(f"{self.paths[attribute]}: checkpoint has no class_values for its {n} "
                                      "classes")
        factors = {}
        for attribute, c in self.checkpoints.items():
            try:
                factors[attribute] = int(c.get("bin_factor", 1))
            except (TypeError, ValueError):
                raise CheckpointError(f"{self.paths[attribute]}: bin_factor {c.get('bin_factor')!r} is not an "
                                      "integer") from None
        if len(set(factors.values())) != 1 or factors["hit"] < 1:
            raise CheckpointError(f"{self.paths['hit']}: the pipeline's checkpoints use different or invalid bin "
                                  f"factors: {factors}")
        self.bin_factor = factors["hit"]
        self.threshold = threshold

    def check_shape(self, binned_shape: tuple[int, int], frames_path: str | Path) -> None:
        """Refuse frames whose binned shape (H, W) is not the one every model was trained on."""
        for attribute, checkpoint in self.checkpoints.items():
            shape = tuple(checkpoint["input_shape"][1:])
            if tuple(binned_shape) != shape:
                raise DataFileError(f"{frames_path}: binned frames have shape {tuple(binned_shape)}, the "
                                    f"{attribute} model {self.paths[attribute]} was trained on {shape}")

    def _inputs(self, model, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        channels = {"counts": counts, "mask": mask.expand_as(counts)}
        return torch.stack([channels[name] for name in model.inputs], dim=1)

    def _finite(self, attribute: str, values: np.ndarray) -> np.ndarray:
        if not np.isfinite(values).all():
            raise CheckpointError(f"{self.paths[attribute]}: the {attribute} model gave NaN or infinite "
                                  "probabilities")
        return values

    def predict(self, counts: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
        """Scores of binned frames (N, H, W) float32 photons with the binned good-pixel fraction (H, W)."""
        self.check_shape(counts.shape[1:], "frames")
        x = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        with torch.no_grad():
            p_hit = self._finite("hit", torch.sigmoid(
                self.models["hit"](self._inputs(self.models["hit"], x, m))[:, 0]).numpy())
            out = pd.DataFrame({"hit_probability": p_hit, "is_hit": p_hit >= self.threshold})
            for attribute, column in (("photon_energy", "photon_energy_ev"), ("clen", "clen_m")):
                probabilities = self._finite(attribute, torch.softmax(self.models[attribute](
                    self._inputs(self.models[attribute], x, m)), dim=1).numpy())
                values = np.asarray(self.checkpoints[attribute]["class_values"], dtype=np.float64)
                out[column] = np.where(out["is_hit"], values[probabilities.argmax(axis=1)], np.nan)
                out[f"{attribute}_probability"] = np.where(out["is_hit"], probabilities.max(axis=1), np.nan)
        return out


# ---------------------------------------------------------------------- the run
def run_pipeline(frames_path: str | Path, checkpoints: dict[str, str | Path], output: str | Path | None = None,
                 geometry_path: str | Path | None = None, frames: Sequence[int] | None = None,
                 threshold: float = 0.5, batch_size: int = 8, cxi_output: str | Path | None = None,
                 cell_file: str | Path | None = None, progress: bool | None = False) -> pd.DataFrame:
    """Score the frames of one file (all, or the given indices); write the CSV when ``output`` is given.

    ``checkpoints`` holds hit, photon_energy and clen, and optionally ``peaks`` (the peak network), which finds the
    peaks of every hit; ``cxi_output`` (needs ``peaks``) writes them with the .lst, .geom and .cell beside it
    (``cell_file``: the unit cell to copy; default the 1IC6 cell). Missing output folders are created.
    ``progress``: a tqdm bar on standard error (None: only when standard error is a terminal).

    Returns one row per frame (columns as in the module docstring; n_peaks is pandas' nullable Int64). Raises,
    before any frame is scored, :class:`RunArgumentError` for unusable outputs (an input file, each other, not
    writable) or options, :class:`~cxlspeaks.geometry.GeometryError`, :class:`DataFileError` for the frames file
    (also an empty stack) and :class:`CheckpointError`; later, :class:`DataFileError` for a frame that cannot be
    read and :class:`CheckpointError` for NaN model outputs.
    """
    from tqdm import tqdm

    if cxi_output is not None and checkpoints.get("peaks") is None:
        raise RunArgumentError("--cxi: a CXI peak list needs the peak network's checkpoint")
    if cell_file is not None and cxi_output is None:
        raise RunArgumentError(f"--cell {cell_file}: the cell file goes beside the CXI peaks; give --cxi too")
    inputs = {"input frames file": frames_path, "--geometry": geometry_path, "--cell": cell_file,
              **{f"{a} checkpoint": p for a, p in checkpoints.items()}}
    check_run_paths(inputs, run_outputs(output, cxi_output))
    cell = cell_text(cell_file) if cxi_output is not None else None
    rows, peak_tables = [], []
    with FramesFile(frames_path, geometry_path) as source:
        check_stack(source)
        geometry, mask = source.geometry, source.mask
        indices = source.check_indices(frames)
        predictor = FramePredictor(checkpoints, threshold)
        peak_finder = None
        if checkpoints.get("peaks") is not None:
            from .peaknet import NetworkPeakFinder

            peak_finder = NetworkPeakFinder(checkpoints["peaks"])
        binned_mask = mask_fraction(mask, predictor.bin_factor)
        predictor.check_shape(binned_mask.shape, frames_path)
        bar = tqdm(total=len(indices), unit="frame", desc=Path(frames_path).name, disable=(
            None if progress is None else not progress))
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            block = np.stack([source.read(i) for i in chunk])
            scored = predictor.predict(binned_frames(block, mask, predictor.bin_factor), binned_mask)
            if peak_finder is not None:
                found = [peak_finder.find(frame, mask) if hit else None for frame, hit in zip(block, scored["is_hit"])]
                scored["n_peaks"] = pd.array([len(t) if t is not None else pd.NA for t in found], dtype="Int64")
                peak_tables += [(i, t) for i, t in zip(chunk, found) if t is not None]
            rows.append(scored.assign(frame=chunk))
            bar.update(len(chunk))
        bar.close()
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["frame"])
    table = table[["frame"] + [c for c in table.columns if c != "frame"]]
    if cxi_output is not None:
        write_peak_files(cxi_output, frames_path, geometry, peak_tables, cell)
    if output is not None and str(output) != "-":
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False)
    return table


def write_peak_files(cxi_output: str | Path, frames_path: str | Path, geometry,
                     peak_tables: Sequence[tuple[int, pd.DataFrame]], cell: str | None = None) -> None:
    """The hits' peaks as CXI (linked to the frames), their CrystFEL event list, a geometry that reads both and
    (``cell``: the text of a CrystFEL unit cell file) the .cell for ``indexamajig -p``."""
    cxi_output = Path(cxi_output)
    hits = [int(i) for i, _ in peak_tables]
    write_cxi_peaks(cxi_output, [t for _, t in peak_tables], data_file=frames_path, frames=hits)
    write_event_list(cxi_output.with_suffix(".lst"), cxi_output.resolve(), hits)
    detector = geometry.replace_panels(data=DATA, dims=("%", "ss", "fs"))
    atomic_write_text(cxi_output.with_suffix(".geom"), geometry_with_peak_list(detector.to_geom_text()))
    if cell is not None:
        atomic_write_text(cxi_output.with_suffix(".cell"), cell)


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
