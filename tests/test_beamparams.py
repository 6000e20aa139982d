"""Photon energy and camera length from the frames (cxlspeaks.beamparams): the water-ring fit, the oracle bound, the
beam-centre invariance, the known-cell peak refinement and the learned regressor, on the tiny detector."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cxlspeaks.beamparams.bound import WaterBound, pixel_water
from cxlspeaks.beamparams.peak_refine import predict_spots, refine_from_spots
from cxlspeaks.beamparams.profile import ProfileBins, shift_frame_and_geometry
from cxlspeaks.beamparams.regressor import RidgeRegressor, profile_features
from cxlspeaks.beamparams.water_fit import (WaterProfileModel, fit_water_frame, fit_water_profile,
                                            nominal_scale_per_sr)
from cxlspeaks.constants import wavelength_m
from cxlspeaks.geometry import eiger4m_geometry, tiny_geometry
from cxlspeaks.simulate.beam import Beam
from cxlspeaks.simulate.water import water_intensity

E0, L0 = 7000.0, 0.15


def water(geometry, e=E0, n_photons=3e8):
    return water_intensity(geometry, Beam(photon_energy_ev=e, n_photons=n_photons)).astype(float)


def small_bins(geometry):
    return ProfileBins.from_geometry(geometry, bin_width_px=1.0, n_phi=2)


def test_binned_model_equals_the_water_simulator_summed_over_each_bin():
    # the moment form of sum_i P_i dOmega_i S_w(q_i) against reborn-style per-pixel water_intensity
    for e, L in [(6000.0, 0.15), (8000.0, 0.35)]:
        g = tiny_geometry(clen_m=L)
        bins = ProfileBins.from_geometry(g, bin_width_px=0.25, n_phi=8)
        model = WaterProfileModel(bins)
        mu = nominal_scale_per_sr(3e8, 1e-5) * model.expected(e, L)[0]
        exact = bins.counts(water(g, e))[model.used]
        assert np.abs(mu / exact - 1).max() < 2e-4


def test_fit_recovers_a_noise_free_water_image():
    g = tiny_geometry(clen_m=L0)
    bins = small_bins(g)
    est = fit_water_profile(bins.counts(water(g)), WaterProfileModel(bins))
    assert abs(est.photon_energy_ev - E0) < 0.02 * est.sigma_photon_energy_ev
    assert abs(est.clen_m - L0) < 0.02 * est.sigma_clen_m
    assert est.scale_per_sr == pytest.approx(nominal_scale_per_sr(3e8, 1e-5), rel=1e-3)


def test_fit_uncertainty_covers_poisson_frames():
    g = tiny_geometry(clen_m=L0)
    bins = small_bins(g)
    image = water(g)
    z_e, z_l = [], []
    for seed in range(20):
        frame = np.random.default_rng(seed).poisson(image).astype(float)
        est = fit_water_profile(bins.counts(frame), WaterProfileModel(bins))
        z_e.append((est.photon_energy_ev - E0) / est.sigma_photon_energy_ev)
        z_l.append((est.clen_m - L0) / est.sigma_clen_m)
    for z in (np.abs(z_e), np.abs(z_l)):
        assert 0.45 <= np.mean(z < 1) <= 0.9      # ~68 % within 1 sigma (binomial sd 10 % over 20 seeds)
        assert np.mean(z < 2) >= 0.85


def test_binned_likelihood_equals_the_per_pixel_poisson_likelihood():
    g = tiny_geometry(clen_m=L0)
    bound = WaterBound(g)
    frame = np.random.default_rng(3).poisson(water(g)).astype(float)
    a = np.log([7000.0, 7100.0, 6800.0, 7300.0])
    c = np.log([0.15, 0.152, 0.147, 0.157])
    binned = bound._loglike(bound.bins, bound.bins.counts(frame), a, c, None)
    pos = g.pixel_positions_m[g.mask]
    w = pixel_water(pos[:, 0], pos[:, 1], bound.bins.pixel_area_m2, np.exp(a), np.exp(c), 1.0)
    n = frame[g.mask]
    s = n.sum() / w.sum(axis=1, keepdims=True)
    pixel = (n * np.log(s * w) - s * w).sum(axis=1)
    assert np.abs((binned - binned[0]) - (pixel - pixel[0])).max() < 0.1
    assert (pixel - pixel[0])[1:].min() < -0.1      # the differences are not trivially zero


def test_bound_posterior_covers_the_truth_with_and_without_bragg_spots():
    g = tiny_geometry(clen_m=L0)
    bound = WaterBound(g)
    image = water(g)
    # a synthetic Bragg image: 30 bright 1-pixel spots at seeded positions (the bound holds it known)
    rng = np.random.default_rng(7)
    signal = np.zeros_like(image)
    good = np.argwhere(g.mask)
    spots = good[rng.choice(len(good), 30, replace=False)]
    signal[spots[:, 0], spots[:, 1]] = 200.0
    for seed in range(3):
        frame_rng = np.random.default_rng(100 + seed)
        plain = bound.posterior(frame_rng.poisson(image).astype(float))
        assert abs(plain.photon_energy_ev - E0) < 3 * plain.sd_photon_energy_ev
        assert abs(plain.clen_m - L0) < 3 * plain.sd_clen_m
        assert plain.edge_mass < 1e-3 and not plain.bragg_modelled
        assert (plain.class_energy, plain.class_clen) == (1, 0)
        counts = frame_rng.poisson(image + signal).astype(float)
        hit = bound.posterior(counts, signal)
        assert hit.bragg_modelled
        assert abs(hit.photon_energy_ev - E0) < 3 * hit.sd_photon_energy_ev
        assert abs(hit.clen_m - L0) < 3 * hit.sd_clen_m
        # no oracle: the spots left out by the water fit's outlier mask instead of modelled
        drop = fit_water_frame(counts, g, small_bins(g)).extra["masked_pixels"]
        assert drop[spots[:, 0], spots[:, 1]].all()
        blind = bound.posterior(counts, None, drop=drop)
        assert abs(blind.photon_energy_ev - E0) < 3 * blind.sd_photon_energy_ev
        assert abs(blind.clen_m - L0) < 3 * blind.sd_clen_m


def test_a_moved_beam_centre_with_its_geometry_gives_the_same_estimate():
    base = tiny_geometry(clen_m=L0)
    moved = base.replace_panels(corner_x=base.panels[0].corner_x - 9.0, corner_y=base.panels[0].corner_y + 6.0)
    est = [fit_water_profile(small_bins(geo).counts(water(geo)), WaterProfileModel(small_bins(geo)))
           for geo in (base, moved)]
    # noise-free: both recover the truth although the ring sits elsewhere on the array
    for e in est:
        assert abs(e.photon_energy_ev - E0) < 0.05 * e.sigma_photon_energy_ev
        assert abs(e.clen_m - L0) < 0.05 * e.sigma_clen_m
    # the same recorded photons moved on the array, with the geometry moved alike: within the stated sigma
    frame = np.random.default_rng(11).poisson(water(base)).astype(float)
    shifted, geo2 = shift_frame_and_geometry(frame, base, 3, -2)
    a = fit_water_frame(frame, base, small_bins(base))
    b = fit_water_frame(shifted, geo2, small_bins(geo2))
    assert abs(a.photon_energy_ev - b.photon_energy_ev) < a.sigma_photon_energy_ev
    assert abs(a.clen_m - b.clen_m) < a.sigma_clen_m


def ewald_spots(geometry, basis, e_ev, bandwidth=0.01):
    """h, k, l of reflections of the 1IC6 cell inside a tophat band at e_ev that land on the detector."""
    r = np.arange(-30, 31)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    hkl = hkl[np.abs(hkl).sum(axis=1) > 0]
    fs, ss, lam = predict_spots(hkl, basis, geometry.clen_m, geometry)
    lam0 = wavelength_m(e_ev)
    n_ss, n_fs = geometry.shape
    keep = (np.abs(lam / lam0 - 1) < bandwidth / 2) & (fs > 0) & (fs < n_fs - 1) & (ss > 0) & (ss < n_ss - 1)
    return hkl[keep], fs[keep], ss[keep], lam[keep]


def test_peak_refinement_recovers_wavelength_and_camera_length_from_ray_traced_spots():
    geometry = eiger4m_geometry(clen_m=L0)
    cell = np.diag([1 / 67.288e-10, 1 / 67.288e-10, 1 / 106.582e-10])
    basis = Rotation.from_rotvec([0.4, -0.9, 0.3]).as_matrix() @ cell
    hkl, fs, ss, lam = ewald_spots(geometry, basis, E0)
    assert len(hkl) > 30
    # ray tracing check: |k_out| = 1 / lambda_g, i.e. 2 d sin(theta) = lambda_g for each spot
    p = geometry.panels[0]
    d = np.stack([(fs + 0.5 + p.corner_x) / p.res, (ss + 0.5 + p.corner_y) / p.res, np.full(len(fs), L0)], 1)
    two_theta = np.arccos(d[:, 2] / np.linalg.norm(d, axis=1))
    d_spacing = 1 / np.linalg.norm(hkl @ basis.T, axis=1)
    assert np.allclose(2 * d_spacing * np.sin(two_theta / 2), lam, rtol=1e-9)
    rng = np.random.default_rng(5)
    tilted = Rotation.from_rotvec(rng.normal(size=3) * np.radians(0.05)).as_matrix() @ basis
    est = refine_from_spots(hkl, fs + rng.normal(0, 0.2, len(fs)), ss + rng.normal(0, 0.2, len(fs)), tilted,
                            geometry, clen_start_m=L0 * 1.05)
    assert abs(est.clen_m - L0) < 3 * est.sigma_clen_m and est.sigma_clen_m < 1e-3 * L0
    # lambda_0 from the band: uniform lambda_g of the spots average to the centre within sd / sqrt(n)
    assert abs(est.photon_energy_ev - E0) < 3 * est.sigma_photon_energy_ev
    assert est.sigma_photon_energy_ev < 0.002 * E0
    with pytest.raises(ValueError, match="at least 6"):
        refine_from_spots(hkl[:3], fs[:3], ss[:3], basis, geometry, L0)


def test_regressor_learns_energy_and_camera_length_from_profile_features(tmp_path):
    design = [(6000.0, 0.12), (7000.0, 0.12), (8000.0, 0.12), (6000.0, 0.15), (7000.0, 0.15), (8000.0, 0.15)]
    x, e, L, held = [], [], [], []
    for k, (ek, lk) in enumerate(design):
        g = tiny_geometry(clen_m=lk)
        image = water(g, ek, n_photons=3e9)
        for seed in range(7):
            f = profile_features(np.random.default_rng(1000 * k + seed).poisson(image).astype(float), g)
            if seed == 6:
                held.append(f)
            else:
                x.append(f)
                e.append(ek)
                L.append(lk)
    model = RidgeRegressor.fit(np.array(x), np.array(e), np.array(L))
    model.save(tmp_path / "regressor.npz")
    model = RidgeRegressor.load(tmp_path / "regressor.npz")
    for (ek, lk), f in zip(design, held):
        est = model.predict(f)[0]
        assert abs(est.photon_energy_ev - ek) < max(4 * est.sigma_photon_energy_ev, 0.02 * ek)
        assert abs(est.clen_m - lk) < max(4 * est.sigma_clen_m, 0.02 * lk)
    with pytest.raises(ValueError, match="does not match"):
        profile_features(np.zeros((3, 3)), tiny_geometry())
    (tmp_path / "bad.npz").write_bytes(b"not a regressor")
    with pytest.raises(ValueError, match="not a saved regressor"):
        RidgeRegressor.load(tmp_path / "bad.npz")


def test_bad_inputs_are_one_line_errors():
    g = tiny_geometry()
    with pytest.raises(ValueError, match="bin_width_px"):
        ProfileBins.from_geometry(g, bin_width_px=0)
    with pytest.raises(ValueError, match="no photons"):
        fit_water_profile(np.zeros(small_bins(g).n_bins), WaterProfileModel(small_bins(g)))
    tilted = g.replace_panels(fs_vec=(1.0, 0.0, 0.1))
    with pytest.raises(ValueError, match="flat detector plane"):
        ProfileBins.from_geometry(tilted)
