"""The optional reborn water backend: detection, the error without reborn, and agreement with the builtin engine.

The comparison tests need the Kirian-lab reborn (numpy < 2), e.g.
``PYTHONPATH=src:/work/build/reborn-src /work/build/reborn-venv/bin/python -m pytest tests/test_reborn_backend.py``;
under a Python without it they skip.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from cxlspeaks.geometry import Geometry, tiny_geometry
from cxlspeaks.simulate.beam import Beam
from cxlspeaks.simulate.reborn_backend import RebornNotAvailableError, reborn_available, reborn_water_intensity
from cxlspeaks.simulate.water import water_intensity, water_structure_factor

HAVE_REBORN = reborn_available()
needs_reborn = pytest.mark.skipif(not HAVE_REBORN, reason="the Kirian-lab reborn is not importable here")


def _wide_geometry() -> Geometry:
    """64 x 64 pixels of 2 mm at 5 cm: q from 0.1 to 3.7 1/A at 7 keV, across the water ring at 2.05 1/A."""
    return tiny_geometry(64, 64, pixel_size_m=2e-3, clen_m=0.05)


BEAM = Beam(photon_energy_ev=7000.0, n_photons=3e8)


@pytest.fixture
def no_reborn_modules():
    """Hide every reborn module for the test and restore them afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == "reborn" or k.startswith("reborn.")}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k == "reborn" or k.startswith("reborn.")]:
        del sys.modules[k]
    sys.modules.update(saved)


# ---------------------------------------------------------------------- without reborn
@pytest.mark.skipif(HAVE_REBORN, reason="reborn is importable here")
def test_unavailable_in_this_python():
    assert reborn_available() is False
    with pytest.raises(RebornNotAvailableError, match="reborn water backend unavailable"):
        reborn_water_intensity(_wide_geometry(), BEAM)


def test_blocked_import_is_unavailable(no_reborn_modules):
    sys.modules["reborn"] = None  # makes "import reborn" raise ImportError
    assert reborn_available() is False
    with pytest.raises(RebornNotAvailableError) as err:
        reborn_water_intensity(_wide_geometry(), BEAM)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ImportError)


@pytest.mark.parametrize("solutions_text", [None, "def other():\n    pass\n"])
def test_placeholder_package_is_rejected(no_reborn_modules, tmp_path, monkeypatch, solutions_text):
    pkg = tmp_path / "reborn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("__version__ = '0.0.1'\n")
    if solutions_text is not None:
        (pkg / "simulate").mkdir()
        (pkg / "simulate" / "__init__.py").write_text("")
        (pkg / "simulate" / "solutions.py").write_text(solutions_text)
        for name in ("const", "detector", "source"):
            (pkg / f"{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reborn_available() is False
    with pytest.raises(RebornNotAvailableError):
        reborn_water_intensity(_wide_geometry(), BEAM)


# ---------------------------------------------------------------------- with reborn
@needs_reborn
def test_reborn_matches_builtin_within_one_percent():
    geom = _wide_geometry()
    q = geom.q_per_A(BEAM.photon_energy_ev)
    assert np.nanmax(q[geom.mask]) > 2.05 > np.nanmin(q[geom.mask])
    builtin = water_intensity(geom, BEAM, 10e-6, 298.15).astype(float)
    reborn = reborn_water_intensity(geom, BEAM, 10e-6, 298.15)
    assert reborn.dtype == np.float32 and reborn.shape == geom.shape
    assert np.all(reborn[~geom.mask] == 0)
    signal = geom.mask & (builtin > 0)
    assert signal.sum() > 0.9 * geom.mask.sum()
    rel = np.abs(reborn[signal] / builtin[signal] - 1)
    assert rel.max() < 0.01, (f"max relative difference {rel.max():.4%} at q = {q[signal][rel.argmax()]:.3f} 1/A "
                              f"({(rel > 0.01).sum()} of {rel.size} pixels above 1 %)")


@needs_reborn
@pytest.mark.parametrize("polarisation_fraction", [1.0, 0.5, 0.0])
def test_reborn_matches_builtin_apart_from_the_profile(polarisation_fraction):
    """Geometry, solid angle, polarisation, n_w and flux agree to float32 precision once S_w(q) is divided out."""
    from reborn.simulate import solutions

    geom = _wide_geometry()
    beam = dataclasses.replace(BEAM, polarisation_fraction=polarisation_fraction, n_photons=1e9)
    builtin = water_intensity(geom, beam, 20e-6, 298.15).astype(float)
    reborn = reborn_water_intensity(geom, beam, 20e-6, 298.15).astype(float)
    signal = geom.mask & (builtin > 0)
    q = geom.q_per_A(beam.photon_energy_ev)[signal]
    profile_ratio = solutions.water_scattering_factor_squared(q * 1e10, temperature=298.15) / water_structure_factor(q)
    np.testing.assert_allclose(reborn[signal] / builtin[signal], profile_ratio, rtol=1e-5)


@needs_reborn
def test_split_panels_are_placed_like_one_panel():
    """Two panels (left and right halves) give the image of the single panel they were cut from."""
    geom = _wide_geometry()
    (p,) = geom.panels
    half = p.n_fs // 2
    left = dataclasses.replace(p, name="left", max_fs=p.min_fs + half - 1)
    right = dataclasses.replace(p, name="right", min_fs=p.min_fs + half, corner_x=p.corner_x + half)
    regions = [dataclasses.replace(b, panel=None) for b in geom.bad_regions]  # gaps were tied to "panel0"
    split = dataclasses.replace(geom, panels=[right, left], bad_regions=regions)
    np.testing.assert_array_equal(split.mask, geom.mask)
    one = reborn_water_intensity(geom, BEAM)
    two = reborn_water_intensity(split, BEAM)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=0)
