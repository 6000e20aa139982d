"""Apply trained models to new frames: hit probability, then, for hits, photon energy, camera length and peaks.

Input: any frame source :func:`cxlspeaks.sources.open_source` opens (a cxlspeaks frames file or plain HDF5 stack,
a DECTRIS NXmx master file, a Cheetah/OM CXI file, a CrystFEL ``.lst`` event list), its detector the geometry
given or the one the file describes (stored CrystFEL geometry text, NXmx metadata). Every frame comes with its
own good-pixel mask (``Frame.good``: geometry, detector pixel mask, marker values, non-finite pixels) and its
saturated pixels; masked pixels are left out of the binned model inputs and the peak network and are never
peaks; saturated pixels are left out of peak centroids. Frames are binned as for training (the bin factor is
read from the hit checkpoint); models marked ``any_shape`` (hit_fcn, water_profile_linear) score frames of any
size and layout, the ``radius`` channel of geometry-aware models coming from each frame's geometry (cached per
geometry). Use outside the training (another binned shape for a shape-free model, a camera length more than 10%
outside the trained range) is one ``cxlspeaks: warning: ...`` line on standard error per kind; another shape for
a shape-bound model is an error.

Output: one CSV row per frame: frame (the running index of the source, 0..N-1), event (CrystFEL event id),
source_file, hit_probability, is_hit, and for hits photon_energy_ev, photon_energy_probability, clen_m,
clen_probability and, with a peak network, n_peaks (an integer; empty for non-hits); n_masked and n_saturated
(pixels). With ``cxi_output`` the hits' peaks also go to CrystFEL files (:mod:`cxlspeaks.run_cxi`).

Order of the checks, all before any frame is scored: output paths (:func:`check_run_paths`), the geometry and the
source (:func:`~cxlspeaks.run_checks.check_source`), then the checkpoints and the binned shape.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, trained_on
from .features import binned_frames, binned_radius_m, mask_fraction
from .io import DataFileError, atomic_path
from .run_beam import BEAM_FIT_COLUMNS, BeamFitter
from .run_checks import (RunArgumentError, check_counts, check_run_paths, check_source, cell_text, integer_source,
                         list_files, run_outputs)
from .run_cxi import FrameSpool, linkable, write_peak_files  # noqa: F401
from .run_peaks import PEAK_FINDERS, RunPeakFinder, peaks_on_good_pixels

PIPELINE_ATTRIBUTES = ("hit", "photon_energy", "clen")
MODEL_INPUTS = ("counts", "mask", "radius")
#: A frame's camera length more than this fraction outside the trained range is a warning.
CLEN_TOLERANCE = 0.10
COLUMNS = ("frame", "event", "source_file", "hit_probability", "is_hit", "photon_energy_ev",
           "photon_energy_probability", "clen_m", "clen_probability", *BEAM_FIT_COLUMNS, "n_peaks", "n_masked",
           "n_saturated")


def binned_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """(ceil(ss / factor), ceil(fs / factor)): the shape of binned frames (:func:`~cxlspeaks.features.bin_sum`)."""
    return tuple(-(-int(n) // factor) for n in shape)


# ---------------------------------------------------------------------- models
class FramePredictor:
    """The hit, photon-energy and camera-length models, ready to score binned frames.

    ``checkpoints``: attribute -> checkpoint path (hit, photon_energy, clen). Raises :class:`CheckpointError`
    naming the checkpoint for any that is missing, unreadable, for another attribute, has no class values for
    its outputs, reads an input the pipeline cannot give (the expected signal), or whose weights do not fit;
    and when the three use different bin factors. ``trained_on[attribute]``: what each was trained on
    (:func:`~cxlspeaks.checkpoint.trained_on`).
    """

    def __init__(self, checkpoints: dict[str, str | Path], threshold: float = 0.5):
        missing = [a for a in PIPELINE_ATTRIBUTES if a not in checkpoints]
        if missing:
            raise RunArgumentError(f"the pipeline needs a checkpoint for {missing[0]!r}")
        self.paths = {a: Path(checkpoints[a]) for a in PIPELINE_ATTRIBUTES}
        self.checkpoints = {a: load_checkpoint(self.paths[a], a) for a in PIPELINE_ATTRIBUTES}
        self.models = {a: model_from_checkpoint(c, self.paths[a]) for a, c in self.checkpoints.items()}
        for attribute, model in self.models.items():
            unknown = [name for name in model.inputs if name not in MODEL_INPUTS]
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
        self.trained_on = {a: trained_on(c) for a, c in self.checkpoints.items()}
        self.any_shape = {a: bool(getattr(m, "any_shape", False)) for a, m in self.models.items()}
        self.needs_radius = [a for a, m in self.models.items() if "radius" in m.inputs]
        self._radii: dict[int, tuple[object, np.ndarray]] = {}

    def check_shape(self, binned_shape: tuple[int, int], frames_path: str | Path = "frames") -> list[str]:
        """Refuse (:class:`DataFileError`) frames whose binned shape (H, W) is not the one a shape-bound model was
        trained on; return the warning texts (none or one) for shape-free models (``any_shape``) that score
        another shape than they were trained on."""
        other: dict[tuple, list[str]] = {}
        for attribute, checkpoint in self.checkpoints.items():
            shape = tuple(checkpoint["input_shape"][1:])
            if tuple(binned_shape) == shape:
                continue
            if not self.any_shape[attribute]:
                raise DataFileError(f"{frames_path}: binned frames have shape {tuple(binned_shape)}, the "
                                    f"{attribute} model {self.paths[attribute]} was trained on {shape}")
            other.setdefault(shape, []).append(attribute)
        if not other:
            return []
        trained = "; ".join(f"{', '.join(names)} on {shape}" for shape, names in other.items())
        return [f"{frames_path}: binned frames have shape {tuple(binned_shape)}, another detector layout or size "
                f"than the models were trained on ({trained}); their answers there are not validated"]

    def clen_warning(self, clen_m: float) -> str | None:
        """A warning text when ``clen_m`` lies more than 10% outside the camera lengths the clen model was
        trained on (None inside, or when the range is unknown)."""
        values = self.trained_on["clen"].get("clen_m")
        if not values or not np.isfinite(clen_m):
            return None
        low, high = min(values), max(values)
        if low * (1 - CLEN_TOLERANCE) <= clen_m <= high * (1 + CLEN_TOLERANCE):
            return None
        return (f"camera length {clen_m:g} m is more than {CLEN_TOLERANCE:.0%} outside the range the clen model "
                f"{self.paths['clen']} was trained on ({low:g}-{high:g} m)")

    def radius(self, geometry) -> np.ndarray:
        """Binned distance from the beam axis (:func:`~cxlspeaks.features.binned_radius_m`) of a geometry,
        cached per geometry object."""
        cached = self._radii.get(id(geometry))
        if cached is None or cached[0] is not geometry:
            if len(self._radii) >= 64:
                self._radii.clear()
            cached = (geometry, binned_radius_m(geometry, self.bin_factor))
            self._radii[id(geometry)] = cached
        return cached[1]

    def _finite(self, attribute: str, values: np.ndarray) -> np.ndarray:
        if not np.isfinite(values).all():
            raise CheckpointError(f"{self.paths[attribute]}: the {attribute} model gave NaN or infinite "
                                  "probabilities")
        return values

    def channels(self, counts: np.ndarray, mask: np.ndarray, radius: np.ndarray | None = None,
                 geometry=None) -> dict[str, torch.Tensor]:
        """The models' input channels by name (``counts``, ``mask`` and, for geometry-aware models, ``radius``),
        each (N, H, W) float32, from binned counts (N, H, W), the good-pixel fraction and the radius ((H, W) for
        all frames or (N, H, W)); ``radius`` comes from ``geometry`` when not given. Raises RunArgumentError when a
        model needs the radius and neither is given."""
        if radius is None and geometry is not None and self.needs_radius:
            radius = self.radius(geometry)
        if radius is None and self.needs_radius:
            raise RunArgumentError(f"the {self.needs_radius[0]} model reads each bin's distance from the beam; "
                                   "give predict the frames' geometry (or radius)")
        x = torch.from_numpy(np.ascontiguousarray(counts, dtype=np.float32))

        def channel(values):
            t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            return (t[None] if t.ndim == 2 else t).expand_as(x)

        channels = {"counts": x, "mask": channel(mask)}
        if radius is not None:
            channels["radius"] = channel(radius)
        return channels

    def predict(self, counts: np.ndarray, mask: np.ndarray, radius: np.ndarray | None = None,
                geometry=None) -> pd.DataFrame:
        """Scores of binned frames (N, H, W) float32 photons with the binned good-pixel fraction, (H, W) for all
        frames or (N, H, W) per frame. Geometry-aware models (``radius`` input) need ``radius`` ((H, W) or
        (N, H, W) metres, :func:`~cxlspeaks.features.binned_radius_m`) or the frames' ``geometry``."""
        counts = np.ascontiguousarray(counts, dtype=np.float32)
        self.check_shape(counts.shape[1:], "frames")
        channels = self.channels(counts, mask, radius, geometry)

        def inputs(model):
            return torch.stack([channels[name] for name in model.inputs], dim=1)

        with torch.no_grad():
            p_hit = self._finite("hit", torch.sigmoid(self.models["hit"](inputs(self.models["hit"]))[:, 0]).numpy())
            out = pd.DataFrame({"hit_probability": p_hit, "is_hit": p_hit >= self.threshold})
            for attribute, column in (("photon_energy", "photon_energy_ev"), ("clen", "clen_m")):
                probabilities = self._finite(attribute, torch.softmax(
                    self.models[attribute](inputs(self.models[attribute])), dim=1).numpy())
                values = np.asarray(self.checkpoints[attribute]["class_values"], dtype=np.float64)
                out[column] = np.where(out["is_hit"], values[probabilities.argmax(axis=1)], np.nan)
                out[f"{attribute}_probability"] = np.where(out["is_hit"], probabilities.max(axis=1), np.nan)
        return out


