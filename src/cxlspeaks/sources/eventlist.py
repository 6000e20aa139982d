"""CrystFEL event lists (``.lst``): one line per file (every frame of it) or per event (``file //N``, frame N).

Relative paths are relative to the list's folder; blank lines and ``;``/``#`` comments are skipped. Each file is
opened with :func:`cxlspeaks.sources.open_source` (stack, CXI or NXmx master) with the list's geometry (the one
given, else the first file's), one file at a time. Events are ``"<path as written> //N"``; ``source_file`` is
the file the counts came from. Every listed frame is yielded once, in list order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..geometry import Geometry
from ..io import DataFileError
from .base import Frame

_EVENT_RE = re.compile(r"^(?P<file>\S.*?)(?:\s+//(?P<event>\S+))?$")


def read_event_list(path: str | Path) -> list[tuple[str, Path, int | None]]:
    """(path as written, resolved path, frame or None for every frame) per line of a ``.lst``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read event list ({exc.strerror})") from None
    entries = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = _EVENT_RE.match(line)
        event = m.group("event")
        frame = None
        if event is not None:
            if not event.isdigit():
                raise DataFileError(f"{path}: line {lineno}: event //{event} is not a frame number "
                                    "(multi-dimensional events are not supported)")
            frame = int(event)
        written = m.group("file").strip()
        file = Path(written) if Path(written).is_absolute() else path.parent / written
        entries.append((written, file, frame))
    if not entries:
        raise DataFileError(f"{path}: event list has no entries")
    return entries


class EventListSource:
    """The frames a ``.lst`` names: ``EventListSource(path, geometry=None, channel=None)``.

    ``len()`` opens each listed file once to count whole-file lines; a listed frame beyond its file is a one-line
    DataFileError naming the file, the frame and the list line.
    """

    def __init__(self, path: str | Path, geometry: Geometry | str | Path | None = None,
                 channel: int | str | None = None):
        from . import open_source

        self.path = Path(path)
        self.entries = read_event_list(self.path)
        self.channel = channel
        self._open = open_source
        first = open_source(self.entries[0][1], geometry=geometry, channel=channel)
        self.geometry = first.geometry if geometry is None else first.geometry
        self._geometry_arg = geometry if geometry is not None else first.geometry
        self._current: tuple[Path, object] | None = (self.entries[0][1], first)
        self._counts: dict[Path, int] = {}
        self._frames: list[tuple[int, int]] = []
        for k, (written, file, frame) in enumerate(self.entries):
            n = self._count(file)
            if frame is None:
                self._frames += [(k, j) for j in range(n)]
            elif frame >= n:
                raise DataFileError(f"{self.path}: {written} //{frame}: {file} holds {n} frames")
            else:
                self._frames.append((k, frame))

    def _source(self, file: Path):
        if self._current is None or self._current[0] != file:
            if self._current is not None:
                self._current[1].close()
                self._current = None
            self._current = (file, self._open(file, geometry=self._geometry_arg, channel=self.channel))
        return self._current[1]

    def _count(self, file: Path) -> int:
        if file not in self._counts:
            self._counts[file] = len(self._source(file))
        return self._counts[file]

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.read(i)

    def read(self, i: int) -> Frame:
        """The i-th listed frame, its event ``"<file> //N"``."""
        k, j = self._frames[i]
        written, file, _ = self.entries[k]
        frame = self._source(file).read(j)
        frame.event = f"{written} //{j}"
        frame.metadata["list_index"] = i
        return frame

    def close(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None

    def __enter__(self) -> "EventListSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
