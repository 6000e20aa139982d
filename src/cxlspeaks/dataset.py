"""Datasets: simulated shards, assembled frame files, labels, empty frames, validation, manifests and splits.

A dataset's ``frames.h5`` holds ``frames`` crystal frames (overlays: Poisson(signal + water)) followed by
``n_empty`` background-only frames (each its own Poisson draw of the water; signal and label zero). Labels are
``signal >= label_threshold_photons`` on the expected Bragg image. The true peak list of a frame holds the
reflections with at least ``peak_list_min_photons`` expected photons on good pixels; ``has_peaks`` is true when
that list is not empty.

Recorded counts saturate at the dataset's ``saturation`` (config ``saturation_photons``, default the detector's
count cut-off): such pixels hold exactly that value, and each frame's number of them is stored in
``/entry/data/n_saturated`` (uint32 (N,), attribute ``saturation_photons``) and the manifest column ``n_saturated``.

**Nuisances** (config ``nuisances:``, :mod:`cxlspeaks.simulate.nuisances`; all off by default, and then nothing
below is written and the frames keep their bytes). Each frame's values go to ``/entry/data/nuisances/<name>``
(one value per frame) and to manifest columns of the same names, plus ``n_ice_spots``; ``/entry/data/water_scale``
is pulse x thickness. Labels stay honest: signal, label, the peak list and ``has_peaks`` hold Bragg reflections of
the crystals only; ice adds counts, and its spots (spotty ice) are listed apart in ``/entry/ice_spots``, so an
ice-only frame is a non-hit. Bad pixels go to ``/entry/instrument/detector/pixel_mask`` and the dataset's geometry
names that mask (``mask0_data``), as a real detector's bad-pixel map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from .crystal import Crystal
from .geometry.parts import MaskSpec
from .io import (BACKGROUND, CLEN, HAS_PEAKS, ICE_SPOT_FIELDS, ICE_SPOTS, NUISANCES, PHOTON_ENERGY, PIXEL_MASK,
                 RESULT, DataFileError, FrameStackWriter, atomic_path, atomic_write_text, bitshuffle_lz4, open_h5,
                 read_columns, read_dataset, write_columns)
from .seeding import frame_rng
from .settings import DatasetSettings
from .simulate.detector_response import BAD_BITS
from .simulate.engine import FrameSimulator, NuisanceRecorder, PhotonRecorder, RecordedFrame, expected_water
from .simulate.nuisances import RECORDED, recorded_values

MANIFEST_COLUMNS = ("frame", "has_peaks", "n_peaks", "photon_energy_ev", "clen_m", "flux", "kind", "n_saturated")
#: Per frame: the pixels recorded at the saturation value.
N_SATURATED = "/entry/data/n_saturated"
SPLIT_COLUMNS = ("dataset", "frame", "subset")


class ValidationError(ValueError):
    """A dataset whose recorded attributes disagree with its config."""


def peak_arrays(peaks: pd.DataFrame, min_photons: float) -> dict[str, np.ndarray]:
    """The true reflections with >= ``min_photons`` as CXI peak-list columns (raw pixel convention)."""
    kept = peaks[peaks["photons"] >= min_photons]
    return {"peakXPosRaw": kept["fs"].to_numpy(), "peakYPosRaw": kept["ss"].to_numpy(),
            "peakTotalIntensity": kept["photons"].to_numpy(), "peakH": kept["h"].to_numpy(),
            "peakK": kept["k"].to_numpy(), "peakL": kept["l"].to_numpy()}


def water_image(settings: DatasetSettings, output: str | Path) -> None:
    """Write the dataset's expected water image (photons per pixel, float32) to HDF5."""
    image = expected_water(settings.geometry(), settings.beam, settings.water, settings.water_backend)
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(BACKGROUND, data=image, **bitshuffle_lz4())
        h5[BACKGROUND].attrs["units"] = "expected photons per pixel"
        h5.attrs["fingerprint"] = settings.fingerprint()


