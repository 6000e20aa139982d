"""Detector saturation and flux-independent memory: counts cut off at the saturation value, never wrapped at 2^32.

XFEL-like flux (1e12 photons per pulse on a 200 um crystal) puts ~1e10 expected photons in the brightest pixels
of the tiny detector; uint32 arithmetic used to wrap those modulo 2^32 (anything from 3e7 to 4.2e9). Now such
pixels record the saturation value and are counted; at 1e15 photons per pulse (the schema's limit) a frame is
drawn per pixel, with memory proportional to the pixels, not to the ~3e10 photons.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from cxlspeaks.dataset import N_SATURATED, assemble_dataset, simulate_shard, water_image
from cxlspeaks.io import open_h5
from cxlspeaks.settings import DatasetSettings
from cxlspeaks.simulate import Beam, CrystalSample
from cxlspeaks.simulate.engine import FrameSimulator
from cxlspeaks.simulate.noise import (EIGER4M_SATURATION_PHOTONS, MAX_PLACED_PHOTONS, UINT32_MAX, PoissonImage,
                                      poisson_counts)

SAT = EIGER4M_SATURATION_PHOTONS


def xfel(tiny, crystal, n_photons, saturation=SAT):
    return FrameSimulator(tiny, crystal, Beam(6000.0, n_photons=n_photons), CrystalSample(size_m=200e-6),
                          seed=7, dataset="xfel", saturation_photons=saturation)


def expected_total(sim, frame_index, signal):
    return signal + sim.background * sim.thickness_factor(frame_index)


def test_xfel_flux_saturates_at_the_cutoff_and_counts_the_pixels(tiny, synthetic_crystal):
    sim = xfel(tiny, synthetic_crystal, 1e12)
    signal = sim.signal(0).image.astype(np.float64)
    lam = expected_total(sim, 0, signal)
    assert lam.max() > 2**32        # would have wrapped modulo 2^32 in uint32
    counts = sim.record(0, signal)
    assert counts.dtype == np.uint32 and counts.max() == SAT
    # 10 sigma away from the cut-off a pixel is certainly (not) saturated
    surely_over = lam - 10 * np.sqrt(lam) > SAT
    surely_under = lam + 10 * np.sqrt(lam) < SAT
    assert surely_over.sum() > 10
    assert (counts[surely_over] == SAT).all()
    assert (counts[surely_under] < SAT).all()
    assert sim.n_saturated(counts) == np.count_nonzero(counts == SAT)
    assert surely_over.sum() <= sim.n_saturated(counts) <= (~surely_under).sum()
    # without a detector cut-off the uint32 ceiling still holds: no wrap past 2^32 - 1
    bare = xfel(tiny, synthetic_crystal, 1e12, saturation=UINT32_MAX).record(0, signal)
    assert (bare[lam - 10 * np.sqrt(lam) > UINT32_MAX] == UINT32_MAX).all()
    below = lam + 10 * np.sqrt(lam) < UINT32_MAX
    assert np.allclose(bare[below], lam[below], rtol=0, atol=10 * np.sqrt(lam[below]).max() + 1)


def test_the_cutoff_changes_nothing_below_saturation(tiny, synthetic_crystal):
    """At the CXLS flux no pixel nears the cut-off: the frame is the same bytes with or without it."""
    def frames(saturation):
        sim = FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), seed=7, dataset="03",
                             saturation_photons=saturation)
        return [sim.record(i, sim.signal(i).image).tobytes() for i in range(3)] + [sim.record(0, None, True).tobytes()]
    assert frames(SAT) == frames(UINT32_MAX)


def test_1e15_photons_cost_memory_per_pixel_not_per_photon(tiny, synthetic_crystal):
    """The schema's limit, 1e15 photons per pulse: ~3e10 water photons on the tiny detector (0.2 TB if placed
    one by one) are drawn per pixel; the recording's peak memory stays under 100 bytes per pixel."""
    sim = xfel(tiny, synthetic_crystal, 1e15)
    signal = sim.signal(0).image
    assert sim.background.sum() > 1e3 * MAX_PLACED_PHOTONS
    tracemalloc.start()
    counts = sim.record(0, signal)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * tiny.mask.size
    lam = expected_total(sim, 0, signal.astype(np.float64))
    surely_over = lam - 10 * np.sqrt(lam) > SAT
    assert surely_over.sum() == np.count_nonzero(lam > 0) > 0.9 * tiny.mask.sum()   # every lit pixel saturates
    assert (counts[surely_over] == SAT).all() and (counts[lam == 0] == 0).all()
    assert sim.n_saturated(counts) == surely_over.sum()
    # the same frame without a cut-off: the water (~1.7e6 photons per pixel) is Poisson around its mean
    bare = xfel(tiny, synthetic_crystal, 1e15, saturation=UINT32_MAX).record(0, None)
    water = sim.background.astype(np.float64) * sim.thickness_factor(0)
    lit = water > 0
    z = (bare[lit] - water[lit]) / np.sqrt(water[lit])
    assert abs(z.mean()) < 5 / np.sqrt(lit.sum()) and z.std() == pytest.approx(1.0, abs=0.05)


