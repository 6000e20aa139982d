"""Geometry files and per-pixel physics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxlspeaks.geometry import (EIGER4M_GAPS_FS, EIGER4M_GAPS_SS, Geometry, GeometryError, Panel,
                                eiger4m_geometry, parse_geometry, read_geometry, source_single_panel_geometry,
                                tiny_geometry)

from conftest import REPO, shared_file


def test_shipped_geometry_files_are_what_the_code_writes():
    assert (REPO / "config/geometry/eiger4m.geom").read_text() == eiger4m_geometry().to_geom_text()
    assert ((REPO / "config/geometry/source_single_panel.geom").read_text()
            == source_single_panel_geometry().to_geom_text())


@pytest.mark.parametrize("make", [eiger4m_geometry, source_single_panel_geometry, tiny_geometry])
def test_round_trip_keeps_pixels_and_mask(make):
    geom = make().with_beam(7000.0, 0.01)
    again = parse_geometry(geom.to_geom_text())
    assert again.shape == geom.shape
    assert again.photon_energy_ev == 7000.0 and again.bandwidth == 0.01
    np.testing.assert_array_equal(again.mask, geom.mask)
    np.testing.assert_allclose(again.pixel_positions_m, geom.pixel_positions_m, rtol=0, atol=1e-12)


def test_eiger4m_shape_and_gaps():
    geom = eiger4m_geometry()
    assert geom.shape == (2167, 2070)
    mask = geom.mask
    for lo, hi in EIGER4M_GAPS_FS:
        assert not mask[:, lo:hi + 1].any() and mask[:, lo - 1].any() and mask[:, hi + 1].any()
    for lo, hi in EIGER4M_GAPS_SS:
        assert not mask[lo:hi + 1, :].any() and mask[lo - 1, :].any() and mask[hi + 1, :].any()
    n_gap = geom.shape[0] * 10 + 3 * 37 * geom.shape[1] - 3 * 37 * 10
    assert mask.size - mask.sum() == n_gap


def test_reads_source_paper_geometry():
    geom = read_geometry(shared_file("data", "Eiger4M.geom"))
    assert geom.shape == (2163, 2069)
    assert geom.clen_m == 0.15 and geom.photon_energy_ev is None
    panel = geom.panels[0]
    assert (panel.corner_x, panel.corner_y) == (-1034, -1531)
    assert panel.data == "/entry/data/data" and panel.dims == ("%", "ss", "fs")
    # the beam (x = y = 0) lies on the corner between pixels 1033 and 1034 (raw centre convention)
    pos = geom.pixel_positions_m
    assert pos[1531, 1034, 0] == pytest.approx(0.5 / panel.res)
    assert pos[1530, 1033, 1] == pytest.approx(-0.5 / panel.res)
    assert geom.mask.all()


def test_reads_independent_eiger4m_geometry_with_gaps():
    geom = read_geometry(shared_file("data", "NanoPeakCell", "Eiger4M.geom"))
    ours = eiger4m_geometry()
    assert geom.shape == ours.shape
    np.testing.assert_array_equal(geom.mask, ours.mask)


def test_pixel_centre_convention_and_scattering_angle():
    geom = source_single_panel_geometry(clen_m=0.25)
    res = geom.panels[0].res
    fs, ss = 1500, 200
    x, y, z = geom.pixel_positions_m[ss, fs]
    assert (x, y, z) == pytest.approx(((fs + 0.5 - 1034) / res, (ss + 0.5 - 1531) / res, 0.25))
    assert geom.two_theta_rad[ss, fs] == pytest.approx(math.atan(math.hypot(x, y) / z))


def test_solid_angles_of_a_flat_panel_sum_to_the_analytic_value():
    """Sum of A cos(alpha)/R^2 over pixels equals the exact solid angle of the rectangle seen from the origin."""
    n_fs, n_ss, res, clen = 400, 300, 1 / 300e-6, 0.1
    corner_x, corner_y = -100.0, 50.0  # off-centre, so the obliquity varies over the panel
    geom = Geometry([Panel("p", 0, n_fs - 1, 0, n_ss - 1, corner_x, corner_y, res, clen)])

    def corner_term(x, y):
        return math.atan(x * y / (clen * math.sqrt(x * x + y * y + clen * clen)))

    x0, x1 = corner_x / res, (corner_x + n_fs) / res
    y0, y1 = corner_y / res, (corner_y + n_ss) / res
    exact = corner_term(x1, y1) - corner_term(x0, y1) - corner_term(x1, y0) + corner_term(x0, y0)
    assert geom.solid_angles_sr.sum() == pytest.approx(exact, rel=1e-5)


def test_solid_angle_of_a_tilted_panel_uses_its_normal():
    tilt = math.radians(30)
    panel = Panel("p", 0, 0, 0, 0, -0.5, -0.5, 1e4, 0.2,
                  fs_vec=(math.cos(tilt), 0.0, math.sin(tilt)))
    geom = Geometry([panel])
    area = 1e-8
    r = np.linalg.norm(geom.pixel_positions_m[0, 0])
    assert geom.solid_angles_sr[0, 0] == pytest.approx(area * math.cos(tilt) / r ** 2, rel=1e-3)


def test_polarisation_factor_limits(tiny):
    pos = tiny.pixel_positions_m
    p_x = tiny.polarisation_factors(1.0)
    s = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    np.testing.assert_allclose(p_x, 1 - s[..., 0] ** 2)
    unpolarised = tiny.polarisation_factors(0.5)
    np.testing.assert_allclose(unpolarised, (1 + np.cos(tiny.two_theta_rad) ** 2) / 2)


def test_q_follows_bragg_law(tiny):
    q = tiny.q_per_A(8000.0)
    lam = 12398.419843320026 / 8000.0
    np.testing.assert_allclose(q, 4 * np.pi * np.sin(tiny.two_theta_rad / 2) / lam)


def test_ray_to_pixel_inverts_pixel_positions():
    geom = eiger4m_geometry(clen_m=0.35)
    rng = np.random.default_rng(1)
    ss = rng.integers(0, geom.shape[0], 50)
    fs = rng.integers(0, geom.shape[1], 50)
    fs_back, ss_back, panel = geom.ray_to_pixel(geom.pixel_positions_m[ss, fs] * 3.0)
    np.testing.assert_allclose(fs_back, fs, atol=1e-9)
    np.testing.assert_allclose(ss_back, ss, atol=1e-9)
    assert (panel == 0).all()
    fs_miss, _, panel_miss = geom.ray_to_pixel(np.array([[1.0, 0, 0.1], [0, 0, -1]]))
    assert np.isnan(fs_miss).all() and (panel_miss == -1).all()


@pytest.mark.parametrize("text, message", [
    ("panel0/min_fs = 0\n", "missing"),
    ("clen = 0.1\nres = 1\np/min_fs = 0\np/max_fs = x\np/min_ss = 0\np/max_ss = 1\np/corner_x = 0\n"
     "p/corner_y = 0\n", "p/max_fs: expected a number"),
    ("this is not a geometry\n", "expected 'key = value'"),
    ("clen = -0.1\nres = 1\np/min_fs = 0\np/max_fs = 1\np/min_ss = 0\np/max_ss = 1\np/corner_x = 0\n"
     "p/corner_y = 0\n", "clen + coffset must be positive"),
    ("", "no panels"),
])
def test_bad_geometry_gives_one_line_error(text, message, tmp_path):
    path = tmp_path / "bad.geom"
    path.write_text(text)
    with pytest.raises(GeometryError) as info:
        read_geometry(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_geometry_file_names_it(tmp_path):
    with pytest.raises(GeometryError, match="cannot read geometry file"):
        read_geometry(tmp_path / "nope.geom")


def test_top_level_values_are_defaults_for_later_panels():
    geom = parse_geometry("res = 5000\nclen = 0.2\ncorner_x = -1\ncorner_y = -1\n"
                          "a/min_fs = 0\na/max_fs = 9\na/min_ss = 0\na/max_ss = 9\n"
                          "b/min_fs = 0\nb/max_fs = 9\nb/min_ss = 10\nb/max_ss = 19\nb/clen = 0.3\n")
    assert [p.clen_m for p in geom.panels] == [0.2, 0.3]
    assert all(p.res == 5000 for p in geom.panels)
    assert geom.shape == (20, 10)
