"""Nuisances of real frames: each changes what it should and nothing else, labels stay Bragg-only, bytes reproduce.

Physical facts checked: ice rings at d = 3.90, 3.67, 3.44 A where ray tracing puts them (2theta = 2 asin(lambda/2d),
r = clen tan 2theta) and with the powder formula's photons; the Gaussian-beam overlap factor against a numerical
integral; pulse jitter scaling water and Bragg photons together; a moved beam centre moving Bragg spots and the
water pattern by the recorded offset; dead pixels reading 0 and flagged in the pixel mask; ice-only frames non-hits.
"""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from cxlspeaks import config_checks
from cxlspeaks.dataset import assemble_dataset, simulate_shard, water_image
from cxlspeaks.geometry import shipped_geometry
from cxlspeaks.io import ICE_SPOTS, NUISANCES, PIXEL_MASK
from cxlspeaks.settings import DatasetSettings
from cxlspeaks.simulate import Beam
from cxlspeaks.simulate.detector_response import DEAD_BIT, HOT_BIT, NOISY_BIT
from cxlspeaks.simulate.engine import FrameSimulator, WaterSheet
from cxlspeaks.simulate.ice import ICE_RING_LIST_A, IceSimulator, ice_rings, ring_photons
from cxlspeaks.simulate.noise import EIGER4M_SATURATION_PHOTONS
from cxlspeaks.simulate.nuisances import CXLS_LIKE, Nuisances, gaussian_overlap

from conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def simulator(tiny, crystal, **nuisances) -> FrameSimulator:
    return FrameSimulator(tiny, crystal, Beam(6000.0), water=WaterSheet(thickness_jitter=0.05), seed=7,
                          dataset="n", nuisances=Nuisances(**nuisances))


# ---------------------------------------------------------------------- ice
def test_ice_rings_sit_where_ray_tracing_puts_them():
    """Smooth Ih on 100 um pixels at 2 cm, 12 keV: the photon-weighted radius of each of the three strong rings is
    clen tan(2 asin(lambda / 2d)) for d = 3.90, 3.67, 3.44 A."""
    rings = ice_rings("hexagonal", 1.5)
    d = rings["d_A"].to_numpy()[:3]
    np.testing.assert_allclose(d, [3.90, 3.67, 3.44], atol=0.01)
    np.testing.assert_allclose(rings["d_A"].to_numpy()[:10], ICE_RING_LIST_A, atol=0.002)
    np.testing.assert_allclose(ice_rings("cubic", 1.5)["d_A"].to_numpy()[:3], [3.669, 2.247, 1.916], atol=0.002)
    geometry = shipped_geometry("tiny", clen_m=0.02).replace_panels(res=1e4)
    beam = Beam(12000.0)
    image = IceSimulator(geometry, beam).simulate("hexagonal", 1e-7).image
    pos = geometry.pixel_positions_m
    r = np.hypot(pos[..., 0], pos[..., 1])
    expected = geometry.clen_m * np.tan(2 * np.arcsin(beam.wavelength_m / (2 * d * 1e-10)))
    for r_d in expected:
        window = np.abs(r - r_d) < 0.17e-3
        mean_r = np.average(r[window], weights=image[window])
        assert mean_r == pytest.approx(r_d, abs=0.1e-4), (mean_r, r_d)     # 0.1 pixel


def test_ice_ring_photons_follow_the_powder_formula(tiny):
    """The (100) ring, whole on good pixels at 10 cm, 12 keV, holds N_ring <P> photons, <P> = 1 - sin^2(2theta)/2,
    N_ring = N t r_e^2 lambda^3 sum|F|^2 / (4 V_cell^2 sin theta); the spotty ring holds the same on average."""
    geometry = shipped_geometry("tiny", clen_m=0.1)
    beam = Beam(12000.0, n_photons=1e9)
    rings = ice_rings("hexagonal", 1.5)
    n_ring = ring_photons(rings, beam, 2e-7)[0]
    two_theta = 2 * np.arcsin(beam.wavelength_m / (2 * rings["d_A"][0] * 1e-10))
    r_d = geometry.clen_m * np.tan(two_theta)
    pos = geometry.pixel_positions_m
    r = np.hypot(pos[..., 0], pos[..., 1])
    annulus = np.abs(r - r_d) < 0.9e-3                  # halfway to the (002) ring, ~2.4 ring widths
    assert geometry.mask[np.abs(r - r_d) < 3e-3].all()
    simulator = IceSimulator(geometry, beam)
    smooth = simulator.simulate("hexagonal", 2e-7).image
    expected = n_ring * (1 - np.sin(two_theta) ** 2 / 2)
    assert smooth[annulus].sum() == pytest.approx(expected, rel=0.02)
    rng = np.random.default_rng(3)
    spotty = [simulator.simulate("hexagonal", 2e-7, spotty=True, rng=rng).image[annulus].sum() for _ in range(50)]
    # K ~ Poisson(20) spots of N_ring / 20: the mean is N_ring <P>, the spread sqrt(20)/20 of it per frame
    assert np.mean(spotty) == pytest.approx(expected, rel=4 * math.sqrt(20) / 20 / math.sqrt(50))
    assert np.std(spotty) == pytest.approx(expected / math.sqrt(20), rel=0.4)


