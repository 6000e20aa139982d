"""Optional water-background backend: the Kirian lab's reborn (``reborn.simulate.solutions``).

reborn (R. A. Kirian et al., gitlab.com/kirianlab/reborn, GPL-3.0; imported at run time, never vendored) computes
the expected liquid-water photons per pixel with ``get_pad_solution_intensity``:

    I_i = r_e^2 * N_photons * t * n_w * P_i * dOmega_i * S_w(q_i, T)

the same model as the builtin engine (:mod:`cxlspeaks.simulate.water`, PHYSICS.md): t the sheet thickness, n_w
the number density of water molecules, P_i the Thomson polarisation factor, dOmega_i = A |n.s| / R^2 the
small-pixel solid angle and S_w(q) the scattering of one molecule in electron units, q = 4 pi sin(theta) / lambda.
The beam diameter cancels (reborn's volume t pi d^2 / 4 times the fluence N / (pi d^2 / 4)). There is no absorption,
no oblique path-length correction and no separate Compton term in either engine.

reborn's conventions, and how this module maps cxlspeaks onto them (all SI):

* ``reborn.detector.PADGeometry``: ``n_fs``, ``n_ss``, ``fs_vec`` and ``ss_vec`` (one pixel step, metres) and
  ``t_vec``, the lab position of the *centre* of the first pixel in memory. Here fs_vec = ``panel.fs_m()``,
  ss_vec = ``panel.ss_m()`` and t_vec = corner + 0.5 fs + 0.5 ss, which is CrystFEL's (and
  :attr:`cxlspeaks.geometry.Geometry.pixel_positions_m`'s) pixel centre. reborn's arrays are (n_ss, n_fs), slow
  scan first, like ours; each panel's array is put at its min/max fs/ss in the (ss, fs) image.
* ``reborn.source.Beam``: along +z, ``photon_energy`` in joules, ``pulse_energy = N_photons * E`` (reborn derives
  ``n_photons = pulse_energy / photon_energy``), ``polarization_vec = [1, 0, 0]`` and ``polarization_weight`` = the
  fraction f of the intensity polarised along x, so P = f (1 - s_x^2) + (1 - f) (1 - s_y^2), as the builtin.
* ``poisson=False`` is passed, so the result is the expectation (reborn's own Poisson draw uses the global numpy
  RNG with no seed); noise is drawn later by :func:`cxlspeaks.simulate.noise.poisson_counts`.

Differences from the builtin engine (these, not the geometry, set how far the two images differ):

* Profile: reborn reads ``reborn/data/scatter/water/water.dat``: S_w every 0.01005 1/A from 0 to 12.05 1/A for
  1, 11, 25, 44, 55, 66 and 77 C (it adds 273.16, not 273.15), the measured profiles of Hura et al. (2003), "Water
  structure as a function of temperature from X-ray scattering experiments and ab initio molecular dynamics", Phys.
  Chem. Chem. Phys. 5:1981-1991, spliced at low q with Clark et al. (2010), "Small-angle X-ray scattering of water
  at temperatures from 0 to 80 C", PNAS 107:14003. It interpolates linearly in temperature between the bracketing
  columns and linearly in q, clamping outside the table (temperatures outside 274.16-350.16 K silently get the end
  columns; the 77 C column equals the 1 C column above q = 1.49 1/A, so reborn is no reference above 339.16 K).
  The builtin uses only the 25 C table, sampled every ~0.1 1/A (every tenth row of reborn's table, two decimals),
  interpolated linearly in q and held at its last value beyond 6.03 1/A; between its samples it misses the
  curvature of the profile (most on the steep flank of the ring, q = 1.2-1.9 1/A), and away from 25 C it keeps the
  25 C shape, so the ring does not move with temperature.
* Number density: reborn's n_w is fixed at 3.33679e28 1/m^3 (998.2 kg/m^3, water near 20 C) with no temperature
  dependence; the builtin uses the same value at 25 C and scales it with the Kell (1975) density at other
  temperatures.
* Temperature range: the builtin refuses temperatures outside 273-423 K; reborn clamps, and this module warns when
  the temperature is outside reborn's trustworthy 274.16-339.16 K.

Requirements: the real reborn (not the unrelated PyPI placeholder called ``reborn``), which at import time
compiles its Fortran helpers with ``numpy.f2py`` (gfortran, numpy < 2, Python <= 3.11) and needs a scipy that still
has ``scipy.special.lpmn`` (< 1.15) and setuptools with ``pkg_resources``.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np

from ..geometry import Geometry, Panel
from .beam import Beam

__all__ = ["RebornNotAvailableError", "reborn_available", "reborn_water_intensity"]

#: Temperatures (K) between which reborn's water table is trustworthy (its 1 C to 66 C columns, + 273.16).
REBORN_TRUSTED_TEMPERATURE_K = (274.16, 339.16)


class RebornNotAvailableError(ImportError):
    """The reborn package (Kirian lab) cannot be imported or lacks ``get_pad_solution_intensity``."""


def _import_reborn():
    """Import reborn's pieces; return ((detector, source, const, solutions), None) or (None, reason)."""
    cwd = os.getcwd()
    try:
        # reborn prints "You need to install numba ..." on import and may chdir while compiling its Fortran code.
        with contextlib.redirect_stdout(io.StringIO()):
            import reborn  # noqa: F401
            from reborn import const, detector, source
            from reborn.simulate import solutions
    except Exception as exc:  # AttributeError (numpy 2), ImportError (scipy), compile failures, placeholder package
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        with contextlib.suppress(OSError):
            os.chdir(cwd)
    if not callable(getattr(solutions, "get_pad_solution_intensity", None)):
        return None, "reborn.simulate.solutions has no get_pad_solution_intensity (not the Kirian-lab reborn)"
    return (detector, source, const, solutions), None


