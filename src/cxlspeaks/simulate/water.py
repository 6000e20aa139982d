"""Liquid-water scattering background, as reborn's ``get_pad_solution_intensity`` computes it (PHYSICS.md).

Expected photons in pixel i:

    I_i = r_e^2 * N_photons * t * n_w(T) * P_i * dOmega_i * S_w(q_i)

with t the liquid-sheet thickness (m), n_w the number density of water molecules (1/m^3), P_i the polarisation
factor, dOmega_i the pixel solid angle (sr) and S_w(q) the scattering of one water molecule in electron units
(|F|^2 S(q)), q = 4 pi sin(theta) / lambda. The beam radius cancels (fluence x illuminated area = N_photons).

S_w(q) at 25 C is tabulated below every ~0.1 1/A: the measured profile of Hura et al. (2003), "Water structure as
a function of temperature from X-ray scattering experiments and ab initio molecular dynamics", Phys. Chem. Chem.
Phys. 5:1981-1991, spliced at low q with Clark et al. (2010), "Small-angle X-ray scattering of water at
temperatures from 0 to 80 C", PNAS 107:14003 (the values reborn uses; listed in PHYSICS.md), plus the profile's
maximum, 56.2 at q = 2.05 1/A, that PHYSICS.md quotes from the same data (the ~0.1 1/A samples straddle it).
Between samples the profile is interpolated with a shape-preserving cubic (PCHIP), so the maximum stays at
2.05 1/A; beyond 6.03 1/A it is held at its last value. Measured against reborn's full 25 C table (0.01 1/A
steps) this differs by at most 0.26 % for 0 <= q <= 6 1/A.

The number density at 25 C is reborn's (and PHYSICS.md's) n_w = 3.33679e28 1/m^3; other temperatures scale it
with the density of water, n_w(T) = n_w(25 C) rho(T) / rho(25 C), rho from the Kell (1975) formula (J. Chem. Eng.
Data 20:97), valid 0-150 C (reborn itself keeps n_w fixed). The *shape* of S_w is the 25 C profile at every temperature
(reborn interpolates between Hura's temperatures; only the 25 C table ships here), so a temperature far from
25 C shifts the absolute scale correctly but not the ring position.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..constants import CLASSICAL_ELECTRON_RADIUS_M
from ..geometry import Geometry
from .beam import Beam

#: S_w (electron units per molecule) at 25 C sampled at q = k * 0.1005 1/A, k = 0..60: every tenth row of reborn's
#: water.dat (Hura 2003 spliced with Clark 2010); PHYSICS.md lists the same values with q rounded to 0.01 1/A.
WATER_SAMPLE_STEP_Q_PER_A = 0.1005
_WATER_SAMPLES_25C = [
    6.50, 6.43, 6.32, 6.22, 6.19, 6.22, 6.31, 6.49, 6.77, 7.21, 7.91, 9.04, 10.82, 13.54, 17.67, 23.59, 31.08,
    39.25, 46.83, 52.59, 55.70, 55.95, 53.75, 50.07, 46.24, 43.24, 41.31, 39.99, 38.61, 36.62, 33.76, 30.13,
    26.06, 22.02, 18.54, 15.95, 14.25, 13.28, 12.81, 12.60, 12.54, 12.54, 12.52, 12.45, 12.33, 12.13, 11.84,
    11.46, 11.02, 10.50, 9.94, 9.35, 8.73, 8.12, 7.57, 7.05, 6.58, 6.17, 5.83, 5.55, 5.34,
]
#: The profile's maximum (PHYSICS.md: 56.2 at q = 2.05 1/A), between the samples at 2.01 and 2.11 1/A.
WATER_PEAK_25C = (2.05, 56.20)

#: (q in 1/angstrom, S_w in electron units per molecule) at 25 C: the samples plus the maximum.
WATER_PROFILE_25C = np.array(sorted([(k * WATER_SAMPLE_STEP_Q_PER_A, v) for k, v in enumerate(_WATER_SAMPLES_25C)]
                                    + [WATER_PEAK_25C]))

_PROFILE = PchipInterpolator(WATER_PROFILE_25C[:, 0], WATER_PROFILE_25C[:, 1])

#: Water molecules per m^3 at 25 C, as reborn's ``water_number_density()`` and PHYSICS.md give it.
WATER_NUMBER_DENSITY_25C = 3.33679e28


def water_structure_factor(q_per_A: np.ndarray) -> np.ndarray:
    """S_w(q): scattering per water molecule (electron units) at 25 C, PCHIP between the tabulated samples."""
    q = np.clip(np.asarray(q_per_A, dtype=float), 0.0, WATER_PROFILE_25C[-1, 0])
    return _PROFILE(q)


def water_density_kg_m3(temperature_k: float) -> float:
    """Density of liquid water (kg/m^3) at 1 atm, Kell (1975) eq. 16, valid 273-423 K."""
    t = temperature_k - 273.15
    if not -0.1 <= t <= 150:
        raise ValueError(f"water temperature {temperature_k} K is outside the liquid range 273-423 K")
    num = (999.83952 + 16.945176 * t - 7.9870401e-3 * t ** 2 - 46.170461e-6 * t ** 3
           + 105.56302e-9 * t ** 4 - 280.54253e-12 * t ** 5)
    return num / (1 + 16.879850e-3 * t)


def water_number_density(temperature_k: float = 298.15) -> float:
    """Water molecules per m^3: reborn's 3.33679e28 at 25 C, scaled by the density ratio rho(T) / rho(25 C)."""
    return WATER_NUMBER_DENSITY_25C * water_density_kg_m3(temperature_k) / water_density_kg_m3(298.15)


def water_intensity(geometry: Geometry, beam: Beam, thickness_m: float = 10e-6,
                    temperature_k: float = 298.15) -> np.ndarray:
    """Expected water photons per pixel (float32, (ss, fs)); zero on masked pixels and outside panels."""
    if not thickness_m >= 0:
        raise ValueError(f"water thickness must be non-negative, got {thickness_m} m")
    q = geometry.q_per_A(beam.photon_energy_ev)
    scale = CLASSICAL_ELECTRON_RADIUS_M ** 2 * beam.n_photons * thickness_m * water_number_density(temperature_k)
    image = (scale * geometry.polarisation_factors(beam.polarisation_fraction) * geometry.solid_angles_sr
             * water_structure_factor(np.nan_to_num(q)))
    image[~geometry.mask] = 0.0
    return image.astype(np.float32)


def thickness_scale(rng: np.random.Generator, jitter: float) -> float:
    """Shot-to-shot thickness factor 1 + jitter * N(0, 1), clipped at 0 (jitter 0 gives exactly 1)."""
    if jitter < 0:
        raise ValueError(f"thickness jitter must be non-negative, got {jitter}")
    return 1.0 if jitter == 0 else max(0.0, 1.0 + jitter * rng.standard_normal())
