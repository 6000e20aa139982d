"""From a workflow config (a validated dict) to the objects the simulators take.

A dataset is one photon energy x camera length x flux combination. Its settings are the config's ``defaults``
overlaid with the dataset's own entry (``datasets: {name: {...}}``), so any default can be changed for one dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .geometry import Geometry, read_geometry, shipped_geometry
from .simulate.beam import Beam
from .simulate.bragg import CrystalSample
from .simulate.engine import WaterSheet
from .simulate.noise import EIGER4M_SATURATION_PHOTONS
from .simulate.nuisances import Nuisances

FLUX_LEVELS = ("normal", "low", "extreme")


@dataclass(frozen=True)
class DatasetSettings:
    """Everything that determines one dataset's frames (SI units)."""

    name: str
    photon_energy_ev: float
    clen_m: float
    flux: str = "normal"
    frames: int = 100
    empty_percent: float = 30.0
    frames_per_shard: int = 50
    # the physics defaults are those of the simulator's own parameter classes
    bandwidth: float = Beam.bandwidth
    spectrum: str = Beam.spectrum
    n_photons: float = Beam.n_photons
    beam_radius_m: float = Beam.beam_radius_m
    divergence_rad: float = Beam.divergence_rad
    polarisation_fraction: float = Beam.polarisation_fraction
    crystal_size_m: float = CrystalSample.size_m
    mosaicity_rad: float = CrystalSample.mosaicity_rad
    water_thickness_m: float = WaterSheet.thickness_m
    water_temperature_k: float = WaterSheet.temperature_k
    water_thickness_jitter: float = 0.05
    spot_sigma_px: float = 0.5
    label_threshold_photons: float = 0.5
    peak_list_min_photons: float = 1.0
    max_peaks: int = 2048
    detector: str = "eiger4m"
    bragg_backend: str = "builtin"
    water_backend: str = "builtin"
    saturation_photons: int | None = None   # None: the detector's (saturation_of_detector)
    # shot-to-shot nuisances (simulate/nuisances.py), all off by default; a mapping from the config is converted
    nuisances: Nuisances = Nuisances()
    # a measured spectrum (spectrum: table): a two-column CSV (x, weight), x a relative wavelength offset or eV
    spectrum_file: str | None = None
    spectrum_file_units: str = "relative"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "nuisances", Nuisances.from_mapping(self.nuisances))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"datasets.{self.name}.{exc}") from None
        if (self.spectrum == "table") != (self.spectrum_file is not None):
            raise ValueError(f"datasets.{self.name}.spectrum_file: a spectrum file goes with spectrum: table "
                             f"(spectrum is {self.spectrum!r}, spectrum_file is {self.spectrum_file!r})")

    @property
    def beam(self) -> Beam:
        """The pulse; with ``spectrum: table`` its spectrum is read from ``spectrum_file`` (relative to the working
        directory, the repository root in the workflow; ValueError naming the file when it is missing or bad)."""
        table = {}
        if self.spectrum_file is not None:
            from .simulate.beam import read_spectrum_csv

            table = dict(spectrum_table=read_spectrum_csv(self.spectrum_file),
                         spectrum_table_units=self.spectrum_file_units)
        return Beam(photon_energy_ev=self.photon_energy_ev, bandwidth=self.bandwidth, spectrum=self.spectrum,
                    n_photons=self.n_photons, beam_radius_m=self.beam_radius_m,
                    divergence_rad=self.divergence_rad, polarisation_fraction=self.polarisation_fraction, **table)

    @property
    def sample(self) -> CrystalSample:
        return CrystalSample(size_m=self.crystal_size_m, mosaicity_rad=self.mosaicity_rad)

    @property
    def water(self) -> WaterSheet:
        return WaterSheet(thickness_m=self.water_thickness_m, temperature_k=self.water_temperature_k,
                          thickness_jitter=self.water_thickness_jitter)

    @property
    def n_empty(self) -> int:
        """Background-only frames added to the dataset: round(frames * empty_percent / 100)."""
        return int(round(self.frames * self.empty_percent / 100.0))

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.frames // self.frames_per_shard))

    def shard_frames(self, shard: int) -> range:
        """Indices of the crystal frames that shard ``shard`` simulates."""
        if not 0 <= shard < self.n_shards:
            raise ValueError(f"dataset {self.name} has shards 0..{self.n_shards - 1}, not {shard}")
        return range(shard * self.frames_per_shard, min(self.frames, (shard + 1) * self.frames_per_shard))

    @property
    def saturation(self) -> int:
        """Counts per pixel at which frames saturate: ``saturation_photons``, or the detector's own value."""
        if self.saturation_photons is not None:
            return int(self.saturation_photons)
        return saturation_of_detector(self.detector)

    def geometry(self, repo_root: str | Path = ".") -> Geometry:
        """The detector at this dataset's camera length, carrying its photon energy and bandwidth."""
        if self.detector in ("eiger4m", "source_single_panel", "tiny"):
            geom = shipped_geometry(self.detector, clen_m=self.clen_m)
        else:
            geom = read_geometry(Path(repo_root) / self.detector).with_clen(self.clen_m)
        return geom.with_beam(self.photon_energy_ev, self.bandwidth)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (``DatasetSettings(**d)`` rebuilds them). Settings added after the first
        datasets were made (``nuisances``, ``spectrum_file``, ``spectrum_file_units``) appear only when they
        differ from their default, so the fingerprints and workflow parameters of datasets that do not use them
        stay as they were."""
        values = dataclasses.asdict(self)
        for name, default in (("nuisances", Nuisances()), ("spectrum_file", None),
                              ("spectrum_file_units", "relative")):
            if getattr(self, name) == default:
                del values[name]
        return values

    def fingerprint(self) -> str:
        """A short hash of the settings (stored in files, so stale shards are recognised)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def saturation_of_detector(detector: str) -> int:
    """A detector's saturation value (counts per pixel per frame). The shipped detectors (eiger4m, the source's
    single Eiger panel, the tiny test detector binned from it) and geometry files default to the Eiger 4M count
    cut-off, :data:`~cxlspeaks.simulate.noise.EIGER4M_SATURATION_PHOTONS` (an assumption: see simulate/noise.py);
    set ``saturation_photons`` for another detector."""
    return EIGER4M_SATURATION_PHOTONS


def dataset_settings(config: dict, name: str) -> DatasetSettings:
    """The settings of dataset ``name``: config ``defaults`` overlaid with ``datasets[name]``."""
    datasets = config.get("datasets", {})
    if name not in datasets:
        raise KeyError(f"datasets.{name}: no such dataset in the config")
    fields = {f.name for f in dataclasses.fields(DatasetSettings)}
    defaults, own = config.get("defaults", {}) or {}, datasets[name] or {}
    merged = {**defaults, **own}
    if "nuisances" in defaults or "nuisances" in own:     # one level deeper: a dataset changes single nuisances
        merged["nuisances"] = {**(defaults.get("nuisances") or {}), **(own.get("nuisances") or {})}
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise KeyError(f"datasets.{name}: unknown setting {unknown[0]!r}")
    return DatasetSettings(name=name, **merged)
