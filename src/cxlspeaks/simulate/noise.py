"""Photon-counting noise: recorded counts are Poisson draws on the expected photons (signal + background),
cut off at the detector's saturation value.

An Eiger pixel counts photons; with expected photons lambda_i the recorded count n_i ~ Poisson(lambda_i),
independently per pixel. Sparse frames (CXLS water background: ~0.01 photons per pixel) are drawn as a Poisson
process: the total K ~ Poisson(sum lambda) and each of the K photons falls in pixel i with probability
lambda_i / sum lambda (multinomial), which gives exactly independent Poisson counts per pixel and costs O(K log N)
instead of one Poisson deviate per pixel. Dense frames use numpy's per-pixel Poisson sampler.

**Memory.** Placing photons one by one costs ~40 bytes per photon (uniform deviates, sort, pixel look-up), so a
frame whose expected total exceeds :data:`MAX_PLACED_PHOTONS` (2^22, ~170 MB at most) is drawn per pixel instead
(Generator.poisson: one deviate per pixel, memory O(pixels) whatever the flux; at 1e15 photons per pulse the
water alone is ~1e10 photons on the tiny test detector and ~5e10 on the Eiger 4M, which photon by photon would need
0.4-2 TB). The branch is chosen from the expected total, never from a drawn number, so either branch is exactly
Poisson; frames below the limit (every frame at the CXLS flux, ~1e4 water photons) keep their random stream.
numpy's Poisson sampler refuses lambda >= ~9.2e18 (int64 range); above :data:`POISSON_NORMAL_ABOVE` = 1e18 the
count is drawn from the normal approximation lambda + sqrt(lambda) z (relative skewness 1/sqrt(lambda) <= 1e-9).

**Saturation.** Counts are cut off at ``saturation`` photons (at most 2^32 - 1, the uint32 frame type) rather than
wrapping modulo 2^32: a pixel whose Poisson draw reaches the cut-off records exactly the cut-off, as an Eiger
records (and flags) pixels above its count-rate cut-off. Sums (water + signal) are formed in int64 before the cut.

The Eiger 4M value, :data:`EIGER4M_SATURATION_PHOTONS` = 245916 counts, is the ``countrate_correction_count_cutoff``
that an EIGER (firmware eiger-1.6.5) writes in its NeXus master file (/entry/instrument/detector/detectorSpecific/;
the field is defined in DECTRIS' header documentation, https://www.dectris.com/support/downloads/header-docs/nexus/;
the value is that of a public EIGER master-file header example). It is an ASSUMPTION for the CXLS Eiger 4M: the
cut-off is derived by the detector from its count-rate correction table and depends on the model, firmware and
count time (other EIGER / EIGER2 headers state e.g. 50649 for an EIGER2 X 9M CdTe); read the real detector's
master file and set ``saturation_photons`` in the config for other data.
"""

from __future__ import annotations

import numpy as np

#: Above this mean photons per pixel the per-pixel sampler is faster than placing photons one by one.
DENSE_MEAN_PHOTONS = 0.25

#: The largest recorded value of a uint32 frame: counts never wrap past it.
UINT32_MAX = 2**32 - 1

#: Eiger 4M count cut-off (counts per pixel per frame): an EIGER master file's countrate_correction_count_cutoff
#: (see the module docstring: source, and why it is an assumption for the CXLS detector).
EIGER4M_SATURATION_PHOTONS = 245916

#: Above this expected total a frame is drawn per pixel, not photon by photon (memory O(pixels), not O(photons)).
MAX_PLACED_PHOTONS = 2**22

#: Above this mean a pixel's count comes from the normal approximation (numpy's sampler stops at ~9.2e18).
POISSON_NORMAL_ABOVE = 1e18


def check_saturation(saturation: int) -> int:
    """The saturation value as an int in 1 .. 2^32 - 1 (uint32 frames), or a ValueError."""
    value = int(saturation)
    if value != saturation or not 1 <= value <= UINT32_MAX:
        raise ValueError(f"saturation must be an integer number of photons in 1 .. 2^32 - 1, got {saturation!r}")
    return value


def _check_expected(lam: np.ndarray) -> None:
    if lam.size and not (np.isfinite(lam).all() and lam.min() >= 0):
        raise ValueError("expected photons must be finite and non-negative")