def _frame_simulator(settings: DatasetSettings, crystal: Crystal, seed: int, water_path: str | Path) -> FrameSimulator:
    background = read_dataset(water_path, BACKGROUND, ndim=2)
    return FrameSimulator(settings.geometry(), crystal, settings.beam, settings.sample, settings.water, seed=seed,
                          dataset=settings.name, spot_sigma_px=settings.spot_sigma_px,
                          bragg_backend=settings.bragg_backend, water_backend=settings.water_backend,
                          background=background, saturation_photons=settings.saturation,
                          nuisances=settings.nuisances)


def _write_n_saturated(h5: h5py.File, values: Sequence[int], saturation: int) -> None:
    h5.create_dataset(N_SATURATED, data=np.asarray(values, dtype=np.uint32))
    h5[N_SATURATED].attrs["saturation_photons"] = saturation
    h5[N_SATURATED].attrs["description"] = "pixels recorded at the saturation value (counts cut off there)"


def simulate_shard(settings: DatasetSettings, crystal: Crystal, shard: int, seed: int, water_path: str | Path,
                   output: str | Path, progress: bool = False) -> None:
    """Simulate the crystal frames of one shard (signal, labels, overlays, true peaks) into ``output``."""
    frames = settings.shard_frames(shard)
    sim = _frame_simulator(settings, crystal, seed, water_path)
    geometry = sim.geometry
    iterator = frames
    if progress:
        from tqdm import tqdm

        iterator = tqdm(frames, desc=f"dataset {settings.name} shard {shard}", unit="frame")
    saturated = np.zeros(len(frames), dtype=np.uint32)
    nuisances = _NuisanceTable(len(frames)) if settings.nuisances.enabled else None
    with FrameStackWriter(output, len(frames), geometry.shape, settings.max_peaks) as out:
        for j, i in enumerate(iterator):
            if nuisances is not None:
                recorded = sim.frame(i)
                nuisances.add(j, recorded)
                q, image, peaks, axes, counts = (recorded.quaternion, recorded.signal, recorded.peaks,
                                                 recorded.astar_bstar_cstar, recorded.counts)
                water_scale = recorded.water_scale
            else:
                q, _ = sim.orientation(i)
                frame = sim.signal(i)
                image, peaks, axes = frame.image, frame.peaks, frame.astar_bstar_cstar
                counts = sim.record(i, frame.image)
                water_scale = sim.thickness_factor(i)
            saturated[j] = sim.n_saturated(counts)
            label = (image >= settings.label_threshold_photons).astype(np.uint8)
            out.write_frame(j, counts, image, label, peak_arrays(peaks, settings.peak_list_min_photons), axes, q,
                            water_scale=water_scale)
        _write_n_saturated(out.h5, saturated, settings.saturation)
        if nuisances is not None:
            nuisances.write(out.h5)
        out.set_metadata(settings.photon_energy_ev, settings.clen_m, geometry.to_geom_text(),
                         attrs={"dataset": settings.name, "first_frame": frames.start, "shard": shard,
                                "fingerprint": settings.fingerprint()})


class _NuisanceTable:
    """Per-frame nuisance values and ice spots of a frames file (see the module docstring)."""

    def __init__(self, n_frames: int):
        self.columns = {name: np.zeros(n_frames, dtype=dtype) for name, (dtype, _) in RECORDED.items()}
        self.spots: list[pd.DataFrame] = []

    def add(self, i: int, frame: RecordedFrame) -> None:
        for name, value in recorded_values(frame.nuisances, frame.water_scale, frame.ice_photons).items():
            self.columns[name][i] = value
        if len(frame.ice_spots):
            self.spots.append(frame.ice_spots.assign(frame=i))

    def add_file(self, src: h5py.File, path, first: int, n_frames: int) -> None:
        """Take the values and spots of a shard's ``n_frames`` frames, placed from frame ``first`` on."""
        columns = read_columns(src, NUISANCES)
        missing = [name for name in self.columns if name not in columns]
        if missing:
            raise ValidationError(f"{path}: shard lacks the nuisance values {NUISANCES}/{missing[0]}")
        for name, values in self.columns.items():
            values[first:first + n_frames] = columns[name]
        spots = read_columns(src, ICE_SPOTS)
        if spots and len(spots["frame"]):
            self.spots.append(pd.DataFrame(spots).assign(frame=spots["frame"] + first))

    def write(self, h5: h5py.File) -> None:
        write_columns(h5, NUISANCES, self.columns, {name: text for name, (_, text) in RECORDED.items()})
        table = pd.concat(self.spots, ignore_index=True) if self.spots else pd.DataFrame()
        write_columns(h5, ICE_SPOTS, {name: (table[name].to_numpy() if len(table) else np.zeros(0)).astype(dtype)
                                      for name, dtype in ICE_SPOT_FIELDS.items()},
                      {"frame": "frame index", "fs": "raw fs (pixel centre at the integer)", "ss": "raw ss",
                       "photons": "expected photons of the spot", "d_A": "d spacing of its ice ring (A)"})


