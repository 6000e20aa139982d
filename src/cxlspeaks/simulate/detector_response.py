"""Detector response: a dataset's bad pixels (dead, hot, noisy) and the pixel mask that flags them.

A real Eiger ships a per-detector bad-pixel map in its NeXus master file, ``/entry/instrument/detector/
detectorSpecific/pixel_mask`` (uint32, one value per pixel, 0 = good), with the bits defined by DECTRIS' header
documentation (https://www.dectris.com/support/downloads/header-docs/nexus/): bit 0 gap (no sensor), bit 1 dead,
bit 2 under-responding, bit 3 over-responding (hot), bit 4 noisy. The simulated map uses the same bits, is drawn
once per dataset (:func:`draw_bad_pixels`, seeded by the config's seed and the dataset's name), and is written to
the frames file at :data:`PIXEL_MASK` with a CrystFEL mask line (``mask0_data``, ``mask0_badbits`` =
:data:`BAD_BITS`) in the dataset's geometry, so finders, models and indexamajig exclude those pixels.

Recorded values (:func:`apply_bad_pixels`, after the Poisson draw and the saturation cut): dead pixels read 0; hot
pixels read ``hot_counts`` (default the saturation value, as a pixel stuck at its count-rate cut-off); noisy pixels
read their count plus Poisson(``noisy_mean_counts``) extra counts per frame (drawn per frame, cut at saturation).
The bad-pixel fractions are per dataset (config ``nuisances``); the CXLS-like values are ASSUMPTIONS (see
:mod:`.nuisances`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import PIXEL_MASK
from ..seeding import frame_rng

__all__ = ["PIXEL_MASK", "BAD_BITS", "BadPixels", "apply_bad_pixels", "draw_bad_pixels"]

#: DECTRIS pixel_mask bits.
GAP_BIT, DEAD_BIT, HOT_BIT, NOISY_BIT = 1 << 0, 1 << 1, 1 << 3, 1 << 4
#: Bits that make a pixel bad in the geometry's mask line.
BAD_BITS = GAP_BIT | DEAD_BIT | HOT_BIT | NOISY_BIT


@dataclass(frozen=True)
class BadPixels:
    """Bool (ss, fs) maps of the dead, hot and noisy pixels (disjoint, all on good pixels)."""

    dead: np.ndarray
    hot: np.ndarray
    noisy: np.ndarray

    def pixel_mask(self, good: np.ndarray) -> np.ndarray:
        """The DECTRIS-style pixel mask (uint32 (ss, fs)): gap bit where ``good`` is False, dead/hot/noisy bits."""
        mask = np.where(good, 0, GAP_BIT).astype(np.uint32)
        mask[self.dead] |= DEAD_BIT
        mask[self.hot] |= HOT_BIT
        mask[self.noisy] |= NOISY_BIT
        return mask


def draw_bad_pixels(good: np.ndarray, seed: int, dataset: str, dead_fraction: float, hot_fraction: float,
                    noisy_fraction: float) -> BadPixels:
    """The dataset's bad pixels: each good pixel is dead, hot or noisy with the given probabilities (one uniform
    deviate per pixel from the stream ``"<dataset>:detector_response"``), else stays good."""
    if min(dead_fraction, hot_fraction, noisy_fraction) < 0 or dead_fraction + hot_fraction + noisy_fraction > 1:
        raise ValueError("bad-pixel fractions must be non-negative and sum to at most 1")
    good = np.asarray(good, dtype=bool)
    u = frame_rng(seed, f"{dataset}:detector_response", 0, "noise").random(good.shape)
    dead = good & (u < dead_fraction)
    hot = good & (u >= dead_fraction) & (u < dead_fraction + hot_fraction)
    noisy = good & (u >= dead_fraction + hot_fraction) & (u < dead_fraction + hot_fraction + noisy_fraction)
    return BadPixels(dead=dead, hot=hot, noisy=noisy)


def apply_bad_pixels(counts: np.ndarray, bad: BadPixels, rng: np.random.Generator, saturation: int,
                     noisy_mean_counts: float = 2.0, hot_counts: int | None = None) -> np.ndarray:
    """Record the bad pixels into ``counts`` (uint32 (ss, fs), in place): noisy + Poisson(noisy_mean_counts) cut
    at ``saturation``, hot = ``hot_counts`` (None: ``saturation``), dead = 0. Returns ``counts``."""
    if bad.noisy.any():
        extra = rng.poisson(noisy_mean_counts, int(bad.noisy.sum()))
        counts[bad.noisy] = np.minimum(counts[bad.noisy].astype(np.int64) + extra, saturation)
    counts[bad.hot] = saturation if hot_counts is None else min(int(hot_counts), saturation)
    counts[bad.dead] = 0
    return counts
