"""CrystFEL stream files (indexamajig's output): the chunks (filename, event, indexed_by, peaks) and their
crystals (cell, reciprocal axes), as :mod:`cxlspeaks.peaks.indexing` checks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamCrystal:
    """One crystal of a chunk: cell (a, b, c in nm; alpha, beta, gamma in degrees) and the reciprocal axes."""

    cell: tuple[float, ...] | None = None
    astar: np.ndarray | None = None      # nm^-1, lab frame
    bstar: np.ndarray | None = None
    cstar: np.ndarray | None = None

    def basis_per_m(self) -> np.ndarray:
        """Columns a*, b*, c* in 1/m (the frames file's unit)."""
        return np.column_stack([self.astar, self.bstar, self.cstar]) * 1e9


@dataclass
class StreamChunk:
    filename: str = ""
    event: str = ""
    indexed_by: str = "none"
    num_peaks: int | None = None
    crystals: list[StreamCrystal] = field(default_factory=list)

    @property
    def frame(self) -> int | None:
        """The frame number of an event ``//N`` (None when the event is not of that form)."""
        m = re.fullmatch(r"//(\d+)", self.event.strip())
        return int(m.group(1)) if m else None


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_stream(text: str) -> list[StreamChunk]:
    """The chunks of a CrystFEL stream (0.10-0.12): image filename, event, indexed_by, num_peaks and, per crystal
    (``--- Begin crystal`` ... ``--- End crystal``), "Cell parameters a b c nm, al be ga deg" and the
    "astar = x y z nm^-1" lines (bstar, cstar alike). Reflection and peak tables are skipped."""
    chunks: list[StreamChunk] = []
    chunk: StreamChunk | None = None
    crystal: StreamCrystal | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("----- Begin chunk"):
            chunk = StreamChunk()
            continue
        if s.startswith("----- End chunk"):
            if chunk is not None:
                chunks.append(chunk)
            chunk, crystal = None, None
            continue
        if chunk is None:
            continue
        if s.startswith("--- Begin crystal"):
            crystal = StreamCrystal()
            continue
        if s.startswith("--- End crystal"):
            if crystal is not None:
                chunk.crystals.append(crystal)
            crystal = None
            continue
        if crystal is None:
            if s.startswith("Image filename:"):
                chunk.filename = s.split(":", 1)[1].strip()
            elif s.startswith("Event:"):
                chunk.event = s.split(":", 1)[1].strip()
            elif s.startswith("indexed_by"):
                chunk.indexed_by = s.split("=", 1)[1].strip()
            elif s.startswith("num_peaks"):
                chunk.num_peaks = int(float(s.split("=", 1)[1]))
            continue
        if s.startswith("Cell parameters"):
            numbers = [float(v) for v in re.findall(_FLOAT, s[len("Cell parameters"):])]
            if len(numbers) >= 6:
                crystal.cell = tuple(numbers[:6])
        else:
            m = re.match(r"([abc]star)\s*=\s*(.*)", s)
            if m:
                values = [float(v) for v in re.findall(_FLOAT, m.group(2).replace("nm^-1", ""))]
                if len(values) >= 3:
                    setattr(crystal, m.group(1), np.array(values[:3], np.float64))
    return chunks