def detector_geometry(settings: DatasetSettings):
    """The dataset's CrystFEL geometry, reading frames from /entry/data/data with dim0 = % (the frame index);
    with bad pixels (``nuisances``) every panel names the pixel mask (``mask0_data`` = /entry/instrument/detector/
    pixel_mask, ``mask0_badbits`` = the dead, hot, noisy and gap bits)."""
    geometry = settings.geometry().replace_panels(data="/entry/data/data", dims=("%", "ss", "fs"))
    if settings.nuisances.bad_pixels:
        geometry = geometry.replace_panels(masks=(MaskSpec(index=0, data=PIXEL_MASK, badbits=BAD_BITS),))
    return geometry


def write_detector_geometry(settings: DatasetSettings, output: str | Path) -> None:
    """Write the dataset's detector.geom (camera length, photon energy and bandwidth included)."""
    detector_geometry(settings).write(output)


def assemble_dataset(settings: DatasetSettings, shard_paths: Sequence[str | Path], water_path: str | Path,
                     seed: int, frames_output: str | Path, manifest_output: str | Path) -> None:
    """Join the shards, add the empty frames, validate, and write frames.h5 and manifest.csv."""
    geometry = detector_geometry(settings)
    n_total = settings.frames + settings.n_empty
    background = read_dataset(water_path, BACKGROUND, ndim=2)
    recorder = PhotonRecorder(background, settings.water, seed, settings.name, settings.saturation)
    saturated = np.zeros(n_total, dtype=np.uint32)
    nuisances = _NuisanceTable(n_total) if settings.nuisances.enabled else None
    with FrameStackWriter(frames_output, n_total, geometry.shape, settings.max_peaks) as out:
        i = 0
        for shard, path in enumerate(shard_paths):
            with open_h5(path) as src:
                _check_shard(src, path, settings, shard)
                n_frames = src["/entry/data/data"].shape[0]
                if i + n_frames > settings.frames:
                    raise ValidationError(f"{frames_output}: shards hold more than the {settings.frames} frames "
                                          "the config asks for")
                if N_SATURATED in src:
                    saturated[i:i + n_frames] = src[N_SATURATED][()]
                else:      # a shard written before n_saturated was stored: count its frames
                    saturated[i:i + n_frames] = [recorder.n_saturated(src["/entry/data/data"][j])
                                                 for j in range(n_frames)]
                if nuisances is not None:
                    nuisances.add_file(src, path, i, n_frames)
                for j in range(n_frames):
                    out.copy_frame(src, j, i)
                    i += 1
        if i != settings.frames:
            raise ValidationError(f"{frames_output}: shards hold {i} frames, the config asks for {settings.frames}")
        empty_recorder = None
        if nuisances is not None:
            empty_recorder = NuisanceRecorder(settings.geometry(), settings.beam, recorder, settings.nuisances,
                                              settings.crystal_size_m, settings.water_backend)
        for k in range(settings.n_empty):
            if empty_recorder is not None:
                recorded = empty_recorder.record_empty(k, settings.frames)
                nuisances.add(settings.frames + k, recorded)
                counts, water_scale = recorded.counts, recorded.water_scale
            else:
                counts = recorder.record(k, None, empty=True)
                water_scale = recorder.thickness_factor(k, empty=True)
            saturated[settings.frames + k] = recorder.n_saturated(counts)
            out.write_frame(settings.frames + k, counts, None, None, water_scale=water_scale)
        _write_n_saturated(out.h5, saturated, settings.saturation)
        if nuisances is not None:
            nuisances.write(out.h5)
            if empty_recorder.bad_pixels is not None:
                out.h5.create_dataset(PIXEL_MASK, data=empty_recorder.bad_pixels.pixel_mask(geometry.mask),
                                      **bitshuffle_lz4())
                out.h5[PIXEL_MASK].attrs["description"] = ("DECTRIS pixel_mask bits: 1 gap, 2 dead, 8 hot "
                                                           "(over-responding), 16 noisy; 0 = good")
        out.set_metadata(settings.photon_energy_ev, settings.clen_m, geometry.to_geom_text(), background,
                         attrs={"dataset": settings.name, "flux": settings.flux, "n_empty": settings.n_empty,
                                "fingerprint": settings.fingerprint()})
        validate_frames(out.h5, settings, frames_output)
        manifest = frames_manifest(out.h5, settings)
    with atomic_path(manifest_output) as tmp:
        manifest.to_csv(tmp, index=False)


