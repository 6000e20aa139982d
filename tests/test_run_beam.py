"""`cxlspeaks run --beam-fit`: continuous photon energy and camera length with uncertainties per frame, from the
water ring of Poisson frames drawn from the project's own water model (the truth is known)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxlspeaks.cli import main
from cxlspeaks.geometry import parse_geometry, shipped_geometry
from cxlspeaks.run_beam import BEAM_FIT_COLUMNS, BeamFitter
from cxlspeaks.simulate import Beam
from cxlspeaks.simulate.water import water_intensity
from test_run_sources import geom_text, models, write_stack  # noqa: F401  (models: the module's fixture)


def water_frames(geometry, energy_ev: float, n: int, seed: int, n_photons: float = 3e10) -> np.ndarray:
    """Poisson frames of the builtin water model (10 um sheet) at ``energy_ev`` on ``geometry``."""
    expected = water_intensity(geometry, Beam(energy_ev, n_photons=n_photons), 10e-6)
    return np.random.default_rng(seed).poisson(expected, size=(n, *expected.shape)).astype(np.float64)


@pytest.mark.parametrize("energy_ev, clen_m", [(7000.0, 0.15), (9000.0, 0.12)])
def test_the_fit_finds_the_energy_and_distance_within_its_stated_uncertainty(energy_ev, clen_m):
    geometry = shipped_geometry("tiny", clen_m=clen_m).with_beam(energy_ev, 0.01)
    fitter = BeamFitter(geometry)
    pulls_e, pulls_l = [], []
    for frame in water_frames(geometry, energy_ev, 6, seed=3):
        fit = fitter.fit(frame, geometry.mask, geometry)
        assert 0 < fit["photon_energy_fit_sigma_ev"] < 0.2 * energy_ev and 0 < fit["clen_fit_sigma_m"] < 0.2 * clen_m
        pulls_e.append((fit["photon_energy_fit_ev"] - energy_ev) / fit["photon_energy_fit_sigma_ev"])
        pulls_l.append((fit["clen_fit_m"] - clen_m) / fit["clen_fit_sigma_m"])
    assert np.all(np.abs(pulls_e) < 3.5) and np.all(np.abs(pulls_l) < 3.5), (pulls_e, pulls_l)
    # a wrong answer would show: the other test energy is many sigmas away
    other = 9000.0 if energy_ev == 7000.0 else 7000.0
    fit = fitter.fit(water_frames(geometry, other, 1, seed=4)[0], geometry.mask, geometry)
    assert abs(fit["photon_energy_fit_ev"] * fit["clen_fit_m"] - energy_ev * clen_m) > \
        3 * np.hypot(fit["photon_energy_fit_sigma_ev"] * clen_m, fit["clen_fit_sigma_m"] * energy_ev)


def test_bright_spots_and_bad_pixels_do_not_move_the_fit():
    geometry = shipped_geometry("tiny", clen_m=0.15).with_beam(7000.0, 0.01)
    frame = water_frames(geometry, 7000.0, 1, seed=5)[0]
    fitter = BeamFitter(geometry)
    plain = fitter.fit(frame, geometry.mask, geometry)
    spotted, good = frame.copy(), geometry.mask.copy()
    rng = np.random.default_rng(6)
    for _ in range(12):                                   # a hit: Bragg spots of ~500 photons
        a, b = rng.integers(5, frame.shape[0] - 5), rng.integers(5, frame.shape[1] - 5)
        spotted[a - 1:a + 2, b - 1:b + 2] += 60
    spotted[40:44, 40:44] = 1e5                           # hot pixels, masked as the detector says
    good[40:44, 40:44] = False
    hit = fitter.fit(spotted, good, geometry)
    for column in ("photon_energy_fit_ev", "clen_fit_m"):
        sigma = plain[column.replace("_ev", "_sigma_ev").replace("_m", "_sigma_m")]
        assert abs(hit[column] - plain[column]) < sigma
    assert all(np.isnan(v) for v in fitter.fit(np.zeros_like(frame), geometry.mask, geometry).values())


def test_run_adds_the_fit_columns_and_refuses_a_tilted_detector_in_one_line(models, tmp_path, capsys):  # noqa: F811
    # the beam near a corner of the module's 64 x 64 pixels of 1.2 mm, so the water ring (2.05 1/A: 58 mm from the
    # beam at 9 keV, 0.12 m) lies on the detector
    text = geom_text(beam=(2.0, 2.0), clen=0.12, energy=9000.0)
    geometry = parse_geometry(text)
    frames = water_frames(geometry, 9000.0, 3, seed=8, n_photons=3e10)
    stack = write_stack(tmp_path / "frames.h5", frames, text)
    out = tmp_path / "scored.csv"
    assert main(["run", str(stack), "--models", str(models), "--no-peaks", "--beam-fit", "-o", str(out),
                 "--quiet"]) == 0
    table = pd.read_csv(out)
    assert set(BEAM_FIT_COLUMNS) <= set(table.columns) and len(table) == 3
    assert (abs(table["photon_energy_fit_ev"] - 9000.0) < 4 * table["photon_energy_fit_sigma_ev"]).all()
    assert (abs(table["clen_fit_m"] - 0.12) < 4 * table["clen_fit_sigma_m"]).all()
    plain = tmp_path / "plain.csv"
    assert main(["run", str(stack), "--models", str(models), "--no-peaks", "-o", str(plain), "--quiet"]) == 0
    assert not set(BEAM_FIT_COLUMNS) & set(pd.read_csv(plain).columns)
    tilted = write_stack(tmp_path / "tilted.h5", frames, text + "p0/fs = +0.995x +0.0998z\n")
    capsys.readouterr()
    assert main(["run", str(tilted), "--models", str(models), "--no-peaks", "--beam-fit", "-o",
                 str(tmp_path / "t.csv"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--beam-fit" in err[0] and "tilted" in err[0], err
    assert not (tmp_path / "t.csv").exists()


def test_a_frame_from_outside_the_searched_range_gets_no_estimate():
    """0.05 m lies below the 0.10-0.50 m the fit searches: its maximum sits on the edge, so no numbers."""
    geometry = parse_geometry(geom_text(clen=0.05, energy=9000.0))
    fit = BeamFitter(geometry).fit(water_frames(geometry, 9000.0, 1, seed=9)[0], geometry.mask, geometry)
    assert all(np.isnan(v) for v in fit.values()), fit
