"""A dataset's frames: reproducible orientations, signal, water and noise; gaps record nothing."""

from __future__ import annotations

import numpy as np
import pytest

from cxlspeaks.simulate import Beam
from cxlspeaks.simulate.engine import FrameSimulator, WaterSheet


@pytest.fixture(scope="module")
def engine(tiny, synthetic_crystal):
    return FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), water=WaterSheet(thickness_jitter=0.05),
                          seed=7, dataset="03")


def test_same_seed_gives_the_same_bytes_in_any_order(tiny, synthetic_crystal, engine):
    again = FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), water=WaterSheet(thickness_jitter=0.05),
                           seed=7, dataset="03")
    first = [engine.record(i, engine.signal(i).image) for i in range(3)]
    second = [again.record(i, again.signal(i).image) for i in reversed(range(3))][::-1]
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()
    assert not np.array_equal(first[0], first[1])
    other = FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), seed=8, dataset="03")
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal, other.orientation(0)[1],
                             engine.orientation(0)[1])


def test_empty_frames_differ_from_each_other_and_from_overlays(engine):
    empties = [engine.record(i, None, empty=True) for i in range(4)]
    overlays = [engine.record(i, None) for i in range(4)]
    for i in range(4):
        for j in range(4):
            assert not np.array_equal(empties[i], overlays[j])
            if i != j:
                assert not np.array_equal(empties[i], empties[j])


def test_recorded_frames_have_counts_only_on_good_pixels(engine, tiny):
    counts = np.stack([engine.record(i, engine.signal(i).image) for i in range(5)])
    assert counts.dtype == np.uint32
    assert (counts[:, ~tiny.mask] == 0).all()
    assert counts[:, tiny.mask].sum() > 0


def test_recorded_photons_add_signal_and_scaled_water(engine):
    """Total counts of a hit are Poisson with mean sum(signal) + thickness factor * sum(water)."""
    signal = engine.signal(0)
    hit = engine.record(0, signal.image).astype(float)
    expected = float(signal.image.sum() + engine.background.sum() * engine.thickness_factor(0))
    assert engine.thickness_factor(0) != 1.0
    assert hit.sum() == pytest.approx(expected, abs=6 * np.sqrt(expected))
    empty = engine.record(0, None, empty=True).astype(float)
    expected_empty = float(engine.background.sum() * engine.thickness_factor(0, empty=True))
    assert empty.sum() == pytest.approx(expected_empty, abs=6 * np.sqrt(expected_empty))


def test_unknown_backends_are_refused(tiny, synthetic_crystal):
    with pytest.raises(ValueError, match="unknown Bragg backend"):
        FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), bragg_backend="magic")
    with pytest.raises(ValueError, match="unknown water backend"):
        FrameSimulator(tiny, synthetic_crystal, Beam(6000.0), water_backend="magic")
