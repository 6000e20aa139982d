"""Partial reflections against the exact physics: a brute-force Monte-Carlo sum of the lattice transform.

The reference here is written apart from the package: it draws fractional offsets x_i from the lattice sum
sin^2(pi N_i x) / sin^2(pi x) of a crystal of N_a x N_b x N_c cells (inverse CDF on a fine grid), puts each
sample q = A* (h + x) on the Ewald sphere of its own wavelength, lambda(q) = -2 q_z / |q|^2, weights it by the
spectrum, the polarisation and the Jacobian lambda^4 / (2 sin^2 theta) of dOmega dlambda -> d^3q, and traces
its ray k_out = q + z / lambda to the detector plane. Its mean is the reflection's photons; its weighted mean
position the spot centre. Nothing of the engine's projection, node layout or closed forms is used.
"""

from __future__ import annotations

import math
import os

import gemmi
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.spatial.transform import Rotation

from cxlspeaks.crystal import Crystal, load_crystal
from cxlspeaks.geometry import source_single_panel_geometry, tiny_geometry
from cxlspeaks.simulate import Beam, BraggSimulator, CrystalSample
from cxlspeaks.simulate.beam import Spectrum
from cxlspeaks.simulate.profile import excitation_error, profile_density, shape_coefficients

R_E = 2.8179403262e-15
CELL = (67.288, 67.288, 106.582)


