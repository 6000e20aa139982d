"""Structure factors, symmetry and the orientation convention."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from cxlspeaks.crystal import (StructureError, crystal_from_structure, load_crystal, random_quaternions,
                               read_structure, synthetic_structure)

from conftest import shared_file


def _lookup(crystal, hkl):
    rows = np.flatnonzero((crystal.hkl == np.asarray(hkl)).all(axis=1))
    return crystal.intensity[rows[0]] if len(rows) else None


def test_synthetic_crystal_has_the_1ic6_cell_and_space_group(synthetic_crystal):
    assert synthetic_crystal.cell_parameters == pytest.approx((67.288, 67.288, 106.582, 90, 90, 90))
    assert synthetic_crystal.spacegroup.hm == "P 43 21 2"
    assert synthetic_crystal.point_group == "422"


def test_systematic_absences_of_p43212_are_absent(synthetic_crystal):
    hkl = synthetic_crystal.hkl
    h, k, l = hkl.T
    axial_a = (k == 0) & (l == 0)
    axial_b = (h == 0) & (l == 0)
    axial_c = (h == 0) & (k == 0)
    assert not (axial_a & (h % 2 != 0)).any()
    assert not (axial_b & (k % 2 != 0)).any()
    assert not (axial_c & (l % 4 != 0)).any()
    # and the allowed ones are present
    assert (axial_a & (h % 2 == 0)).any() and (axial_c & (l % 4 == 0)).any()


def test_symmetry_equivalent_reflections_have_equal_intensity(synthetic_crystal):
    crystal = synthetic_crystal
    ops = [np.array(op.rot) // op.DEN for op in crystal.spacegroup.operations().sym_ops]
    index = {tuple(h): i for i, h in enumerate(crystal.hkl)}
    rng = np.random.default_rng(0)
    for i in rng.choice(len(crystal.hkl), 200, replace=False):
        for rot in ops:
            for sign in (1, -1):
                mate = tuple(sign * (crystal.hkl[i] @ rot))
                assert crystal.intensity[index[mate]] == crystal.intensity[i]


def test_fft_structure_factors_match_direct_summation(synthetic_crystal):
    """gemmi's FFT path (used for speed) against an independent direct sum over atoms and symmetry mates."""
    st = synthetic_structure()
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    rng = np.random.default_rng(3)
    for i in rng.choice(len(synthetic_crystal.hkl), 25, replace=False):
        hkl = [int(v) for v in synthetic_crystal.hkl[i]]
        direct = abs(calc.calculate_sf_from_model(st[0], hkl)) ** 2
        assert synthetic_crystal.intensity[i] == pytest.approx(direct, rel=2e-3, abs=1e-3 * direct + 1.0)


def test_synthetic_intensities_follow_wilson_statistics(synthetic_crystal):
    """Acentric random-atom |F|^2 are exponentially distributed about their local mean: normalised
    E^2 = I / <I>(resolution) has P(E^2 < 1) = 1 - 1/e and <E^4> = 2 (Wilson 1949)."""
    d = synthetic_crystal.d_spacings_A()
    h, k, l = synthetic_crystal.hkl.T
    # one reflection per 422 + Friedel set (h > k > 0, l > 0), and acentric (no zero index, |h| != |k|)
    unique_acentric = (h > k) & (k > 0) & (l > 0)
    sel = unique_acentric & (d > 2.9) & (d < 8.0)
    intensity, d_sel = synthetic_crystal.intensity[sel], d[sel]
    edges = np.quantile(1 / d_sel ** 2, np.linspace(0, 1, 21))
    shell = np.clip(np.searchsorted(edges, 1 / d_sel ** 2) - 1, 0, 19)
    e2 = intensity / np.bincount(shell, intensity)[shell] * np.bincount(shell)[shell]
    n = len(e2)
    assert n > 3000
    assert np.mean(e2 < 1) == pytest.approx(1 - np.exp(-1), abs=5 * np.sqrt(0.23 / n))
    assert np.mean(e2 ** 2) == pytest.approx(2.0, abs=5 * np.sqrt(20 / n))