def reborn_available() -> bool:
    """True when the Kirian-lab reborn imports and provides ``simulate.solutions.get_pad_solution_intensity``."""
    return _import_reborn()[0] is not None


def _pad_geometry(detector, panel: Panel):
    """A reborn PADGeometry for one cxlspeaks panel (t_vec = centre of the panel's first pixel)."""
    pad = detector.PADGeometry()
    pad.n_fs = int(panel.n_fs)
    pad.n_ss = int(panel.n_ss)
    fs, ss = panel.fs_m(), panel.ss_m()
    pad.fs_vec = fs
    pad.ss_vec = ss
    pad.t_vec = panel.corner_m() + 0.5 * fs + 0.5 * ss
    pad.name = panel.name
    return pad


def _reborn_beam(source, const, beam: Beam):
    energy_j = beam.photon_energy_ev * const.eV
    rb = source.Beam(beam_vec=np.array([0.0, 0.0, 1.0]), photon_energy=energy_j,
                     pulse_energy=beam.n_photons * energy_j, polarization_vec=np.array([1.0, 0.0, 0.0]),
                     diameter_fwhm=2.0 * beam.beam_radius_m)
    rb.polarization_weight = float(beam.polarisation_fraction)
    return rb


def reborn_water_intensity(geometry: Geometry, beam: Beam, thickness_m: float = 10e-6,
                           temperature_k: float = 298.15) -> np.ndarray:
    """Expected water photons per pixel from reborn (float32, (ss, fs)); zero on masked pixels and outside panels.

    Same signature and output as :func:`cxlspeaks.simulate.water.water_intensity`. Raises
    :class:`RebornNotAvailableError` when reborn cannot be used.
    """
    mods, reason = _import_reborn()
    if mods is None:
        raise RebornNotAvailableError(
            "reborn water backend unavailable: needs the Kirian-lab reborn (gitlab.com/kirianlab/reborn, numpy<2, "
            f"not the PyPI placeholder) - {reason}")
    detector, source, const, solutions = mods
    if not thickness_m >= 0:
        raise ValueError(f"water thickness must be non-negative, got {thickness_m} m")
    lo, hi = REBORN_TRUSTED_TEMPERATURE_K
    if not lo <= temperature_k <= hi:
        warnings.warn(f"reborn's water profile is clamped or unreliable at {temperature_k} K "
                      f"(trustworthy {lo}-{hi} K)", RuntimeWarning, stacklevel=2)
    pads = [_pad_geometry(detector, p) for p in geometry.panels]
    rb_beam = _reborn_beam(source, const, beam)
    panels = solutions.get_pad_solution_intensity(pads, rb_beam, thickness=float(thickness_m), liquid="water",
                                                  temperature=float(temperature_k), poisson=False)
    image = np.zeros(geometry.shape, dtype=np.float64)
    for p, data in zip(geometry.panels, panels):
        image[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1] = np.asarray(data, dtype=np.float64).reshape(
            p.n_ss, p.n_fs)
    image[~geometry.mask] = 0.0
    return image.astype(np.float32)