# ---------------------------------------------------------------------- pulse, crystal and beam
def test_pulse_jitter_scales_water_and_bragg_together(tiny, synthetic_crystal):
    sim = simulator(tiny, synthetic_crystal, pulse_sigma=0.3)
    pulses = [sim.nuisance.draw(i, synthetic_crystal).pulse_scale for i in range(400)]
    assert np.mean(pulses) == pytest.approx(1.0, abs=4 * 0.31 / 20)           # log-normal with mean 1
    assert np.std(np.log(pulses)) == pytest.approx(0.3, rel=0.15)
    for i in range(3):
        frame, base = sim.frame(i), sim.signal(i)
        p = frame.nuisances.pulse_scale
        assert p != 1.0
        np.testing.assert_allclose(frame.signal, p * base.image, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(frame.peaks["photons"], p * base.peaks["photons"], rtol=1e-5)
        assert frame.water_scale == pytest.approx(p * sim.thickness_factor(i), rel=1e-12)
        expected = float(base.image.sum() * p + sim.background.sum() * frame.water_scale)
        assert frame.counts.sum() == pytest.approx(expected, abs=6 * np.sqrt(expected))


@pytest.mark.parametrize("offset_m", [(0.0, 0.0), (3e-6, -2e-6), (-8e-6, 1e-6)])
def test_gaussian_overlap_factor_is_the_mean_fluence_over_the_crystal(offset_m):
    r, size = 5e-6, 10e-6
    sigma = r / math.sqrt(2)
    x = offset_m[0] + np.linspace(-size / 2, size / 2, 801)
    y = offset_m[1] + np.linspace(-size / 2, size / 2, 801)
    fluence = np.exp(-(x[:, None] ** 2 + y[None, :] ** 2) / (2 * sigma ** 2))   # relative to the peak fluence
    numeric = np.trapezoid(np.trapezoid(fluence, y, axis=1), x) / size ** 2
    assert gaussian_overlap(offset_m, size, r) == pytest.approx(numeric, rel=1e-5)
    rho2 = offset_m[0] ** 2 + offset_m[1] ** 2
    assert gaussian_overlap(offset_m, 1e-9, r) == pytest.approx(math.exp(-rho2 / r ** 2), rel=1e-6)


def test_a_crystal_off_the_beam_axis_gets_the_overlap_fraction_of_the_photons(tiny, synthetic_crystal):
    sim = simulator(tiny, synthetic_crystal, beam_profile="gaussian", crystal_offset_sigma_m=3e-6)
    for i in range(2):
        frame, base = sim.frame(i), sim.signal(i)
        (size,), (overlap,) = frame.nuisances.crystal_size_m, frame.nuisances.overlap
        assert size == sim.sample.size_m and 0 < overlap < 1
        assert overlap == pytest.approx(gaussian_overlap(frame.nuisances.offset_m[0], size, 5e-6), rel=1e-12)
        np.testing.assert_allclose(frame.signal, overlap * base.image, rtol=1e-5, atol=1e-9)
        assert frame.water_scale == sim.thickness_factor(i)                     # the water does not care


def test_crystal_size_scales_reflections_by_the_volume(tiny, synthetic_crystal):
    sim = simulator(tiny, synthetic_crystal, crystal_size_sigma=0.3)
    frame, base = sim.frame(0), sim.signal(0)
    ratio = (frame.nuisances.crystal_size_m[0] / sim.sample.size_m) ** 3
    assert ratio != 1.0
    both = frame.peaks.merge(base.peaks, on=["h", "k", "l"], suffixes=("", "_0"))
    strong = both[both["partiality"] > 0.5]
    assert len(strong) >= 3
    # N_hkl = V x (partiality-weighted spectral overlap): per unit partiality the photons scale as V = L^3
    per_partiality = (strong["photons_total"] / strong["partiality"]) / (strong["photons_total_0"]
                                                                        / strong["partiality_0"])
    np.testing.assert_allclose(per_partiality, ratio, rtol=1e-3)


def test_extra_crystals_add_their_own_reflections(tiny, synthetic_crystal):
    """A frame of n crystals is the first crystal's frame (its own orientation) plus each extra crystal's Bragg
    image at its drawn orientation; all of their reflections are listed."""
    from cxlspeaks.simulate.bragg import BraggSimulator

    sim = simulator(tiny, synthetic_crystal, extra_crystals_mean=2.0)
    i = next(i for i in range(20) if sim.nuisance.draw(i, synthetic_crystal).n_crystals > 1)
    frame, base = sim.frame(i), sim.signal(i)
    np.testing.assert_array_equal(frame.quaternion, sim.orientation(i)[0])
    extra = [BraggSimulator(tiny, synthetic_crystal, sim.beam, sim.sample).simulate(astar)
             for _, astar in frame.nuisances.extra_orientations]
    assert len(extra) == frame.nuisances.n_crystals - 1
    np.testing.assert_allclose(frame.signal, base.image + sum(e.image for e in extra), rtol=1e-5, atol=1e-6)
    assert len(frame.peaks) == len(base.peaks) + sum(len(e.peaks) for e in extra)


def test_a_moved_beam_centre_moves_bragg_spots_and_water_by_the_recorded_offset(tiny, synthetic_crystal):
    sim = simulator(tiny, synthetic_crystal, beam_centre_sigma_px=2.0)
    frame, base = sim.frame(1), sim.signal(1)
    dx, dy = frame.nuisances.beam_centre_px
    assert abs(dx) > 0.2 and abs(dy) > 0.2
    both = frame.peaks.merge(base.peaks, on=["h", "k", "l"], suffixes=("", "_0"))
    assert len(both) >= 5
    np.testing.assert_allclose(both["fs"] - both["fs_0"], dx, atol=1e-6)         # tiny: fs along x, ss along y
    np.testing.assert_allclose(both["ss"] - both["ss_0"], dy, atol=1e-6)
    np.testing.assert_allclose(both["photons_total"], both["photons_total_0"], rtol=1e-6)   # nothing else changes
    np.testing.assert_array_equal(frame.quaternion, sim.orientation(1)[0])
    assert frame.water_scale == sim.thickness_factor(1)
    # the water pattern: the translation that best maps the dataset's water image onto the frame's (cubic
    # interpolation, pixels 4 away from gaps and edges) is the recorded offset
    from scipy import ndimage, optimize

    water, nominal = sim.nuisance.water_image(frame.nuisances).astype(float), sim.background.astype(float)
    inner = ndimage.binary_erosion(tiny.mask, iterations=4)
    ss, fs = np.indices(water.shape)

    def misfit(shift):
        moved = ndimage.map_coordinates(nominal, [ss[inner] - shift[1], fs[inner] - shift[0]], order=3)
        return np.sum((water[inner] - moved) ** 2) / np.sum(water[inner] ** 2)

    fit = optimize.minimize(misfit, [0.0, 0.0], method="Nelder-Mead", options=dict(xatol=1e-4, fatol=1e-14))
    np.testing.assert_allclose(fit.x, [dx, dy], atol=0.01)
    assert misfit([0.0, 0.0]) > 1e3 * fit.fun
    # the first-order water of a sub-pixel offset is the exact water of the shifted detector to 1e-3
    exact = sim.nuisance.water_image(frame.nuisances, exact=True)
    good = tiny.mask
    assert np.abs(water[good] - exact[good]).max() < 1e-3 * exact[good].max()


# ---------------------------------------------------------------------- a dataset with every nuisance
def make_dataset(folder, crystal, frames_per_shard=2, **nuisances):
    values = dataclasses.asdict(dataclasses.replace(CXLS_LIKE, **nuisances))
    settings = DatasetSettings(name="r", photon_energy_ev=6000.0, clen_m=0.15, detector="tiny", frames=4,
                               frames_per_shard=frames_per_shard, empty_percent=100, max_peaks=256,
                               nuisances=values)
    folder.mkdir(parents=True, exist_ok=True)
    water_image(settings, folder / "water.h5")
    shards = [folder / f"shard{k}.h5" for k in range(settings.n_shards)]
    for k, path in enumerate(shards):
        simulate_shard(settings, crystal, k, 7, folder / "water.h5", path)
    assemble_dataset(settings, shards, folder / "water.h5", 7, folder / "frames.h5", folder / "manifest.csv")
    return settings, folder / "frames.h5", pd.read_csv(folder / "manifest.csv")


STRONG = dict(ice_fraction=1.0, ice_spotty_fraction=1.0, ice_thickness_m=3e-7, dead_pixel_fraction=0.02,
              hot_pixel_fraction=0.01, noisy_pixel_fraction=0.02)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, synthetic_crystal):
    return make_dataset(tmp_path_factory.mktemp("nuisances"), synthetic_crystal, **STRONG)