def _fejer(n_cells: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Offsets x in [-1/2, 1/2) with density proportional to sin^2(pi N x) / sin^2(pi x)."""
    m = 40 * n_cells
    x = (np.arange(m) + 0.5) / m - 0.5
    cdf = np.concatenate([[0.0], np.cumsum(np.sin(np.pi * n_cells * x) ** 2 / np.sin(np.pi * x) ** 2)])
    return np.interp(rng.random(size), cdf / cdf[-1], np.arange(m + 1) / m - 0.5)


def _samples(h, astar, edge_m, beam, panel, x, mosaic_rad=0.0, seed=0):
    """Brute-force samples of reflection h: (weight (M,), fs (M,), ss (M,)) for lattice offsets x (M, 3); the
    reflection's photons are Phi r_e^2 |F|^2 V / V_cell^2 times the mean weight. ``mosaic_rad`` (FWHM): each
    sample's crystal is turned by a rotation vector of independent Gaussian components (exact rotation)."""
    lam0 = beam.wavelength_m
    q = (np.asarray(h, dtype=float) + x) @ astar.T
    if mosaic_rad > 0:
        omega = np.random.default_rng(seed).normal(0, mosaic_rad / 2.3548200450309493, x.shape)
        q = np.einsum("nij,nj->ni", Rotation.from_rotvec(omega).as_matrix(), q)
    q2 = np.einsum("ij,ij->i", q, q)
    k = -q2 / (2 * q[:, 2])
    ok = k > 0
    k = np.where(ok, k, 1.0)
    lam = 1 / k
    k_out = q + np.outer(k, [0.0, 0.0, 1.0])
    u = k_out / np.linalg.norm(k_out, axis=1, keepdims=True)
    f = beam.polarisation_fraction
    pol = f * (1 - u[:, 0] ** 2) + (1 - f) * (1 - u[:, 1] ** 2)
    w = np.where(ok, Spectrum.from_beam(beam).density(lam / lam0 - 1) * pol * 2 * lam ** 2 / (lam0 * q2), 0.0)
    t = panel.clen_m / k_out[:, 2]
    fs = t * k_out[:, 0] * panel.res - panel.corner_x - 0.5
    ss = t * k_out[:, 1] * panel.res - panel.corner_y - 0.5
    return w, np.nan_to_num(fs), np.nan_to_num(ss)


def _lattice_offsets(edge_m, n, seed):
    rng = np.random.default_rng(seed)
    return np.stack([_fejer(max(1, round(edge_m / (c * 1e-10))), rng, n) for c in CELL], axis=1)


def _brute_force(hkl, f2, astar, edge_m, beam, panel, n=400_000, seed=0, mosaic_rad=0.0):
    """(photons (R,), fs (R,), ss (R,), relative MC error (R,)) of reflections ``hkl`` (R, 3) on the plane of
    ``panel`` (fs along x, ss along y, normal to the beam)."""
    x = _lattice_offsets(edge_m, n, seed)
    v_cell = 1 / abs(np.linalg.det(astar))
    out = np.zeros((4, len(hkl)))
    for r, h in enumerate(hkl):
        w, fs, ss = _samples(h, astar, edge_m, beam, panel, x, mosaic_rad, seed)
        photons = beam.fluence_per_m2 * R_E ** 2 * f2[r] * edge_m ** 3 / v_cell ** 2 * w.mean()
        wsum = max(w.sum(), 1e-300)
        out[:, r] = photons, (w * fs).sum() / wsum, (w * ss).sum() / wsum, max(int((w > 0).sum()), 1) ** -0.5
    return out


def _one_reflection(hkl, eps_g, phi, beam):
    """A crystal holding only ``hkl`` (|F|^2 = 7.63e5), turned so that its Bragg wavelength is
    lambda_0 (1 + eps_g) and its diffracted ray leaves at azimuth ``phi``."""
    cell = gemmi.UnitCell(*CELL, 90, 90, 90)
    crystal = Crystal(cell=cell, spacegroup=gemmi.SpaceGroup("P 43 21 2"), hkl=np.array([hkl]),
                      intensity=np.array([7.63e5]), d_min_A=2.0, source="test")
    g0 = crystal.reciprocal_basis_m() @ np.array(hkl)
    gz = -beam.wavelength_m * (1 + eps_g) * (g0 @ g0) / 2
    r = math.sqrt(g0 @ g0 - gz ** 2)
    rotation, _ = Rotation.align_vectors([[r * math.cos(phi), r * math.sin(phi), gz]], [g0])
    return crystal, rotation.as_matrix() @ crystal.reciprocal_basis_m()


# ---------------------------------------------------------------------- the profile
def test_profile_is_the_cosine_transform_of_the_crystals_common_volume():
    """p(s) = 2 int_0^T prod(1 - c_i t) cos(2 pi s t) dt (trapezoid on 2e5 points) over the first two fringes
    (beyond, the fringes fade into their mean), integral 1, face-on cube L sinc^2(pi L s), and tails of mean
    e_1 / (2 pi^2 s^2) (Porod)."""
    edge = 1e-6
    astar = np.diag([1 / (c * 1e-10) for c in CELL])
    rng = np.random.default_rng(3)
    for n in [np.array([1.0, 0, 0]), *rng.normal(size=(3, 3))]:
        n = n / np.linalg.norm(n)
        shape = shape_coefficients(n[None], astar, edge)
        c = np.abs(n) / edge
        t = np.linspace(0, 1 / c.max(), 200_001)
        volume = np.prod(1 - np.outer(t, c), axis=1)
        for s in np.array([0.0, 0.3, 0.9, 1.9]) * c.max():
            numeric = 2 * np.trapezoid(volume * np.cos(2 * np.pi * s * t), t)
            assert profile_density(np.array([s]), shape)[0] == pytest.approx(numeric, rel=1e-6, abs=1e-12 * edge)
        total = sum(quad(lambda s: profile_density(np.array([s]), shape)[0], a, b, limit=500)[0]
                    for a, b in ((-1e10, -1e7), (-1e7, 0), (0, 1e7), (1e7, 1e10)))
        assert total == pytest.approx(1.0, abs=2e-4)      # 1 - e_1 / (pi^2 1e10) beyond the limits
        s = np.linspace(2e8, 2e8 + 20 / shape.t_max[0], 4001)
        mean_tail = profile_density(s, shape).mean()
        assert mean_tail == pytest.approx(shape.e1[0] / (2 * np.pi ** 2) / (s[0] * s[-1]), rel=2e-3)
    face_on = shape_coefficients(np.array([[1.0, 0, 0]]), astar, edge)
    s = np.array([1e5, 4.3e5, 1.9e6])
    np.testing.assert_allclose(profile_density(s, face_on), edge * np.sinc(edge * s) ** 2, rtol=1e-9)
    far = np.linspace(10e6, 11e6, 2001)                 # faded: the mean of sin^2 is 1/2
    np.testing.assert_allclose(profile_density(far, face_on), 1 / (2 * np.pi ** 2 * edge * far ** 2), rtol=1e-9)


def test_mosaic_profile_is_the_shape_profile_convolved_with_a_gaussian():
    astar = np.diag([1 / (c * 1e-10) for c in CELL])
    n = np.array([[0.3, -0.8, 0.52]])
    n /= np.linalg.norm(n)
    shape = shape_coefficients(n, astar, 2e-6)
    sigma = 4e5
    for s in (0.0, 3e5, 1.2e6, 5e6):
        numeric = quad(lambda m: profile_density(np.array([s - m]), shape)[0]
                       * math.exp(-0.5 * (m / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi)),
                       -10 * sigma, 10 * sigma, limit=400, points=[s])[0]
        assert profile_density(np.array([s]), shape, sigma)[0] == pytest.approx(numeric, rel=5e-3)


# ---------------------------------------------------------------------- single reflections vs brute force
@pytest.mark.parametrize("edge_m", [1e-6, 10e-6])
@pytest.mark.parametrize("eps_g, phi", [(0.0, 0.3), (0.0055, -1.3), (0.007, 0.3), (-0.008, -1.3)])
def test_partial_reflection_matches_the_brute_force_lattice_sum(edge_m, eps_g, phi):
    """Spot centre within 0.3 px (75 um pixels, 0.15 m) and photons within 5 % (and 4 MC sigma) of the
    brute-force sum, in the band (eps_g = 0) and 0.05-0.3 % outside it (excited by the tails at its edge)."""
    beam = Beam(6000.0, divergence_rad=0.0)
    crystal, astar = _one_reflection((13, 8, -6), eps_g, phi, beam)
    geometry = source_single_panel_geometry(0.15)
    sim = BraggSimulator(geometry, crystal, beam, CrystalSample(edge_m), min_photons=1e-9)
    row = sim.excited_reflections(astar).iloc[0]
    photons, fs, ss, rel_err = _brute_force([[13, 8, -6]], [7.63e5], astar, edge_m, beam, geometry.panels[0])[:, 0]
    assert math.hypot(row["fs"] - fs, row["ss"] - ss) <= 0.3
    assert row["photons_total"] == pytest.approx(photons, rel=max(0.05, 4 * rel_err))
    # the photons come from the band alone: outside it a reflection is drawn at the wavelengths its tails
    # (and, for 1 um, their first fringes) excite inside the band, not at lambda_g
    assert abs(row["wavelength_A"] * 1e-10 / beam.wavelength_m - 1) <= 0.005
    if eps_g != 0:
        assert row["partiality"] < 0.5


@pytest.mark.parametrize("edge_m", [1e-6, 10e-6])
def test_gaussian_and_table_spectra_match_the_brute_force_sum(edge_m):
    """A reflection 1.5 FWHM-halves out on a Gaussian spectrum, and one beside a two-peaked table spectrum:
    photons within 5 % and centres within 0.3 px of the brute-force sum."""
    table = [(-0.006, 0.0), (-0.004, 1.0), (-0.002, 0.2), (0.001, 0.2), (0.003, 2.0), (0.005, 0.0)]
    for beam, eps_g in ((Beam(6000.0, spectrum="gaussian", divergence_rad=0.0), 0.0075),
                        (Beam(6000.0, spectrum="table", spectrum_table=table, divergence_rad=0.0), -0.0065)):
        crystal, astar = _one_reflection((13, 8, -6), eps_g, -1.3, beam)
        geometry = source_single_panel_geometry(0.15)
        sim = BraggSimulator(geometry, crystal, beam, CrystalSample(edge_m), min_photons=1e-9)
        row = sim.excited_reflections(astar).iloc[0]
        photons, fs, ss, rel_err = _brute_force([[13, 8, -6]], [7.63e5], astar, edge_m, beam,
                                                geometry.panels[0])[:, 0]
        assert row["photons_total"] == pytest.approx(photons, rel=max(0.05, 4 * rel_err)), beam.spectrum
        assert math.hypot(row["fs"] - fs, row["ss"] - ss) <= 0.3, beam.spectrum


@pytest.mark.parametrize("eps_g", [0.0, 0.007])
def test_mosaic_reflection_matches_the_brute_force_sum(eps_g):
    """2 mrad FWHM mosaic spread on a 1 um crystal (the profile five times wider): photons within 5 % and the
    centre within 0.3 px of the brute-force sum whose samples are each turned by a random rotation."""
    beam = Beam(6000.0, divergence_rad=0.0)
    crystal, astar = _one_reflection((13, 8, -6), eps_g, 0.3, beam)
    geometry = source_single_panel_geometry(0.15)
    sample = CrystalSample(1e-6, mosaicity_rad=2e-3)
    row = BraggSimulator(geometry, crystal, beam, sample, min_photons=1e-9).excited_reflections(astar).iloc[0]
    photons, fs, ss, rel_err = _brute_force([[13, 8, -6]], [7.63e5], astar, 1e-6, beam, geometry.panels[0],
                                            mosaic_rad=2e-3)[:, 0]
    assert row["photons_total"] == pytest.approx(photons, rel=max(0.05, 4 * rel_err))
    assert math.hypot(row["fs"] - fs, row["ss"] - ss) <= 0.3


def test_photons_are_the_integral_of_spectrum_times_profile():
    """N = Phi r_e^2 |F|^2 V / V_cell^2 int S(eps) P lambda^2 p(s(eps)) d eps, integrated here by scipy's
    adaptive quadrature, for the tophat, a Gaussian and a table, in and out of the band (1 %)."""
    table = [(-0.006, 0.0), (-0.003, 1.0), (0.002, 2.0), (0.006, 0.0)]
    beams = [Beam(6000.0), Beam(6000.0, spectrum="gaussian"),
             Beam(6000.0, spectrum="table", spectrum_table=table)]
    for beam in beams:
        for eps_g in (0.001, 0.0065, -0.012):
            crystal, astar = _one_reflection((13, 8, -6), eps_g, 0.3, beam)
            sample = CrystalSample(2e-6)
            sim = BraggSimulator(source_single_panel_geometry(0.15), crystal, beam, sample, min_photons=1e-12)
            row = sim.excited_reflections(astar).iloc[0]
            g = astar @ np.array([13, 8, -6], dtype=float)
            spectrum = Spectrum.from_beam(beam)

            def integrand(eps):
                k = 1 / (beam.wavelength_m * (1 + eps))
                k_out = g + np.array([0, 0, k])
                n = k_out / np.linalg.norm(k_out)
                s = excitation_error(g[None], k)
                p = profile_density(s, shape_coefficients(n[None], astar, sample.size_m))[0]
                return spectrum.density(eps) * (1 - n[0] ** 2) * p / k ** 2

            breaks = sorted({spectrum.lo, spectrum.hi, eps_g} | {x for x, _ in table})
            breaks = [b for b in breaks if spectrum.lo <= b <= spectrum.hi]
            total = sum(quad(integrand, a, b, limit=400)[0] for a, b in zip(breaks[:-1], breaks[1:]))
            expected = (beam.fluence_per_m2 * R_E ** 2 * 7.63e5 * sample.volume_m3 / crystal.volume_m3 ** 2
                        * total)
            assert row["photons_total"] == pytest.approx(expected, rel=0.01), (beam.spectrum, eps_g)


# ---------------------------------------------------------------------- whole frames vs brute force
@pytest.mark.parametrize("edge_m", [1e-6, 10e-6])
def test_frame_total_matches_the_brute_force_sum(edge_m):
    """Sum of N_hkl over a frame of a 6 A crystal on the tiny detector (0.25 m), against the brute-force sum
    over every reflection whose sphere distance at lambda_0 is below 3e7 m^-1 (the rest hold < 0.1 %)."""
    geometry = tiny_geometry(clen_m=0.25)
    crystal = load_crystal(None, d_min_A=6.0)
    beam = Beam(6000.0)
    astar = crystal.orientation_from_quaternion([0.2, 0.6, -0.4, 0.66])
    sim = BraggSimulator(geometry, crystal, beam, CrystalSample(edge_m))
    table = sim.excited_reflections(astar)
    g = crystal.hkl @ astar.T
    near = np.abs(excitation_error(g, 1 / beam.wavelength_m)) < 3e7
    photons, fs, ss, _ = _brute_force(crystal.hkl[near], crystal.intensity[near], astar, edge_m, beam,
                                      geometry.panels[0], n=20_000, seed=1)
    panel = geometry.panels[0]
    on = (fs >= -0.5) & (fs < panel.n_fs - 0.5) & (ss >= -0.5) & (ss < panel.n_ss - 0.5)
    assert table["photons_total"].sum() == pytest.approx(photons[on].sum(), rel=0.05)
    assert on.sum() > 20


# ---------------------------------------------------------------------- spectra
def test_a_tabulated_tophat_or_gaussian_gives_the_same_photons():
    crystal, astar = _one_reflection((13, 8, -6), 0.0045, 0.3, Beam(6000.0))
    geometry = source_single_panel_geometry(0.15)

    def photons(beam):
        return BraggSimulator(geometry, crystal, beam, CrystalSample(1e-6)).excited_reflections(astar).iloc[0]

    tophat = photons(Beam(6000.0))
    flat = [(-0.005 - 1e-7, 0.0), (-0.005, 1.0), (0.005, 1.0), (0.005 + 1e-7, 0.0)]
    table = photons(Beam(6000.0, spectrum="table", spectrum_table=flat))
    assert table["photons_total"] == pytest.approx(tophat["photons_total"], rel=2e-3)
    assert math.hypot(table["fs"] - tophat["fs"], table["ss"] - tophat["ss"]) < 0.05
    gauss = photons(Beam(6000.0, spectrum="gaussian"))
    sigma_ev = 6000.0 * 0.01 / 2.3548200450309493                 # 1 % FWHM in energy ~ in wavelength
    energies = np.linspace(6000 - 8 * sigma_ev, 6000 + 8 * sigma_ev, 801)
    rows = [(e, math.exp(-0.5 * ((e - 6000) / sigma_ev) ** 2)) for e in energies]
    in_ev = photons(Beam(6000.0, spectrum="table", spectrum_table=rows, spectrum_table_units="ev"))
    assert in_ev["photons_total"] == pytest.approx(gauss["photons_total"], rel=0.01)


@pytest.mark.parametrize("kwargs, message", [
    (dict(spectrum="table"), "needs spectrum_table"),
    (dict(spectrum="table", spectrum_table=[(0.0, 1.0)]), "at least 2 rows"),
    (dict(spectrum="table", spectrum_table=[(0.0, 1.0), (0.01, -1.0)]), ">= 0"),
    (dict(spectrum="table", spectrum_table=[(-0.5, 1.0), (0.01, 1.0)]), "within"),
    (dict(spectrum="table", spectrum_table=[(0.0, 1.0), (0.0, 1.0)]), "repeated"),
    (dict(spectrum="table", spectrum_table=[(0.0, 1.0), (6000.0, 1.0)], spectrum_table_units="ev"), "positive"),
    (dict(spectrum="table", spectrum_table=[(0.0, 1.0), (0.01, 1.0)], spectrum_table_units="kev"), "units"),
    (dict(spectrum_table=[(0.0, 1.0), (0.01, 1.0)]), "set spectrum: table"),
])
def test_bad_spectrum_tables_fail_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        Beam(6000.0, **kwargs)
    assert "\n" not in str(info.value)


def test_spectrum_csv_is_read_with_or_without_a_header(tmp_path):
    from cxlspeaks.simulate.beam import read_spectrum_csv

    path = tmp_path / "spectrum.csv"
    path.write_text("photon_energy_ev,weight\n5990,0\n6000,1\n6010,0\n")
    assert read_spectrum_csv(path) == ((5990.0, 0.0), (6000.0, 1.0), (6010.0, 0.0))
    path.write_text("-0.01,0\n0.01,1\n")
    assert read_spectrum_csv(path) == ((-0.01, 0.0), (0.01, 1.0))
    path.write_text("a,b\n1,2,3\n")
    with pytest.raises(ValueError, match="spectrum.csv"):
        read_spectrum_csv(path)
    with pytest.raises(ValueError, match="not found"):
        read_spectrum_csv(tmp_path / "missing.csv")


# ---------------------------------------------------------------------- streaks
@pytest.mark.parametrize("streak_min_photons", [0.0, math.inf])
def test_a_wide_spectrum_streaks_the_spot_radially(streak_min_photons):
    """5 % Gaussian spectrum, 1 um crystal, (5, 3, -2) at 0.15 m: the profile spans ~1 % in wavelength, so the
    photons spread along the radius; the drawn spot's radial second moment exceeds the footprint's by the
    brute-force radial spread (within 25 %), far more than across; its centre and photons stay exact. Drawn as
    three sub-spots, or (inf) as one Gaussian widened along fs and ss (at 17 degrees from fs: 84 % of it)."""
    beam = Beam(6000.0, bandwidth=0.05, spectrum="gaussian", divergence_rad=0.0)
    crystal, astar = _one_reflection((5, 3, -2), 0.0, 0.3, beam)
    geometry = source_single_panel_geometry(0.15)
    panel = geometry.panels[0]
    sim = BraggSimulator(geometry, crystal, beam, CrystalSample(1e-6),
                         streak_min_photons=streak_min_photons)
    table, nodes = sim._excited(astar)
    image, _ = sim.render(table, nodes)
    fs0, ss0 = table.loc[0, ["fs", "ss"]]
    i, j = int(round(ss0)), int(round(fs0))
    box = image[i - 40:i + 41, j - 40:j + 41].astype(float)
    yy, xx = np.mgrid[i - 40:i + 41, j - 40:j + 41]
    radial = np.array([fs0 + 0.5 + panel.corner_x, ss0 + 0.5 + panel.corner_y])
    radial /= np.linalg.norm(radial)

    def second_moments(w, fs, ss):
        along = (fs - fs0) * radial[0] + (ss - ss0) * radial[1]
        across = -(fs - fs0) * radial[1] + (ss - ss0) * radial[0]
        return (w * along ** 2).sum() / w.sum(), (w * across ** 2).sum() / w.sum()

    var_along, var_across = second_moments(box, xx, yy)
    footprint = sim.spot_sigma_px ** 2 + 1 / 12                  # PSF and pixel integration
    w, fs, ss = _samples((5, 3, -2), astar, 1e-6, beam, panel, _lattice_offsets(1e-6, 400_000, 2))
    true_along, true_across = second_moments(w, fs, ss)
    assert true_along > 1.0                                      # a streak of > 1 px standard deviation
    assert var_along - footprint == pytest.approx(true_along, rel=0.25)
    assert var_along - footprint > 4 * max(var_across - footprint, true_across)
    assert box.sum() == pytest.approx(table.loc[0, "photons_total"], rel=1e-3)
    assert (box * xx).sum() / box.sum() == pytest.approx((w * fs).sum() / w.sum(), abs=0.3)
    assert (box * yy).sum() / box.sum() == pytest.approx((w * ss).sum() / w.sum(), abs=0.3)


# ---------------------------------------------------------------------- CrystFEL pattern_sim (optional)
PATTERN_SIM = "/opt/crystfel/bin/pattern_sim"


@pytest.mark.skipif(not os.access(PATTERN_SIM, os.X_OK), reason=f"CrystFEL pattern_sim not at {PATTERN_SIM}")
def test_pattern_sim_agrees_where_it_samples_the_lobes_finely(monkeypatch):
    """A 0.128 um crystal (19 x 19 x 12 cells, lobes wider than pattern_sim's sub-pixel and spectrum steps) on
    150 x 150 pixels of 0.2 mm at 0.15 m, 24 spectrum samples: pattern_sim 0.10.2 (no polarisation factor, so
    ours is divided by P) holds the same photons in the frame (3 %) and in the two strongest spots (2 %), one of
    which, (0 0 4), the Gaussian-profile engine missed (measured: 0.00767 vs 0.00765; 0.00434 vs 0.00432)."""
    from cxlspeaks.simulate.pattern_sim import PatternSimBackend

    monkeypatch.setenv("CXLSPEAKS_PATTERN_SIM", PATTERN_SIM)
    geometry = tiny_geometry(n_fs=150, n_ss=150, pixel_size_m=2.0e-4, clen_m=0.15, gap_width_px=0)
    crystal = load_crystal(None, d_min_A=geometry.d_min_A(6000.0, 0.01))
    beam = Beam(6000.0, divergence_rad=0.0, polarisation_fraction=0.5)
    sample = CrystalSample(1.28e-7)
    q = np.array([0.2, 0.6, -0.4, 0.66]) / np.linalg.norm([0.2, 0.6, -0.4, 0.66])
    with PatternSimBackend(geometry, crystal, beam, sample, spectrum_samples=24) as backend:
        reference = backend.simulate(q)
    ours = BraggSimulator(geometry, crystal, beam, sample, min_photons=1e-6).simulate(reference.astar_bstar_cstar)
    image = ours.image / geometry.polarisation_factors(0.5)
    assert image.sum() == pytest.approx(reference.image.sum(), rel=0.03)
    for row in ours.peaks.head(2).itertuples():
        i, j = int(round(row.ss)), int(round(row.fs))
        box = np.s_[max(i - 6, 0):i + 7, max(j - 6, 0):j + 7]
        assert image[box].sum() == pytest.approx(reference.image[box].sum(), rel=0.02)