def _check_shard(src: h5py.File, path, settings: DatasetSettings, shard: int) -> None:
    attrs = src["/entry"].attrs
    expected = len(settings.shard_frames(shard))
    if attrs.get("fingerprint") != settings.fingerprint():
        raise ValidationError(f"{path}: shard was simulated with other settings than dataset {settings.name}'s")
    if src["/entry/data/data"].shape[0] != expected:
        raise ValidationError(f"{path}: holds {src['/entry/data/data'].shape[0]} frames, expected {expected}")


def validate_frames(h5: h5py.File, settings: DatasetSettings, path) -> None:
    """Check that has_peaks, photon energy and camera length agree with the config and the frame contents."""
    energy = float(h5[PHOTON_ENERGY][()])
    clen = float(h5[CLEN][()])
    if not np.isclose(energy, settings.photon_energy_ev, rtol=1e-9):
        raise ValidationError(f"{path}: photon energy {energy} eV, config says {settings.photon_energy_ev} eV")
    if not np.isclose(clen, settings.clen_m, rtol=1e-9):
        raise ValidationError(f"{path}: camera length {clen} m, config says {settings.clen_m} m")
    has_peaks = h5[HAS_PEAKS][()]
    n_peaks = h5[RESULT + "/nPeaks"][()]
    if not np.array_equal(has_peaks, n_peaks > 0):
        raise ValidationError(f"{path}: has_peaks disagrees with nPeaks")
    if has_peaks[settings.frames:].any():
        raise ValidationError(f"{path}: an empty (background-only) frame is marked has_peaks")
    signal = h5["/entry/data/signal"]
    for i in range(settings.frames, settings.frames + settings.n_empty):
        if signal[i].any():
            raise ValidationError(f"{path}: empty frame {i} carries Bragg signal")
    for i in np.flatnonzero(has_peaks):
        if not signal[i].any():
            raise ValidationError(f"{path}: frame {i} is marked has_peaks but has no Bragg signal")
    if settings.nuisances.enabled:
        n_crystals = h5[NUISANCES + "/n_crystals"][()]
        if len(n_crystals) != len(has_peaks) or n_crystals[settings.frames:].any():
            raise ValidationError(f"{path}: {NUISANCES}/n_crystals must hold one value per frame, 0 on empty frames")
        spot_frames = h5[ICE_SPOTS + "/frame"][()]
        if len(spot_frames) and not (0 <= spot_frames.min() and spot_frames.max() < len(has_peaks)):
            raise ValidationError(f"{path}: {ICE_SPOTS}/frame names a frame outside the file")


def frames_manifest(h5: h5py.File, settings: DatasetSettings) -> pd.DataFrame:
    """One row per frame: frame, has_peaks, n_peaks, photon_energy_ev, clen_m, flux, kind (overlay or empty),
    n_saturated (pixels recorded at the saturation value); with nuisances also their values (the names of
    :data:`~cxlspeaks.simulate.nuisances.RECORDED`) and n_ice_spots."""
    n = h5[HAS_PEAKS].shape[0]
    kind = np.where(np.arange(n) < settings.frames, "overlay", "empty")
    table = pd.DataFrame({"frame": np.arange(n), "has_peaks": h5[HAS_PEAKS][()],
                          "n_peaks": h5[RESULT + "/nPeaks"][()], "photon_energy_ev": settings.photon_energy_ev,
                          "clen_m": settings.clen_m, "flux": settings.flux, "kind": kind,
                          "n_saturated": h5[N_SATURATED][()]})
    if NUISANCES in h5:        # datasets with nuisances: their per-frame values and the ice spots per frame
        for name, values in read_columns(h5, NUISANCES).items():
            table[name] = values
        table["n_ice_spots"] = np.bincount(h5[ICE_SPOTS + "/frame"][()], minlength=n)[:n]
    return table