def test_dead_pixels_read_zero_and_bad_pixels_are_in_the_mask(dataset):
    settings, path, _ = dataset
    with h5py.File(path) as h5:
        data = h5["/entry/data/data"][()]
        mask = h5[PIXEL_MASK][()]
        geometry_text = h5["/entry/instrument/detector/geometry"][()].decode()
    dead, hot, noisy = (mask & DEAD_BIT) > 0, (mask & HOT_BIT) > 0, (mask & NOISY_BIT) > 0
    good = settings.geometry().mask
    n_good = good.sum()
    for flag, fraction in ((dead, 0.02), (hot, 0.01), (noisy, 0.02)):
        assert abs(flag.sum() - fraction * n_good) < 5 * math.sqrt(fraction * n_good)
        assert not (flag & ~good).any()
    assert (data[:, dead] == 0).all()
    assert (data[:, hot] == EIGER4M_SATURATION_PHOTONS).all()
    clean = good & (mask == 0)
    extra = data[:, noisy].mean() - data[:, clean].mean()                       # Poisson(2) extra counts
    assert extra == pytest.approx(2.0, abs=6 * math.sqrt(2.0 / data[:, noisy].size) + 0.05)
    assert "mask0_data = /entry/instrument/detector/pixel_mask" in geometry_text
    from cxlspeaks.sources import open_source

    source = open_source(path)                # the frames' reader applies the geometry's mask line
    try:
        good_read = next(iter(source)).good
    finally:
        source.close()
    assert not good_read[dead | hot | noisy].any() and good_read[clean].all()


