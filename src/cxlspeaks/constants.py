"""Physical constants (CODATA 2018) and unit helpers used by every simulator.

All quantities are SI unless the name says otherwise (``_A`` for angstrom, ``_ev`` for electronvolt).
"""

from __future__ import annotations

#: Classical electron radius r_e in metres (CODATA 2018).
CLASSICAL_ELECTRON_RADIUS_M = 2.8179403262e-15

#: h * c in eV * angstrom (CODATA 2018), so lambda[A] = HC_EV_A / E[eV].
HC_EV_A = 12398.419843320026

#: Full width at half maximum of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.3548200450309493


def wavelength_m(photon_energy_ev: float) -> float:
    """Photon wavelength in metres: lambda = h c / E."""
    if not photon_energy_ev > 0:
        raise ValueError(f"photon energy must be positive, got {photon_energy_ev} eV")
    return HC_EV_A / photon_energy_ev * 1e-10


def photon_energy_ev(wavelength_m_: float) -> float:
    """Photon energy in eV of a wavelength in metres: E = h c / lambda."""
    return HC_EV_A / (wavelength_m_ * 1e10)
