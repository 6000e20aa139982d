"""Beam and sample parameters shared by the Bragg and water simulators (SI units)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..constants import FWHM_PER_SIGMA, wavelength_m

SPECTRA = ("tophat", "gaussian")


@dataclass(frozen=True)
class Beam:
    """An X-ray pulse.

    photon_energy_ev: central photon energy (eV); bandwidth: relative width of the spectrum in wavelength, the
    full width of a tophat or the FWHM of a Gaussian (0.01 = 1 %); n_photons: photons per pulse;
    beam_radius_m: radius of the (flat-top) beam at the sample, so the fluence is n / (pi r^2);
    divergence_rad: full width at half maximum of the incident directions (rad), which widens every spot by
    about distance * divergence; polarisation_fraction: fraction of the beam polarised along x (1 = fully, as
    an inverse-Compton source driven by a linearly polarised laser; 0.5 = unpolarised).
    """

    photon_energy_ev: float
    bandwidth: float = 0.01
    spectrum: str = "tophat"
    n_photons: float = 3e8
    beam_radius_m: float = 5e-6
    divergence_rad: float = 1e-3
    polarisation_fraction: float = 1.0

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