def capped_poisson(lam: np.ndarray, rng: np.random.Generator, saturation: int = UINT32_MAX) -> np.ndarray:
    """Poisson(``lam``) deviates (int64, same shape) cut off at ``saturation``.

    Where every lam <= :data:`POISSON_NORMAL_ABOVE` this is ``rng.poisson(lam)`` (the same random stream);
    larger means take a standard normal deviate each, after the Poisson draws of the others.
    """
    lam = np.asarray(lam, dtype=np.float64)
    big = lam > POISSON_NORMAL_ABOVE
    if not big.any():
        return np.minimum(rng.poisson(lam), saturation)
    counts = np.empty(lam.shape, dtype=np.int64)
    counts[~big] = rng.poisson(lam[~big])
    approx = lam[big] + np.sqrt(lam[big]) * rng.standard_normal(int(big.sum()))
    counts[big] = np.clip(approx, 0.0, float(saturation))
    return np.minimum(counts, saturation)


def poisson_counts(expected: np.ndarray, rng: np.random.Generator, saturation: int = UINT32_MAX) -> np.ndarray:
    """Poisson counts (uint32, same shape) with mean ``expected`` (photons, finite and >= 0), cut off at
    ``saturation``."""
    saturation = check_saturation(saturation)
    lam = np.asarray(expected, dtype=np.float64)
    flat = lam.ravel()
    _check_expected(flat)
    if flat.size == 0:
        return np.zeros(lam.shape, dtype=np.uint32)
    if flat.mean() > DENSE_MEAN_PHOTONS:
        return capped_poisson(lam, rng, saturation).astype(np.uint32)
    # sparse: at most DENSE_MEAN_PHOTONS photons per pixel are expected, so memory stays O(pixels)
    cumulative = np.cumsum(flat)
    total = cumulative[-1]
    n_photons = rng.poisson(total)
    pixel = np.searchsorted(cumulative, rng.random(n_photons) * total, side="right")
    counts = np.bincount(np.minimum(pixel, flat.size - 1), minlength=flat.size)
    return np.minimum(counts, saturation).astype(np.uint32).reshape(lam.shape)


class PoissonImage:
    """Repeated Poisson draws of one fixed expected image (a dataset's water), optionally scaled per frame.

    The cumulative sum is computed once; each draw then costs O(K log N) for K recorded photons. Scaling the
    image by s (shot-to-shot thickness) scales the total, not the per-photon pixel probabilities. Frames
    expecting more than :data:`MAX_PLACED_PHOTONS` photons are drawn per pixel (memory O(N), any flux).
    """

    def __init__(self, expected: np.ndarray):
        flat = np.asarray(expected, dtype=np.float64).ravel()
        _check_expected(flat)
        self.shape = np.shape(expected)
        self._expected = flat
        self._cumulative = np.cumsum(flat)
        self.total = float(self._cumulative[-1]) if flat.size else 0.0

    def draw(self, rng: np.random.Generator, scale: float = 1.0, saturation: int = UINT32_MAX) -> np.ndarray:
        """Poisson counts (uint32) with mean ``scale * expected``, cut off at ``saturation``."""
        saturation = check_saturation(saturation)
        if self.total * scale > MAX_PLACED_PHOTONS:
            return capped_poisson(self._expected * scale, rng, saturation).astype(np.uint32).reshape(self.shape)
        counts = np.zeros(self._cumulative.size, dtype=np.uint32)
        n_photons = rng.poisson(self.total * scale)
        positions = np.sort(rng.random(n_photons)) * self.total      # sorted: cache-friendly look-ups
        pixel, hits = np.unique(np.minimum(np.searchsorted(self._cumulative, positions, side="right"),
                                           counts.size - 1), return_counts=True)
        counts[pixel] = np.minimum(hits, saturation)
        return counts.reshape(self.shape)


def add_poisson_counts(counts: np.ndarray, expected: np.ndarray, rng: np.random.Generator,
                       saturation: int = UINT32_MAX) -> np.ndarray:
    """Add Poisson(``expected``) to ``counts`` (uint32, C-contiguous) in place, drawing only where ``expected`` > 0
    (sparse signal); the sums are cut off at ``saturation`` (formed in int64: no wrap at 2^32).

    The sum of independent Poisson counts is Poisson with the summed mean, so water drawn by
    :class:`PoissonImage` plus the Bragg signal drawn here is exactly Poisson(signal + water), then cut off.
    """
    saturation = check_saturation(saturation)
    flat_expected = np.asarray(expected).ravel()
    lit = np.flatnonzero(flat_expected)
    if lit.size:
        lam = flat_expected[lit].astype(np.float64)
        _check_expected(lam)
        if not counts.flags.c_contiguous:
            raise ValueError("counts must be C-contiguous (they are updated in place)")
        flat_counts = counts.reshape(-1)
        summed = flat_counts[lit].astype(np.int64) + capped_poisson(lam, rng, saturation)
        flat_counts[lit] = np.minimum(summed, saturation)
    return counts


def n_saturated(counts: np.ndarray, saturation: int) -> int:
    """Pixels recorded at (or above) the saturation value."""
    return int(np.count_nonzero(np.asarray(counts) >= saturation))