def test_1ic6_reference_intensity():
    """PHYSICS.md worked example: 1IC6 protein atoms, |F(13, 8, -6)|^2 = 7.63e5 e^2 (gemmi, d >= 2 A)."""
    crystal = load_crystal(shared_file("data", "1ic6.pdb"), d_min_A=2.0)
    assert crystal.cell_parameters == pytest.approx((67.288, 67.288, 106.582, 90, 90, 90))
    assert crystal.spacegroup.hm == "P 43 21 2"
    assert _lookup(crystal, (13, 8, -6)) == pytest.approx(7.63e5, rel=2e-3)
    assert _lookup(crystal, (1, 0, 0)) is None and _lookup(crystal, (0, 0, 2)) is None


def test_unreadable_structure_gives_one_line_error(tmp_path):
    with pytest.raises(StructureError, match="structure file not found"):
        read_structure(tmp_path / "missing.pdb")
    bad = tmp_path / "bad.pdb"
    bad.write_text("HEADER    NOTHING\nEND\n")
    with pytest.raises(StructureError) as info:
        read_structure(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------- orientation convention
def test_identity_quaternion_puts_a_along_x(synthetic_crystal):
    astar = synthetic_crystal.orientation_from_quaternion([1, 0, 0, 0])
    np.testing.assert_allclose(astar, np.diag([1e10 / 67.288, 1e10 / 67.288, 1e10 / 106.582]), rtol=1e-12)


def test_quaternion_matches_crystfel_pattern_sim(synthetic_crystal):
    """a*, b*, c* (1/m) that CrystFEL 0.10.2 pattern_sim wrote to /pattern_sim/astar|bstar|cstar for
    q = (0.9238795, 0.3826834, 0, 0) with the 1IC6 cell (measured here, float32): the crystal turns by -45 deg
    about x."""
    measured = np.array([[1.48614912e8, 0.0, 0.0],
                         [0.0, 1.05086624e8, -1.05086600e8],
                         [0.0, 6.6343916e7, 6.6343928e7]]).T
    ours = synthetic_crystal.orientation_from_quaternion([0.9238795, 0.3826834, 0, 0])
    np.testing.assert_allclose(ours, measured, rtol=2e-6, atol=30.0)


def test_quaternion_round_trip(synthetic_crystal):
    rng = np.random.default_rng(5)
    for q in random_quaternions(rng, 20):
        astar = synthetic_crystal.orientation_from_quaternion(q)
        np.testing.assert_allclose(synthetic_crystal.quaternion_from_orientation(astar), q, atol=1e-12)


def test_random_orientations_are_uniform_on_so3(synthetic_crystal):
    """For uniform rotations the image of a fixed axis is uniform on the sphere: <z> = 0, <z^2> = 1/3."""
    rng = np.random.default_rng(11)
    _, astar = synthetic_crystal.random_orientations(rng, 4000)
    c_dir = astar[:, :, 2] / np.linalg.norm(astar[:, :, 2], axis=1, keepdims=True)
    n = len(c_dir)
    assert abs(c_dir[:, 2].mean()) < 5 * np.sqrt(1 / 3 / n)
    assert (c_dir[:, 2] ** 2).mean() == pytest.approx(1 / 3, abs=5 * np.sqrt(4 / 45 / n))
    # the rotation angle theta = 2 acos(|w|) has density (1 - cos theta) / pi: mean = pi/2 + 2/pi
    q = random_quaternions(np.random.default_rng(12), n)
    angle = 2 * np.arccos(np.clip(q[:, 0], -1, 1))
    assert angle.mean() == pytest.approx(np.pi / 2 + 2 / np.pi, abs=0.05)


def test_crystal_from_pdb_structure_object():
    st = synthetic_structure(n_atoms=50, seed=2)
    crystal = crystal_from_structure(st, d_min_A=10.0)
    assert crystal.hkl.shape[1] == 3 and len(crystal.hkl) == len(crystal.intensity)
    assert (crystal.d_spacings_A() >= 10.0 - 1e-9).all()