def test_per_pixel_draws_are_poisson_above_the_placement_limit():
    """Above MAX_PLACED_PHOTONS expected photons a frame is drawn per pixel: mean = variance = lambda."""
    expected = np.linspace(0.0, 2.0 * MAX_PLACED_PHOTONS / 50_000, 50_000).reshape(250, 200)
    image = PoissonImage(expected)
    assert image.total > MAX_PLACED_PHOTONS
    rng = np.random.default_rng(1)
    draws = np.stack([image.draw(rng) for _ in range(20)]).astype(np.float64)
    lit = expected > 0
    z = (draws[:, lit] - expected[lit]) / np.sqrt(expected[lit])
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and z.std() == pytest.approx(1.0, abs=0.01)
    assert (draws[:, ~lit] == 0).all()


def test_means_beyond_numpys_poisson_range_saturate():
    """numpy's sampler stops at lambda ~9.2e18; larger means use the normal approximation and saturate."""
    rng = np.random.default_rng(0)
    lam = np.array([[0.0, 5.0, 1e10, 1e19], [3e20, 1e30, 2.0, 1e38]])
    counts = poisson_counts(lam, rng, saturation=SAT)
    assert counts.dtype == np.uint32
    assert (counts[lam > 1e9] == SAT).all() and counts[0, 0] == 0 and counts[0, 1] < SAT
    assert (poisson_counts(lam, rng)[lam > 1e10] == UINT32_MAX).all()
    with pytest.raises(ValueError, match="saturation"):
        poisson_counts(lam, rng, saturation=2**32)


def test_manifest_and_frames_file_count_saturated_pixels(tmp_path, synthetic_crystal):
    settings = DatasetSettings(name="x", photon_energy_ev=6000.0, clen_m=0.15, frames=2, frames_per_shard=1,
                               empty_percent=50, n_photons=1e12, crystal_size_m=200e-6, detector="tiny",
                               saturation_photons=100_000, peak_list_min_photons=1e4)
    # (at 1e12 photons even the shape-transform tails of far-off reflections give >= 1 photon: tens of thousands
    # of them, more than the frames contract's max_peaks; the peak list keeps the bright ones here)
    assert settings.saturation == 100_000
    assert DatasetSettings(name="y", photon_energy_ev=6000.0, clen_m=0.15).saturation == SAT
    water = tmp_path / "water.h5"
    water_image(settings, water)
    shards = [tmp_path / f"shard{s}.h5" for s in range(settings.n_shards)]
    for s, path in enumerate(shards):
        simulate_shard(settings, synthetic_crystal, s, 5, water, path)
    frames, manifest = tmp_path / "frames.h5", tmp_path / "manifest.csv"
    assemble_dataset(settings, shards, water, 5, frames, manifest)
    table = pd.read_csv(manifest)
    with open_h5(frames) as h5:
        data = h5["/entry/data/data"][()]
        stored = h5[N_SATURATED][()]
        assert h5[N_SATURATED].attrs["saturation_photons"] == 100_000
    assert data.max() == 100_000
    counted = (data == 100_000).sum(axis=(1, 2))
    assert stored.dtype == np.uint32 and stored.tolist() == counted.tolist() == table["n_saturated"].tolist()
    assert (counted[:2] > 0).all()       # the crystal frames saturate; the empty frame (water ~1e3/pixel) does not
    assert counted[2] == 0
