"""Water background (reborn's formula, Hura/Clark profile) and Poisson photon noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxlspeaks.geometry import eiger4m_geometry
from cxlspeaks.seeding import frame_rng
from cxlspeaks.simulate import Beam, poisson_counts, water_intensity
from cxlspeaks.simulate.water import (WATER_NUMBER_DENSITY_25C, thickness_scale, water_number_density,
                                      water_structure_factor)

HC_EV_A = 12398.419843320026


@pytest.fixture(scope="module")
def eiger():
    return eiger4m_geometry(clen_m=0.15)


def test_profile_values_from_hura_and_clark():
    assert water_structure_factor(0.0) == pytest.approx(6.5)
    assert water_structure_factor(2.05) == pytest.approx(56.2)
    q = np.linspace(0, 6, 6001)
    assert q[np.argmax(water_structure_factor(q))] == pytest.approx(2.05, abs=1e-3)
    for q_value, s_value in [(1.0, 7.9), (1.5, 23.1), (2.5, 43.5), (3.0, 34.3), (4.0, 12.5), (6.0, 5.4)]:
        assert water_structure_factor(q_value) == pytest.approx(s_value, rel=0.03)


@pytest.mark.parametrize("energy_ev, radius_px", [(6000.0, 1643), (7000.0, 1328), (8000.0, 1122)])
def test_water_ring_lands_at_q_2_05(eiger, energy_ev, radius_px):
    """The maximum of the per-steradian, polarisation-corrected water profile lies on the ring of q = 2.05 1/A,
    radius clen tan(2 asin(q lambda / 4 pi)), within 1 % (PHYSICS.md: 1643 / 1328 / 1122 px at 0.15 m)."""
    beam = Beam(energy_ev)
    image = water_intensity(eiger, beam).astype(float)
    per_sr = image / (eiger.solid_angles_sr * eiger.polarisation_factors(1.0))
    pos = eiger.pixel_positions_m
    radius = np.hypot(pos[..., 0], pos[..., 1]) * eiger.panels[0].res
    lam_A = HC_EV_A / energy_ev
    expected = 0.15 * math.tan(2 * math.asin(2.05 * lam_A / (4 * math.pi))) * eiger.panels[0].res
    assert expected == pytest.approx(radius_px, abs=1.0)
    good = eiger.mask
    bins = np.round(radius[good]).astype(int)
    profile = np.bincount(bins, per_sr[good]) / np.maximum(np.bincount(bins), 1)
    assert np.argmax(profile) == pytest.approx(expected, rel=0.01)


def test_water_photons_per_pixel_match_the_worked_example(eiger):
    """PHYSICS.md: 3e8 photons, 10 um water, 0.15 m, 75 um pixels: about 0.011 photons per pixel on the ring
    (its estimate uses the normal-incidence solid angle (75 um / 0.15 m)^2 and P = 1; at 2 theta = 39 deg the
    obliquity cos^3 and polarisation bring the real pixels down to ~0.004)."""
    image = water_intensity(eiger, Beam(6000.0, polarisation_fraction=0.5))
    normal_incidence = (75e-6 / 0.15) ** 2
    rescaled = image / (eiger.solid_angles_sr * eiger.polarisation_factors(0.5)) * normal_incidence
    assert rescaled.max() == pytest.approx(0.011, rel=0.03)
    assert 0.003 < image.max() < 0.011
    # the formula, pixel by pixel, at one pixel
    ss, fs = 300, 1500
    q = eiger.q_per_A(6000.0)[ss, fs]
    expected = ((2.8179403262e-15) ** 2 * 3e8 * 10e-6 * WATER_NUMBER_DENSITY_25C
                * eiger.polarisation_factors(0.5)[ss, fs] * eiger.solid_angles_sr[ss, fs]
                * water_structure_factor(q))
    assert image[ss, fs] == pytest.approx(expected, rel=1e-6)


def test_water_scales_with_photons_and_thickness_not_beam_radius(tiny):
    base = water_intensity(tiny, Beam(7000.0))
    np.testing.assert_allclose(water_intensity(tiny, Beam(7000.0, beam_radius_m=50e-6)), base)
    np.testing.assert_allclose(water_intensity(tiny, Beam(7000.0, n_photons=6e8)), 2 * base, rtol=1e-6)
    np.testing.assert_allclose(water_intensity(tiny, Beam(7000.0), thickness_m=20e-6), 2 * base, rtol=1e-6)
    assert (base[~tiny.mask] == 0).all() and (base[tiny.mask] > 0).all()


def test_water_density_follows_temperature():
    assert water_number_density(298.15) == pytest.approx(3.33679e28)
    assert water_number_density(277.15) > water_number_density(298.15) > water_number_density(330.0)
    with pytest.raises(ValueError, match="outside the liquid range"):
        water_number_density(200.0)


def test_thickness_jitter_is_seeded_and_centred():
    assert thickness_scale(frame_rng(1, "d", 0, "thickness"), 0.0) == 1.0
    draws = [thickness_scale(frame_rng(1, "d", i, "thickness"), 0.1) for i in range(2000)]
    assert np.mean(draws) == pytest.approx(1.0, abs=5 * 0.1 / math.sqrt(2000))
    assert np.std(draws) == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("level", [0.01, 0.3, 5.0])
def test_poisson_mean_and_variance_equal_the_expectation(level):
    """Per-pixel counts over many frames: sample mean and variance match lambda within 5 standard errors
    (SE of the mean sqrt(lambda / N); of the variance sqrt((lambda + 2 lambda^2) / N))."""
    rng = np.random.default_rng(7)
    lam = np.full((64, 64), level)
    lam[:8] = 0.0
    frames = np.stack([poisson_counts(lam, rng) for _ in range(300)]).astype(float)
    assert frames.dtype == float and (frames[:, :8] == 0).all()
    n = frames[:, 8:].size
    values = frames[:, 8:]
    assert values.mean() == pytest.approx(level, abs=5 * math.sqrt(level / n))
    per_pixel_var = values.var(axis=0, ddof=1).mean()
    assert per_pixel_var == pytest.approx(level, abs=5 * math.sqrt((level + 2 * level ** 2) / (300 - 1)
                                                                     / values[0].size) + 1e-12)


def test_poisson_counts_are_uint32_and_follow_a_mixed_image():
    rng = np.random.default_rng(9)
    lam = np.zeros((50, 50))
    lam[10, 10] = 400.0
    lam[20:30, 20:30] = 0.02
    counts = np.stack([poisson_counts(lam, rng) for _ in range(400)])
    assert counts.dtype == np.uint32
    assert counts[:, 10, 10].mean() == pytest.approx(400, abs=5 * math.sqrt(400 / 400))
    assert counts[:, 20:30, 20:30].mean() == pytest.approx(0.02, abs=5 * math.sqrt(0.02 / 40000))
    assert counts.sum() == counts[:, 10, 10].sum() + counts[:, 20:30, 20:30].sum()


def test_poisson_rejects_negative_or_nan():
    with pytest.raises(ValueError, match="finite and non-negative"):
        poisson_counts(np.array([1.0, np.nan]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite and non-negative"):
        poisson_counts(np.array([1.0, -1.0]), np.random.default_rng(0))


def test_frame_draws_do_not_depend_on_order():
    lam = np.full((32, 32), 0.05)
    forward = [poisson_counts(lam, frame_rng(3, "05", i, "noise")) for i in range(5)]
    backward = [poisson_counts(lam, frame_rng(3, "05", i, "noise")) for i in reversed(range(5))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0], forward[1])
    other_dataset = poisson_counts(lam, frame_rng(3, "06", 0, "noise"))
    assert not np.array_equal(forward[0], other_dataset)


def test_poisson_image_draws_match_mean_and_variance():
    from cxlspeaks.simulate.noise import PoissonImage, add_poisson_counts

    lam = 0.01 + np.random.default_rng(4).random((40, 50)) * 0.05   # >= 20 expected counts per pixel
    lam[0] = 0.0
    sampler = PoissonImage(lam)
    rng = np.random.default_rng(10)
    signal = np.zeros_like(lam)
    signal[20, 20] = 30.0
    frames = np.stack([add_poisson_counts(sampler.draw(rng, scale=2.0), signal, rng) for _ in range(1000)])
    assert frames.dtype == np.uint32 and (frames[:, 0] == 0).all()
    expected = 2.0 * lam + signal
    n = len(frames)
    z_mean = (frames.mean(axis=0) - expected)[1:] / np.sqrt(expected[1:] / n)
    assert abs(z_mean.mean()) < 5 / np.sqrt(z_mean.size)       # unbiased overall
    assert np.abs(z_mean).max() < 6                             # and pixel by pixel
    var = frames.astype(float).var(axis=0, ddof=1)[1:]
    assert var.mean() / expected[1:].mean() == pytest.approx(1.0, abs=0.02)
