"""The frame-source interface: every way frames come into cxlspeaks yields :class:`Frame` objects.

A source (a cxlspeaks frames file, a plain stack, a DECTRIS NXmx master file, a Cheetah/OM CXI file, a CrystFEL
``.lst`` event list, the Eiger stream) knows its detector (a :class:`~cxlspeaks.geometry.Geometry`) and yields,
frame by frame, the recorded counts with one good-pixel mask that already combines every mask the input carries
(geometry bad regions and mask files, the detector's pixel mask, marker values, non-finite pixels) and the
per-frame metadata the input states (photon energy, camera length, ...).

Errors: a source raises :class:`~cxlspeaks.io.DataFileError` (a ``ValueError``) with one line naming the file and,
where it applies, the frame, for anything it cannot read; it never yields zeros for data that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ..geometry import Geometry


@dataclass
class Frame:
    """One recorded frame.

    Attributes:
        event: the event id, unique within the source, as CrystFEL writes it in a ``.lst`` (``//N`` for frame N of
            a stack; ``"path //N"`` for sources spanning files). ``source_file`` names the file the counts came from.
        counts: float32 (ss, fs) recorded photons (counts of a photon-counting detector; masked pixels may hold
            anything, including the detector's marker value or NaN).
        good: bool (ss, fs), True where the pixel may be used (inside a panel, not masked by any mask, finite,
            not at a marker value). Saturated pixels stay good but are listed in ``saturated``.
        saturated: bool (ss, fs), True where counts >= the detector's saturation value (never peak centroids).
        metadata: what the input states for this frame, in SI-ish units named in the key: ``photon_energy_ev``,
            ``clen_m``, ``beam_center_fs_px``, ``beam_center_ss_px``, ``pixel_size_m``, ``saturation_value``,
            ``image_id`` (stream), ``series_id`` ...; absent keys are unknown (never guessed).
        geometry: the detector of this frame (the source's geometry with per-frame values such as an HDF5
            ``clen`` resolved); None when the source's ``geometry`` applies unchanged.
    """

    event: str
    counts: np.ndarray
    good: np.ndarray
    saturated: np.ndarray
    source_file: str = ""
    metadata: dict = field(default_factory=dict)
    geometry: Geometry | None = None

    @property
    def n_masked(self) -> int:
        """Pixels that may not be used (outside panels included)."""
        return int(self.good.size - np.count_nonzero(self.good))

    @property
    def n_saturated(self) -> int:
        """Good pixels at or above the saturation value."""
        return int(np.count_nonzero(self.saturated & self.good))


@runtime_checkable
class FrameSource(Protocol):
    """What every source offers: its detector, how many frames (None for a stream), iteration, close."""

    geometry: Geometry

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def good_pixel_mask(counts: np.ndarray, static_good: np.ndarray, marker_values=()) -> np.ndarray:
    """The good-pixel mask of one frame: the static mask (geometry + detector pixel mask), less non-finite pixels
    and pixels at any of the detector's marker values (e.g. 2**bit_depth - 1 where the mask was applied).

    Args:
        counts: (ss, fs) counts of any numeric dtype.
        static_good: bool (ss, fs).
        marker_values: values that flag a pixel (compared exactly).
    Returns:
        bool (ss, fs).
    """
    good = static_good.copy()
    if np.issubdtype(counts.dtype, np.floating):
        good &= np.isfinite(counts)
    for value in marker_values:
        good &= counts != value
    return good
