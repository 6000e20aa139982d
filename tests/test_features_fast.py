"""features.binned_frames_sparse / binned_sparse: the same bits as binned_frames, from the non-zero pixels."""

from __future__ import annotations

import numpy as np
import pytest

from cxlspeaks.features import bin_index, bin_sum, binned_frames, binned_frames_sparse, binned_sparse


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("shape,factor", [((37, 29), 4), ((48, 64), 8), ((5, 3), 1), ((10, 13), 16)])
def test_sparse_binning_equals_binned_frames(dtype, shape, factor):
    rng = np.random.default_rng(3)
    frames = rng.poisson(0.2, size=(3, *shape)).astype(dtype)
    frames[0, 1, 1] = 1000
    if np.dtype(dtype).kind != "u":
        frames[1, 2, 2] = -7
    mask = rng.random(shape) > 0.2
    np.testing.assert_array_equal(binned_frames_sparse(frames, mask, factor), binned_frames(frames, mask, factor))
    per_frame = rng.random((3, *shape)) > 0.3
    np.testing.assert_array_equal(binned_frames_sparse(frames, per_frame, factor),
                                  binned_frames(frames, per_frame, factor))


def test_inexact_cases_fall_back_to_the_dense_sum():
    rng = np.random.default_rng(4)
    mask = np.ones((16, 16), bool)
    frames = rng.poisson(1.0, size=(4, 16, 16)).astype(np.float32)
    frames[0, 3, 3] = 0.25                     # a fraction
    frames[1, 0, 0] = np.nan                   # NaN at a good pixel
    frames[2, 5, 5] = np.inf
    frames[3, :8, :8] = 2 ** 22 + 1            # float32 sums past 2**24 round
    dense = binned_frames(frames, mask, 8)
    np.testing.assert_array_equal(binned_frames_sparse(frames, mask, 8), dense)
    big = np.full((1, 8, 8), 2 ** 31 + 3, np.uint32)  # uint32 rounding in float32
    np.testing.assert_array_equal(binned_frames_sparse(big, np.ones((8, 8), bool), 4),
                                  binned_frames(big, np.ones((8, 8), bool), 4))
    assert binned_sparse(np.zeros(2, np.int32), np.array([0.5, 1.0]), (1, 1)) is None
    assert binned_sparse(np.zeros(0, np.int32), np.zeros(0, np.uint32), (2, 2)).shape == (2, 2)


def test_masked_nan_is_ignored_and_bin_index_matches_bin_sum():
    frame = np.ones((1, 9, 7), np.float32)
    frame[0, 0, 0] = np.nan
    mask = np.ones((9, 7), bool)
    mask[0, 0] = False
    np.testing.assert_array_equal(binned_frames_sparse(frame, mask, 4), binned_frames(frame, mask, 4))
    idx = bin_index((9, 7), 4)
    np.testing.assert_array_equal(np.bincount(idx, minlength=6).reshape(3, 2),
                                  bin_sum(np.ones((9, 7)), 4))
    with pytest.raises(ValueError):
        bin_index((9, 7), 0)
