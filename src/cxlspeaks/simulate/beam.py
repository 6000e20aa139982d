"""Beam and sample parameters shared by the Bragg and water simulators (SI units)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import FWHM_PER_SIGMA, wavelength_m

SPECTRA = ("tophat", "gaussian", "table")
TABLE_UNITS = ("relative", "ev")


@dataclass(frozen=True)
class Beam:
    """An X-ray pulse.

    photon_energy_ev: central photon energy (eV); bandwidth: relative width of the spectrum in wavelength, the
    full width of a tophat or the FWHM of a Gaussian (0.01 = 1 %); n_photons: photons per pulse;
    beam_radius_m: radius of the (flat-top) beam at the sample, so the fluence is n / (pi r^2);
    divergence_rad: full width at half maximum of the incident directions (rad), which widens every spot by
    about distance * divergence; polarisation_fraction: fraction of the beam polarised along x (1 = fully, as
    an inverse-Compton source driven by a linearly polarised laser; 0.5 = unpolarised).

    spectrum: "tophat" (full width ``bandwidth``), "gaussian" (FWHM ``bandwidth``) or "table", a measured
    spectrum: ``spectrum_table`` holds (x, weight) pairs, x in the units ``spectrum_table_units``: "relative"
    (relative wavelength offset eps = lambda / lambda_0 - 1) or "ev" (photon energy); weights are relative
    photons per unit x, >= 0, linearly interpolated between points and zero outside, normalised here. For a
    table, ``bandwidth`` stays the nominal relative width (the resolution limit of the reflection list and the
    scale of the ``partiality`` column, rho * bandwidth); the table must lie within +-40 % of lambda_0.
    """

    photon_energy_ev: float
    bandwidth: float = 0.01
    spectrum: str = "tophat"
    n_photons: float = 3e8
    beam_radius_m: float = 5e-6
    divergence_rad: float = 1e-3
    polarisation_fraction: float = 1.0
    spectrum_table: tuple | None = None
    spectrum_table_units: str = "relative"

    def __post_init__(self) -> None:
        checks = {
            "photon_energy_ev": self.photon_energy_ev > 0,
            "bandwidth": 0 < self.bandwidth < 0.5,
            "n_photons": self.n_photons >= 0,
            "beam_radius_m": self.beam_radius_m > 0,
            "divergence_rad": 0 <= self.divergence_rad < 0.1,
            "polarisation_fraction": 0 <= self.polarisation_fraction <= 1,
        }
        for name, ok in checks.items():
            if not (ok and math.isfinite(getattr(self, name))):
                raise ValueError(f"beam {name} = {getattr(self, name)!r} is out of range")
        if self.spectrum not in SPECTRA:
            raise ValueError(f"beam spectrum must be one of {SPECTRA}, got {self.spectrum!r}")
        if self.spectrum == "table":
            if self.spectrum_table is None:
                raise ValueError("beam spectrum 'table' needs spectrum_table: (x, weight) pairs")
            if self.spectrum_table_units not in TABLE_UNITS:
                raise ValueError(f"beam spectrum_table_units must be one of {TABLE_UNITS}, "
                                 f"got {self.spectrum_table_units!r}")
            object.__setattr__(self, "spectrum_table", tuple(tuple(map(float, row)) for row in self.spectrum_table))
            self.spectrum_density()
        elif self.spectrum_table is not None:
            raise ValueError(f"beam spectrum_table is given but spectrum is {self.spectrum!r}; set spectrum: table")

    @property
    def wavelength_m(self) -> float:
        return wavelength_m(self.photon_energy_ev)

    @property
    def fluence_per_m2(self) -> float:
        """Photons per m^2 on the crystal: Phi = N_photons / (pi r_beam^2)."""
        return self.n_photons / (math.pi * self.beam_radius_m ** 2)

    @property
    def spectrum_sigma(self) -> float:
        """Standard deviation of the relative wavelength deviation for a Gaussian spectrum (FWHM / 2.3548)."""
        return self.bandwidth / FWHM_PER_SIGMA

    def spectrum_density(self) -> tuple[np.ndarray, np.ndarray]:
        """A table spectrum as (eps, S(eps)): increasing relative wavelength offsets and the density per unit eps,
        normalised (trapezoid rule) to 1. Photon energies E convert as eps = E_0 / E - 1, S_eps = S_E E^2 / E_0
        (lambda = hc / E). ValueError (one line) for a table that is not usable."""
        table = np.asarray(self.spectrum_table, dtype=float)
        if table.ndim != 2 or table.shape[1] != 2 or len(table) < 2:
            raise ValueError(f"beam spectrum_table needs at least 2 rows of (x, weight), got shape {table.shape}")
        x, weight = table[:, 0], table[:, 1]
        if not (np.isfinite(table).all() and (weight >= 0).all() and weight.sum() > 0):
            raise ValueError("beam spectrum_table weights must be finite, >= 0 and not all zero")
        if self.spectrum_table_units == "ev":
            if not (x > 0).all():
                raise ValueError("beam spectrum_table photon energies must be positive (eV)")
            eps = self.photon_energy_ev / x - 1.0
            density = weight * x ** 2 / self.photon_energy_ev
        else:
            eps, density = x, weight
        order = np.argsort(eps)
        eps, density = eps[order], density[order]
        if np.any(np.diff(eps) <= 0):
            raise ValueError("beam spectrum_table has repeated wavelengths")
        if eps[0] < -0.4 or eps[-1] > 0.4:
            raise ValueError(f"beam spectrum_table reaches {eps[0]:+.3f} .. {eps[-1]:+.3f} in relative wavelength; "
                             "it must lie within +-0.4 of photon_energy_ev")
        return eps, density / np.trapezoid(density, eps)


@dataclass(frozen=True)
class Spectrum:
    """Spectral density S(eps) per unit relative wavelength eps = lambda / lambda_0 - 1, integral 1.

    kind "tophat" (full width ``width``), "gaussian" (standard deviation ``sigma``) or "table" (piecewise linear
    through ``table_eps``, ``table_density``). ``lo``, ``hi``: the support integrated over (a Gaussian's to
    +-8 sigma, which leaves out 1e-15 of it).
    """

    kind: str
    lo: float
    hi: float
    sigma: float = 0.0
    table_eps: tuple = ()
    table_density: tuple = ()

    @classmethod
    def from_beam(cls, beam) -> "Spectrum":
        """The spectrum of a :class:`~cxlspeaks.simulate.beam.Beam`."""
        if beam.spectrum == "tophat":
            return cls("tophat", -beam.bandwidth / 2, beam.bandwidth / 2)
        if beam.spectrum == "gaussian":
            sigma = beam.spectrum_sigma
            return cls("gaussian", -8 * sigma, 8 * sigma, sigma=sigma)
        eps, density = beam.spectrum_density()
        return cls("table", float(eps[0]), float(eps[-1]), table_eps=tuple(eps), table_density=tuple(density))

    def density(self, eps: np.ndarray) -> np.ndarray:
        """S(eps) (per unit relative wavelength), zero outside the support."""
        eps = np.asarray(eps, dtype=float)
        inside = (eps >= self.lo) & (eps <= self.hi)
        if self.kind == "tophat":
            return np.where(inside, 1.0 / (self.hi - self.lo), 0.0)
        if self.kind == "gaussian":
            return np.exp(-0.5 * (eps / self.sigma) ** 2) / (self.sigma * math.sqrt(2 * math.pi))
        return np.interp(eps, self.table_eps, self.table_density, left=0.0, right=0.0)

    @property
    def max_density(self) -> float:
        if self.kind == "tophat":
            return 1.0 / (self.hi - self.lo)
        if self.kind == "gaussian":
            return 1.0 / (self.sigma * math.sqrt(2 * math.pi))
        return float(max(self.table_density))


def read_spectrum_csv(path: str | Path) -> tuple[tuple[float, float], ...]:
    """Read a two-column CSV spectrum (x, weight; an optional header line of text) into ``spectrum_table`` rows.

    ValueError naming the file for a missing file or a malformed table."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: spectrum file not found")
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#",
                           skiprows=1 if _has_header(path) else 0)
    except ValueError as exc:
        raise ValueError(f"{path}: not a two-column CSV of numbers ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"{path}: a spectrum needs two columns (x, weight), got {table.shape[1]}")
    return tuple((float(a), float(b)) for a, b in table)


def _has_header(path: Path) -> bool:
    with open(path) as fh:
        for line in fh:
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    [float(v) for v in line.split(",")]
                    return False
                except ValueError:
                    return True
    return False