def read_manifest(path: str | Path, dataset: str) -> pd.DataFrame:
    """A dataset's manifest with a ``dataset`` column; one-line error when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: manifest not found")
    table = pd.read_csv(path, dtype={"frame": int})
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise DataFileError(f"{path}: manifest lacks column {missing[0]!r}")
    return table.assign(dataset=dataset)


def select_datasets(manifests: pd.DataFrame, datasets: Sequence[str] = (), flux: Sequence[str] = ()) -> pd.DataFrame:
    """The frames of the chosen datasets and flux levels (empty selections mean all)."""
    chosen = manifests
    if datasets:
        chosen = chosen[chosen["dataset"].isin(list(datasets))]
    if flux:
        chosen = chosen[chosen["flux"].isin(list(flux))]
    return chosen


def stratified_split(frames: pd.DataFrame, seed: int, test_fraction: float = 0.2,
                     strata: Sequence[str] = ("dataset", "has_peaks"), name: str = "split") -> pd.DataFrame:
    """Seeded split into train and test: in every stratum round(n * test_fraction) frames go to the test set.

    Returns columns dataset, frame, subset, sorted by dataset and frame.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    subset = pd.Series("train", index=frames.index)
    for key, group in frames.groupby(list(strata), sort=True):
        rng = frame_rng(seed, f"{name}:{key}", 0, "split")
        n_test = int(round(len(group) * test_fraction))
        test_index = rng.permutation(group.index.to_numpy())[:n_test]
        subset.loc[test_index] = "test"
    out = frames.assign(subset=subset)[list(SPLIT_COLUMNS)]
    return out.sort_values(["dataset", "frame"], kind="stable").reset_index(drop=True)


def write_split(manifest_paths: dict[str, str | Path], output: str | Path, seed: int, test_fraction: float,
                datasets: Sequence[str] = (), flux: Sequence[str] = (), name: str = "split") -> None:
    """Read the manifests, select datasets, split 80/20 (by default) per stratum, and write the split CSV."""
    manifests = pd.concat([read_manifest(p, d) for d, p in manifest_paths.items()], ignore_index=True)
    chosen = select_datasets(manifests, datasets, flux)
    if chosen.empty:
        raise ValueError(f"split {name}: the selection (datasets {list(datasets)}, flux {list(flux)}) is empty")
    table = stratified_split(chosen, seed, test_fraction, name=name)
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False)


def read_split(path: str | Path) -> pd.DataFrame:
    """A split file (dataset, frame, subset) with dataset names kept as text."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: split file not found")
    table = pd.read_csv(path, dtype={"dataset": str, "frame": int, "subset": str})
    if list(table.columns[:3]) != ["dataset", "frame", "subset"]:
        raise DataFileError(f"{path}: expected columns dataset, frame, subset")
    return table


def write_test_event_list(split_path: str | Path, frames: dict[str, str | Path], output: str | Path) -> None:
    """The test frames of a split as a CrystFEL event list: ``/abs/path/frames.h5 //N`` per line, in split order.

    Absolute paths, so that both ``cxlspeaks run LIST`` (which resolves relative names against the list's folder)
    and ``indexamajig -i LIST`` (which resolves them against its working directory) read the same frames.

    Raises:
        DataFileError: the split names a dataset without a frames file.
    """
    split = read_split(split_path)
    test = split[split["subset"] == "test"]
    lines = []
    for dataset, frame in zip(test["dataset"], test["frame"]):
        if dataset not in frames:
            raise DataFileError(f"{split_path}: names dataset {dataset!r}, which has no frames file")
        lines.append(f"{Path(frames[dataset]).resolve()} //{int(frame)}\n")
    atomic_write_text(output, "".join(lines))