def print_warning(text: str) -> None:
    """One line ``cxlspeaks: warning: ...`` on standard error."""
    print(f"cxlspeaks: warning: {' '.join(str(text).split())}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the run
def _check_indices(n: int, frames: Sequence[int] | None, path) -> np.ndarray:
    indices = np.arange(n) if frames is None else np.asarray(frames, dtype=int).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= n):
        bad = indices.max() if indices.max() >= n else indices.min()
        raise DataFileError(f"{path}: holds {n} frames, asked for frame {bad}")
    return indices


def run_pipeline(frames_path: str | Path, checkpoints: dict[str, str | Path], output: str | Path | None = None,
                 geometry_path: str | Path | None = None, frames: Sequence[int] | None = None,
                 threshold: float = 0.5, batch_size: int = 8, cxi_output: str | Path | None = None,
                 cell_file: str | Path | None = None, progress: bool | None = False,
                 channel: int | str | None = None, warn: Callable[[str], None] | None = print_warning,
                 peak_finder: str = "network", beam_fit: bool = False) -> pd.DataFrame:
    """Score the frames of one source (all, or the given source indices); write the CSV when ``output`` is given.

    ``frames_path``: anything :func:`~cxlspeaks.sources.open_source` opens (``geometry_path`` and ``channel``
    are passed on). ``checkpoints`` holds hit, photon_energy and clen, and optionally ``peaks`` (the checkpoint of
    the peak finder ``peak_finder``: ``network``, the peak network, or ``cascade``, :mod:`cxlspeaks.peaks.cascade`),
    which finds the peaks of every hit; ``cxi_output`` (needs ``peaks``) writes them with the .lst,
    .geom and .cell beside it (``cell_file``: the unit cell to copy; default the 1IC6 cell). Missing output
    folders are created. ``progress``: a tqdm bar on standard error (None: only when standard error is a
    terminal). ``warn``: called with the text of each warning kind once (default: one line on standard error).
    ``beam_fit``: add :data:`~cxlspeaks.run_beam.BEAM_FIT_COLUMNS` (:class:`~cxlspeaks.run_beam.BeamFitter`).

    Returns one row per frame (:data:`COLUMNS`; n_peaks is pandas' nullable Int64). Raises, before any frame is
    scored, :class:`RunArgumentError` for unusable outputs (an input file, each other, not writable) or
    options, :class:`~cxlspeaks.geometry.GeometryError`, :class:`DataFileError` for the source (also an empty
    one) and :class:`CheckpointError`; later, :class:`DataFileError` for a frame that cannot be read and
    :class:`CheckpointError` for NaN model outputs.
    """
    from tqdm import tqdm

    from .sources import open_source

    if peak_finder not in PEAK_FINDERS:
        raise RunArgumentError(f"--finder {peak_finder}: unknown peak finder; known: {', '.join(PEAK_FINDERS)}")
    if cxi_output is not None and checkpoints.get("peaks") is None:
        raise RunArgumentError("--cxi: a CXI peak list needs the peak network's checkpoint")
    if cell_file is not None and cxi_output is None:
        raise RunArgumentError(f"--cell {cell_file}: the cell file goes beside the CXI peaks; give --cxi too")
    inputs = [("input frames file", frames_path), ("--geometry", geometry_path), ("--cell", cell_file),
              *((f"{a} checkpoint", p) for a, p in checkpoints.items()),
              *(("frames file listed in the input", p) for p in list_files(frames_path))]
    check_run_paths(inputs, run_outputs(output, cxi_output))
    cell = cell_text(cell_file) if cxi_output is not None else None
    warned: set[str] = set()

    def warning(kind: str, text: str) -> None:
        if kind not in warned and warn is not None:
            warned.add(kind)
            warn(text)

    rows, peak_tables, spool = [], [], None
    with open_source(frames_path, geometry=geometry_path, channel=channel) as source:
        check_source(source, frames_path)
        indices = _check_indices(len(source), frames, frames_path)
        predictor = FramePredictor(checkpoints, threshold)
        factor = predictor.bin_factor
        finder = None
        if checkpoints.get("peaks") is not None:
            finder = RunPeakFinder(peak_finder, checkpoints["peaks"])
        fitter = None
        if beam_fit:
            try:
                fitter = BeamFitter(source.geometry)
            except ValueError as exc:
                raise RunArgumentError(f"--beam-fit: {str(exc).splitlines()[0]}") from None
        shapes = {binned_shape(source.geometry.shape, factor)}
        for text in predictor.check_shape(next(iter(shapes)), frames_path):
            warning("shape", text)
        signed = integer_source(source)
        link = cxi_output is not None and linkable(source)
        spool = FrameSpool(cxi_output) if cxi_output is not None and not link else None
        bar = tqdm(total=len(indices), unit="frame", desc=Path(frames_path).name, disable=(
            None if progress is None else not progress))
        try:
            for start in range(0, len(indices), batch_size):
                chunk = [int(i) for i in indices[start:start + batch_size]]
                rows.append(_score_chunk(source, chunk, predictor, finder, signed, shapes, warning,
                                         frames_path, peak_tables, spool, fitter))
                bar.update(len(chunk))
            bar.close()
            geometry = source.geometry
            data_path = getattr(source, "data_path", None)
            if cxi_output is not None:
                write_peak_files(cxi_output, geometry, peak_tables, cell, data_file=frames_path if link else None,
                                 data_path=data_path or "/entry/data/data", spool=spool)
                spool = None
        finally:
            if spool is not None:
                spool.discard()
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(COLUMNS))
    table = table[[c for c in COLUMNS if c in table.columns]]
    if output is not None and str(output) != "-":
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False)
    return table


