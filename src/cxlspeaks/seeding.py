"""Reproducible random streams: every draw derives from the config's seed, the dataset and the frame index.

Frame ``i`` of dataset ``d`` always gets the same numbers, whichever order, process or shard computes it:
its generator is seeded by numpy's SeedSequence over (seed, CRC-32 of the dataset name, frame index, purpose).
"""

from __future__ import annotations

import zlib

import numpy as np

#: Separate streams per purpose, so adding a draw to one never shifts another.
PURPOSES = {"orientation": 0, "noise": 1, "thickness": 2, "empty_noise": 3, "empty_thickness": 4, "split": 5,
            "crop": 6}


def frame_rng(seed: int, dataset: str, frame_index: int, purpose: str) -> np.random.Generator:
    """The generator for one purpose of one frame of one dataset."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}; known: {', '.join(PURPOSES)}")
    if frame_index < 0:
        raise ValueError(f"frame index must be non-negative, got {frame_index}")
    key = [int(seed), zlib.crc32(dataset.encode()), int(frame_index), PURPOSES[purpose]]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
