"""Photon-counting noise: recorded counts are Poisson draws on the expected photons (signal + background).

An Eiger pixel counts photons; with expected photons lambda_i the recorded count n_i ~ Poisson(lambda_i),
independently per pixel. Sparse frames (CXLS water background: ~0.01 photons per pixel) are drawn as a Poisson
process: the total K ~ Poisson(sum lambda) and each of the K photons falls in pixel i with probability
lambda_i / sum lambda (multinomial), which gives exactly independent Poisson counts per pixel and costs O(K log N)
instead of one Poisson deviate per pixel. Dense frames use numpy's per-pixel Poisson sampler.
"""

from __future__ import annotations

import numpy as np

#: Above this mean photons per pixel the per-pixel sampler is faster than placing photons one by one.
DENSE_MEAN_PHOTONS = 0.25


def poisson_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts (uint32, same shape) with mean ``expected`` (photons, finite and >= 0)."""
    lam = np.asarray(expected, dtype=np.float64)
    flat = lam.ravel()
    if flat.size and not (np.isfinite(flat).all() and flat.min() >= 0):
        raise ValueError("expected photons must be finite and non-negative")
    if flat.size == 0:
        return np.zeros(lam.shape, dtype=np.uint32)
    if flat.mean() > DENSE_MEAN_PHOTONS:
        return rng.poisson(lam).astype(np.uint32)
    cumulative = np.cumsum(flat)
    total = cumulative[-1]
    n_photons = rng.poisson(total)
    pixel = np.searchsorted(cumulative, rng.random(n_photons) * total, side="right")
    counts = np.bincount(np.minimum(pixel, flat.size - 1), minlength=flat.size)
    return counts.astype(np.uint32).reshape(lam.shape)


class PoissonImage:
    """Repeated Poisson draws of one fixed expected image (a dataset's water), optionally scaled per frame.

    The cumulative sum is computed once; each draw then costs O(K log N) for K recorded photons. Scaling the
    image by s (shot-to-shot thickness) scales the total, not the per-photon pixel probabilities.
    """

    def __init__(self, expected: np.ndarray):
        flat = np.asarray(expected, dtype=np.float64).ravel()
        if flat.size and not (np.isfinite(flat).all() and flat.min() >= 0):
            raise ValueError("expected photons must be finite and non-negative")
        self.shape = np.shape(expected)
        self._cumulative = np.cumsum(flat)
        self.total = float(self._cumulative[-1]) if flat.size else 0.0

    def draw(self, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """Poisson counts (uint32) with mean ``scale * expected``."""
        counts = np.zeros(self._cumulative.size, dtype=np.uint32)
        n_photons = rng.poisson(self.total * scale)
        positions = np.sort(rng.random(n_photons)) * self.total      # sorted: cache-friendly look-ups
        pixel, hits = np.unique(np.minimum(np.searchsorted(self._cumulative, positions, side="right"),
                                           counts.size - 1), return_counts=True)
        counts[pixel] = hits
        return counts.reshape(self.shape)


def add_poisson_counts(counts: np.ndarray, expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add Poisson(``expected``) to ``counts`` in place, drawing only where ``expected`` > 0 (sparse signal).

    The sum of independent Poisson counts is Poisson with the summed mean, so water drawn by
    :class:`PoissonImage` plus the Bragg signal drawn here is exactly Poisson(signal + water).
    """
    flat_expected = np.asarray(expected).ravel()
    lit = np.flatnonzero(flat_expected)
    if lit.size:
        lam = flat_expected[lit].astype(np.float64)
        if not (np.isfinite(lam).all() and lam.min() >= 0):
            raise ValueError("expected photons must be finite and non-negative")
        counts.ravel()[lit] += rng.poisson(lam).astype(np.uint32)
    return counts