def _score_chunk(source, chunk, predictor, peak_finder, signed, shapes, warning, frames_path, peak_tables,
                 spool, fitter=None) -> pd.DataFrame:
    """Scores (and peaks) of the source frames ``chunk``; peak tables of hits are appended to ``peak_tables``
    (and hit frames to ``spool``)."""
    factor = predictor.bin_factor
    frames, counts, binned, masks, radii = [], [], [], [], []
    for i in chunk:
        frame = source.read(i)
        good = frame.good
        values = np.where(good, frame.counts, 0).astype(np.float32)
        check_counts(values, good, signed, f"{frame.source_file or frames_path}: frame {frame.event}")
        geometry = frame.geometry or source.geometry
        shape = binned_shape(values.shape, factor)
        if shape not in shapes:
            shapes.add(shape)
            for text in predictor.check_shape(shape, frame.source_file or frames_path):
                warning("shape", text)
        clen = frame.metadata.get("clen_m")
        text = predictor.clen_warning(float(clen)) if clen is not None else None
        if text is not None:
            warning("clen", f"{frame.source_file or frames_path} {frame.event}: {text}")
        frames.append(frame)
        counts.append(values)
        binned.append(binned_frames(values[None], good, factor)[0])
        masks.append(mask_fraction(good, factor))
        radii.append(predictor.radius(geometry) if predictor.needs_radius else None)
    if len({b.shape for b in binned}) == 1:
        scored = predictor.predict(np.stack(binned), np.stack(masks),
                                   None if radii[0] is None else np.stack(radii))
    else:
        scored = pd.concat([predictor.predict(b[None], m, r) for b, m, r in zip(binned, masks, radii)],
                           ignore_index=True)
    scored.insert(0, "frame", chunk)
    scored.insert(1, "event", [f.event for f in frames])
    scored.insert(2, "source_file", [f.source_file for f in frames])
    if fitter is not None:
        fits = pd.DataFrame([fitter.fit(v, f.good, f.geometry or source.geometry) for v, f in zip(counts, frames)])
        for column in BEAM_FIT_COLUMNS:
            scored[column] = fits[column].to_numpy()
    if peak_finder is not None:
        found = []
        for i, frame, values, hit in zip(chunk, frames, counts, scored["is_hit"]):
            if not hit:
                found.append(None)
                continue
            table = peak_finder.find(values, frame, frame.geometry or source.geometry)
            table = peaks_on_good_pixels(table, frame.good)
            found.append(table)
            peak_tables.append((i, table))
            if spool is not None:
                spool.add(i, frame.event, frame.source_file, values, frame.good)
        scored["n_peaks"] = pd.array([len(t) if t is not None else pd.NA for t in found], dtype="Int64")
    scored["n_masked"] = [f.n_masked for f in frames]
    scored["n_saturated"] = [f.n_saturated for f in frames]
    return scored


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
