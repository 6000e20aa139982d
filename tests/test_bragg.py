"""Physics of the analytic Bragg simulator: positions, Bragg's law, intensities, footprints, gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cxlspeaks.crystal import Crystal
from cxlspeaks.geometry import eiger4m_geometry
from cxlspeaks.simulate import Beam, BraggSimulator, CrystalSample
from cxlspeaks.simulate.bragg import laue_integrated_photons

HC_EV_A = 12398.419843320026


@pytest.fixture(scope="module")
def frames(tiny, synthetic_crystal):
    """Five random orientations at 6 keV, 0.15 m, 1 % tophat, source flux, 10 um crystal."""
    sim = BraggSimulator(tiny, synthetic_crystal, Beam(6000.0))
    _, astars = synthetic_crystal.random_orientations(np.random.default_rng(42), 5)
    return sim, [sim.simulate(a) for a in astars]


def _independent_ray_trace(geometry, astar, hkl, lam=None):
    """Spot position from k_out = k_in + g, met with the panel plane z = clen (written apart from the package);
    at the Bragg wavelength lambda_g = -2 g_z / |g|^2 unless ``lam`` (m) is given."""
    g = np.asarray(hkl, dtype=float) @ astar.T
    if lam is None:
        lam = -2 * g[:, 2] / np.sum(g * g, axis=1)
    k_out = g + np.outer(1 / lam, [0, 0, 1])
    panel = geometry.panels[0]
    t = panel.clen_m / k_out[:, 2]
    x, y = t * k_out[:, 0], t * k_out[:, 1]
    return x * panel.res - panel.corner_x - 0.5, y * panel.res - panel.corner_y - 0.5, lam, k_out


def test_spot_centres_lie_where_the_diffracted_ray_meets_the_panel(frames, tiny):
    """Reflections excited inside the band (partiality > 0.9): the centre is the ray at the Bragg wavelength,
    which is also the photon-weighted wavelength. (Partially excited reflections are drawn at the band's edge
    instead: tests/test_partials.py checks those against a brute-force lattice-transform sum.)"""
    _, frame_list = frames
    n = 0
    for frame in frame_list:
        p = frame.peaks[frame.peaks["partiality"] > 0.9]
        fs, ss, lam, _ = _independent_ray_trace(tiny, frame.astar_bstar_cstar, p[["h", "k", "l"]].to_numpy())
        assert np.abs(fs - p["fs"]).max() <= 0.05 and np.abs(ss - p["ss"]).max() <= 0.05
        # the 1/s^2 tails cut by the band's edges pull the mean wavelength toward the band by < 5e-4
        np.testing.assert_allclose(p["wavelength_A"], lam * 1e10, rtol=5e-4)
        n += len(p)
    assert n > 20


def test_diffracted_wave_vector_is_elastic_and_bragg_law_holds(frames, tiny, synthetic_crystal):
    _, frame_list = frames
    a, _, c = synthetic_crystal.cell_parameters[:3]
    panel = tiny.panels[0]
    lam0 = HC_EV_A / 6000.0
    for frame in frame_list:
        # a tophat sends photons at in-band wavelengths only, so every spot's mean wavelength is in the band
        assert (np.abs(frame.peaks["wavelength_A"] / lam0 - 1) <= 0.005 + 1e-9).all()
        p = frame.peaks[frame.peaks["partiality"] > 0.9]
        h, k, l = p[["h", "k", "l"]].to_numpy().T
        lam_A = p["wavelength_A"].to_numpy()
        _, _, _, k_out = _independent_ray_trace(tiny, frame.astar_bstar_cstar, np.c_[h, k, l], lam_A * 1e-10)
        d_A = 1 / np.sqrt((h ** 2 + k ** 2) / a ** 2 + l ** 2 / c ** 2)                       # tetragonal cell
        np.testing.assert_allclose(np.linalg.norm(k_out, axis=1), 1e10 / lam_A, rtol=2e-5)   # |k_out| = 1/lambda
        x = (p["fs"].to_numpy() + 0.5 + panel.corner_x) / panel.res
        y = (p["ss"].to_numpy() + 0.5 + panel.corner_y) / panel.res
        theta = np.arctan(np.hypot(x, y) / panel.clen_m) / 2
        np.testing.assert_allclose(2 * d_A * np.sin(theta), lam_A, rtol=1e-4)


def test_gap_pixels_record_nothing_and_photons_add_up(frames, tiny):
    _, frame_list = frames
    for frame in frame_list:
        assert (frame.image[~tiny.mask] == 0).all()
        assert frame.image.dtype == np.float32
        assert frame.image.sum() == pytest.approx(frame.peaks["photons"].sum(), rel=1e-5)
        assert (frame.peaks["photons"] <= frame.peaks["photons_total"] * (1 + 1e-9)).all()


def test_footprint_is_normalised_and_centred_on_the_spot(frames, tiny):
    """A spot drawn alone on good pixels holds N_hkl, and its centroid is the listed position (<= 0.05 px).
    (Drawn alone: the sinc^2 tails excite hundreds of weak spots, so no spot of a frame is isolated.)"""
    sim, frame_list = frames
    mask = tiny.mask
    checked = 0
    for frame in frame_list:
        table, nodes = sim._excited(frame.astar_bstar_cstar)
        for row in np.flatnonzero(table["photons_total"].to_numpy() > 1.0):
            fs, ss, total = table.loc[row, ["fs", "ss", "photons_total"]]
            i, j = int(round(ss)), int(round(fs))
            if i < 4 or j < 4 or i >= tiny.shape[0] - 4 or j >= tiny.shape[1] - 4:
                continue
            if not mask[i - 4:i + 5, j - 4:j + 5].all():
                continue
            image, _ = sim.render(table.loc[[row]].reset_index(drop=True), {k: v[[row]] for k, v in nodes.items()})
            box = image[i - 4:i + 5, j - 4:j + 5].astype(float)
            assert box.sum() == pytest.approx(total, rel=1e-5)
            yy, xx = np.mgrid[i - 4:i + 5, j - 4:j + 5]
            assert abs((box * xx).sum() / box.sum() - fs) <= 0.05
            assert abs((box * yy).sum() / box.sum() - ss) <= 0.05
            checked += 1
    assert checked >= 20


def test_divergence_widens_spots_by_distance_times_angle(tiny, synthetic_crystal):
    wide = BraggSimulator(tiny, synthetic_crystal, Beam(6000.0, divergence_rad=20e-3))
    res = tiny.panels[0].res
    sigma = wide.spot_sigma_for(np.array([0.15]), np.array([res]))[0]
    assert sigma == pytest.approx(math.hypot(0.5, 0.15 * 20e-3 / 2.3548200450309493 * res))
    astar = synthetic_crystal.orientation_from_quaternion([0.3, 0.5, -0.2, 0.7])
    table, nodes = wide._excited(astar)
    row = int(table["photons_total"].to_numpy().argmax())
    image, _ = wide.render(table.loc[[row]].reset_index(drop=True), {k: v[[row]] for k, v in nodes.items()})
    fs, ss = table.loc[row, ["fs", "ss"]]                           # the strongest spot, drawn alone
    i, j = int(round(ss)), int(round(fs))
    box = image[i - 8:i + 9, j - 8:j + 9].astype(float)
    yy, xx = np.mgrid[i - 8:i + 9, j - 8:j + 9]
    var_fs = (box * (xx - fs) ** 2).sum() / box.sum()
    distance = np.linalg.norm(tiny.pixel_positions_m[i, j])
    expected = wide.spot_sigma_for(np.array([distance]), np.array([res]))[0]
    assert math.sqrt(var_fs - 1 / 12) == pytest.approx(expected, rel=0.05)  # 1/12: pixel integration


def test_expected_photons_scale_with_fluence_and_crystal_volume(tiny, synthetic_crystal):
    astar = synthetic_crystal.orientation_from_quaternion([0.1, 0.7, 0.3, -0.6])

    def photons(beam, sample=CrystalSample()):
        p = BraggSimulator(tiny, synthetic_crystal, beam, sample).simulate(astar).peaks
        return p.set_index(["h", "k", "l"])

    base = photons(Beam(6000.0))
    more = photons(Beam(6000.0, n_photons=6e8))
    wider = photons(Beam(6000.0, beam_radius_m=10e-6))
    for other, factor in ((more, 2.0), (wider, 0.25)):       # (the sets differ by the weakest, < min_photons)
        both = base.merge(other, left_index=True, right_index=True, suffixes=("", "_other"))
        assert len(both) > 0.9 * min(len(base), len(other))
        np.testing.assert_allclose(both["photons_total_other"], factor * both["photons_total"], rtol=1e-12)
    big = photons(Beam(6000.0), CrystalSample(size_m=20e-6))
    both = base.merge(big, left_index=True, right_index=True, suffixes=("", "_big"))
    # N = V x (the part of the profile inside the band): 8x the volume, times the ratio of partialities (the
    # 1/s^2 tails of the shape transform leave no reflection fully excited, so no plain factor 8)
    inside = (both["partiality"] > 0.95) & (both["partiality_big"] > 0.95)
    assert inside.sum() > 10
    ratio = both["photons_total_big"] / both["photons_total"] / (both["partiality_big"] / both["partiality"])
    np.testing.assert_allclose(ratio[inside], 8.0, rtol=2e-3)
    # the tails outside the band hold e_1 / (2 pi^2 |g_z| eps_out) ~ 1 / edge: half as much for twice the edge
    outside = (1 - both["partiality_big"]) / (1 - both["partiality"])
    assert np.median(outside[inside & (both["partiality"] < 0.999)]) == pytest.approx(0.5, rel=0.1)


def test_laue_formula_reproduces_the_pattern_sim_worked_example():
    """PHYSICS.md: 1IC6 (13, 8, -6), |F|^2 = 7.63e5, 6 keV, 1 % tophat, 3e8 photons, 5 um beam, 148 x 148 x 93
    cells, P = 1, lambda_g = 2.0609 A: 0.737 photons (pattern_sim 0.10.2's spot holds 0.746)."""
    v_cell = 67.288 ** 2 * 106.582 * 1e-30
    d = 1 / math.sqrt((13 ** 2 + 8 ** 2) / 67.288 ** 2 + 6 ** 2 / 106.582 ** 2) * 1e-10
    lam = 2.0609e-10
    n = laue_integrated_photons(3e8 / (math.pi * 25e-12), 1.0, 7.63e5, 148 * 148 * 93 * v_cell, v_cell, lam,
                                (lam / (2 * d)) ** 2, 1 / 0.01)
    assert n == pytest.approx(0.737, abs=0.001)


def test_simulator_puts_the_worked_example_reflection_on_the_detector():
    """The same reflection, oriented into diffraction at 2.0609 A, through the whole simulator.

    The Laue formula's 0.737 assumes the whole profile inside the band. The crystal's shape transform has 1/s^2
    tails, and 8.5 % of this 1 um crystal's profile falls outside the band (its Bragg wavelength is 0.27 % from
    the centre, 0.23 % from the edge), and the exact Jacobian of relative wavelength adds lambda_g / lambda_0:
    0.737 x 0.9973 x 0.915 = 0.673 photons. pattern_sim 0.10.2, converged (40 spectrum samples), gives 1 um
    reflections 0.84-0.95 of the Laue value (simulate/pattern_sim.py); tests/test_partials.py checks the number
    against a brute-force sum of the lattice transform."""
    import gemmi

    cell = gemmi.UnitCell(67.288, 67.288, 106.582, 90, 90, 90)
    crystal = Crystal(cell=cell, spacegroup=gemmi.SpaceGroup("P 43 21 2"), hkl=np.array([[13, 8, -6]]),
                      intensity=np.array([7.63e5]), d_min_A=4.0, source="worked example")
    g0 = crystal.reciprocal_basis_m() @ np.array([13, 8, -6])
    lam = 2.0609e-10
    gz = -lam * (g0 @ g0) / 2
    target = np.array([0.0, -math.sqrt(g0 @ g0 - gz ** 2), gz])  # yz plane: P = 1 for x polarisation
    rotation, _ = Rotation.align_vectors([target], [g0])
    astar = rotation.as_matrix() @ crystal.reciprocal_basis_m()
    edge = (148 * 148 * 93) ** (1 / 3) * (67.288 ** 2 * 106.582) ** (1 / 3) * 1e-10
    sim = BraggSimulator(eiger4m_geometry(0.15), crystal, Beam(6000.0, divergence_rad=0.0),
                         CrystalSample(size_m=edge))
    peaks = sim.excited_reflections(astar)
    assert len(peaks) == 1
    lam0 = HC_EV_A / 6000.0 * 1e-10
    assert peaks.loc[0, "wavelength_A"] == pytest.approx(2.0609, rel=5e-4)      # the tails pull it into the band
    partiality = peaks.loc[0, "partiality"]
    assert 0.88 < partiality < 0.95
    assert peaks.loc[0, "photons_total"] == pytest.approx(0.737 * lam / lam0 * partiality, rel=5e-3)
    assert peaks.loc[0, "photons_total"] == pytest.approx(0.673, abs=0.003)


def test_gaussian_spectrum_weights_reflections_by_the_spectrum(tiny, synthetic_crystal):
    """A Gaussian spectrum of FWHM b: a reflection at the centre gets rho = 1/(sigma sqrt(2 pi)), one at
    eps = b/2 half of that (the FWHM definition)."""
    beam = Beam(6000.0, spectrum="gaussian")
    _, astars = synthetic_crystal.random_orientations(np.random.default_rng(8), 3)
    sim = BraggSimulator(tiny, synthetic_crystal, beam)
    peak_rho = 1 / (beam.spectrum_sigma * math.sqrt(2 * math.pi))
    for astar in astars:
        p = sim.excited_reflections(astar)
        g = p[["h", "k", "l"]].to_numpy() @ astar.T
        eps = -2 * g[:, 2] / np.sum(g * g, axis=1) / (HC_EV_A / 6000.0 * 1e-10) - 1   # Bragg wavelength
        rho = p["partiality"].to_numpy() / beam.bandwidth
        expected = peak_rho * np.exp(-eps ** 2 / (2 * beam.spectrum_sigma ** 2))
        # sharp reflections (10 um crystal) within 2 sigma of the centre: the profile adds < 1 % to the width
        core = np.abs(eps) < 2 * beam.spectrum_sigma
        assert core.sum() > 10
        close = np.isclose(rho[core], expected[core], rtol=0.03)
        assert close.mean() > 0.8