def test_ice_only_frames_are_non_hits_and_ice_spots_are_never_bragg_peaks(dataset):
    settings, path, manifest = dataset
    empty = manifest[manifest["kind"] == "empty"]
    assert (empty["ice_kind"] > 0).all() and (empty["n_ice_spots"] > 0).all() and (empty["ice_photons"] > 0).all()
    assert not empty["has_peaks"].any() and (empty["n_peaks"] == 0).all() and (empty["n_crystals"] == 0).all()
    with h5py.File(path) as h5:
        assert not h5["/entry/data/label"][settings.frames:].any()
        assert not h5["/entry/data/signal"][settings.frames:].any()
        spots = pd.DataFrame({k: h5[ICE_SPOTS][k][()] for k in h5[ICE_SPOTS]})
        assert set(h5[NUISANCES]) >= {"pulse_scale", "n_crystals", "overlap", "ice_kind", "beam_centre_dx_px"}
    assert set(spots["frame"]) >= set(empty["frame"])
    rings = ice_rings("hexagonal", 1.5)["d_A"].tolist() + ice_rings("cubic", 1.5)["d_A"].tolist()
    assert (np.abs(spots["d_A"].to_numpy()[:, None] - np.array(rings)[None, :]).min(axis=1) < 1e-3).all()
    # each spot sits on its ring: its distance from the (moved) beam centre is clen tan(2 asin(lambda / 2d))
    panel = settings.geometry().panels[0]
    shift = manifest.set_index("frame").loc[spots["frame"], ["beam_centre_dx_px", "beam_centre_dy_px"]].to_numpy()
    x = (panel.corner_x - shift[:, 0] + spots["fs"].to_numpy() + 0.5) / panel.res
    y = (panel.corner_y - shift[:, 1] + spots["ss"].to_numpy() + 0.5) / panel.res
    two_theta = 2 * np.arcsin(settings.beam.wavelength_m / (2 * spots["d_A"].to_numpy() * 1e-10))
    np.testing.assert_allclose(np.hypot(x, y), settings.clen_m * np.tan(two_theta), rtol=1e-4)


def test_ice_changes_the_counts_but_not_the_bragg_signal(tiny, synthetic_crystal):
    plain = simulator(tiny, synthetic_crystal)
    icy = simulator(tiny, synthetic_crystal, ice_fraction=1.0, ice_spotty_fraction=0.5, ice_thickness_m=3e-7)
    for i in range(3):
        a, b = plain.frame(i), icy.frame(i)
        assert a.signal.tobytes() == b.signal.tobytes() and a.peaks.equals(b.peaks)
        assert b.ice_photons > 0 and a.water_scale == b.water_scale
        expected = float(b.signal.sum() + plain.background.sum() * b.water_scale + b.ice_photons)
        assert b.counts.sum() == pytest.approx(expected, abs=6 * math.sqrt(expected))


def test_nuisances_off_give_the_bytes_of_a_frame_simulated_with_the_defaults(tiny, synthetic_crystal):
    sim = simulator(tiny, synthetic_crystal)
    for i in range(2):
        frame = sim.frame(i)
        assert frame.counts.tobytes() == sim.record(i, sim.signal(i).image).tobytes()
        assert frame.signal.tobytes() == sim.signal(i).image.tobytes()
    settings = DatasetSettings(name="x", photon_energy_ev=6000.0, clen_m=0.15)
    assert "nuisances" not in settings.to_dict() and "spectrum_file" not in settings.to_dict()


def test_same_seed_same_bytes_whatever_the_shards(dataset, tmp_path, synthetic_crystal):
    _, path, manifest = dataset
    _, again, manifest_again = make_dataset(tmp_path, synthetic_crystal, frames_per_shard=4, **STRONG)
    with h5py.File(path) as a, h5py.File(again) as b:
        for name in ("/entry/data/data", "/entry/data/signal", PIXEL_MASK, ICE_SPOTS + "/fs",
                     NUISANCES + "/pulse_scale", NUISANCES + "/beam_centre_dx_px"):
            assert a[name][()].tobytes() == b[name][()].tobytes(), name
    pd.testing.assert_frame_equal(manifest, manifest_again)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("nuisances, key", [
    ({"pulse_sigma": -0.1}, "nuisances.pulse_sigma"),
    ({"colour": 1}, "nuisances"),
    ({"crystal_offset_sigma_m": 1e-6}, "nuisances.crystal_offset_sigma_m"),
    ({"dead_pixel_fraction": 0.6, "hot_pixel_fraction": 0.6}, "nuisances.dead_pixel_fraction"),
])
def test_bad_nuisances_are_refused_in_one_line_naming_the_key(nuisances, key):
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["datasets"]["01"]["nuisances"] = nuisances
    with pytest.raises(config_checks.ConfigError) as error:
        config_checks.check_config(config, SCHEMA, [REPO / "config" / "test.yaml"], REPO,
                                   config_checks.snakemake_fill_defaults(SCHEMA))
    message = str(error.value)
    assert "\n" not in message and key in message and "01" in message, message


def test_a_dataset_overlays_single_nuisances_on_the_defaults():
    from cxlspeaks.settings import dataset_settings

    config = {"defaults": {"nuisances": {"pulse_sigma": 0.1, "ice_fraction": 0.2}},
              "datasets": {"a": {"photon_energy_ev": 7000.0, "clen_m": 0.2, "nuisances": {"ice_fraction": 0.5}}}}
    n = dataset_settings(config, "a").nuisances
    assert (n.pulse_sigma, n.ice_fraction) == (0.1, 0.5)


def test_a_spectrum_file_goes_with_spectrum_table_and_must_exist(tmp_path):
    with pytest.raises(ValueError, match="spectrum_file: a spectrum file goes with spectrum: table"):
        DatasetSettings(name="x", photon_energy_ev=6000.0, clen_m=0.15, spectrum_file="s.csv")
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["datasets"]["01"].update(spectrum="table", spectrum_file="no/such/spectrum.csv")
    with pytest.raises(config_checks.ConfigError, match="datasets.01.spectrum_file: no/such/spectrum.csv does not"):
        config_checks.check_config(config, SCHEMA, [REPO / "config" / "test.yaml"], REPO,
                                   config_checks.snakemake_fill_defaults(SCHEMA))


def test_a_spectrum_file_becomes_the_beams_table(tmp_path):
    from cxlspeaks.simulate import beam

    if "table" not in beam.SPECTRA:
        pytest.skip("this Beam has no table spectra")
    path = tmp_path / "spectrum.csv"
    path.write_text("energy_ev,weight\n5940,0\n6000,1\n6060,0\n")
    settings = DatasetSettings(name="x", photon_energy_ev=6000.0, clen_m=0.15, spectrum="table",
                               spectrum_file=str(path), spectrum_file_units="ev")
    assert settings.beam.spectrum == "table" and settings.beam.spectrum_table[1] == (6000.0, 1.0)
    assert DatasetSettings(**settings.to_dict()) == settings
