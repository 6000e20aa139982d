"""Frames from HDF5 arrays: the reading every HDF5 source shares (stack, CXI, NXmx).

A source is one or more *segments*, each an HDF5 dataset holding consecutive frames of the source laid out as the
geometry's ``dim`` lines say: ``(N, [channel,] block...)`` where the block is (ss, fs) for a slab or
(module..., ss, fs) for a multi-module array (:mod:`cxlspeaks.geometry.masks`). Frame ``i`` of the source is frame
``i - first`` of the segment that holds it.

Per frame: the raw block is placed in the slab, the good-pixel mask combines the static mask (geometry, mask files,
static mask arrays in the data file, the detector's pixel mask) with per-frame mask arrays, value flags, marker
values and non-finite pixels; saturated = raw >= saturation value. Per-frame geometry values (``clen = /path``)
are read from the segment's file (else the source's metadata file): a scalar for every frame, or one value per
frame of that file. Counts are float32; integer markers are compared on the raw integers (2**32 - 1 is not
exactly representable in float32).

Errors: :class:`~cxlspeaks.io.DataFileError`, one line naming the file and the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..geometry import Geometry, GeometryError, MaskSpec, Panel, ValueRef
from ..geometry.masks import check_block, file_masks_good, flags_good, mask_arrays_good, n_frame_dims, to_slab
from ..io import DataFileError
from .base import Frame

#: A frame is refused when more than this fraction of its good pixels is NaN or infinite.
MAX_NONFINITE_FRACTION = 0.5


@dataclass
class Segment:
    """Frames ``first .. first + n - 1`` of a source: dataset ``dataset`` of open file ``h5`` at ``path``."""

    path: Path
    h5: h5py.File
    dataset: h5py.Dataset
    first: int
    n: int
    image_nr_low: int | None = None


class HDF5FrameSource:
    """Frames from HDF5 segments (see the module docstring); subclasses open the files and build segments.

    Attributes:
        geometry: the detector; unresolved (NaN clen) when it takes values per frame — each Frame then carries
            its resolved geometry in ``Frame.geometry``.
        path: the file opened (the master or stack file).
    """

    def __init__(self, path: str | Path, geometry: Geometry, segments: list[Segment], *, channel: int | None = None,
                 metadata: dict | None = None, marker_values=(), saturation_value: float | None = None,
                 static_good: np.ndarray | None = None, meta_h5: h5py.File | None = None,
                 files: list[h5py.File] | None = None):
        self.path = Path(path)
        self._files = files if files is not None else []
        try:
            self._setup(geometry, segments, channel, metadata, marker_values, saturation_value, static_good,
                        meta_h5)
        except BaseException:
            self.close()
            raise

    def _setup(self, geometry, segments, channel, metadata, marker_values, saturation_value, static_good, meta_h5):
        self.segments = segments
        self.channel = channel
        self.metadata = dict(metadata or {})
        self.marker_values = tuple(marker_values)
        self.saturation_value = saturation_value
        self.meta_h5 = meta_h5
        try:
            self.n_frame_dims = n_frame_dims(geometry)
        except GeometryError as exc:
            raise DataFileError(f"{self.path}: {exc}") from None
        if self.n_frame_dims > 1:
            raise DataFileError(f"{self.path}: geometry has {self.n_frame_dims} frame placeholder dims (%); "
                                "one is supported")
        lead = self.n_frame_dims + (channel is not None)
        for seg in segments:
            shape = seg.dataset.shape
            try:
                check_block(geometry, shape[lead:], f"{seg.dataset.name}")
            except GeometryError as exc:
                raise DataFileError(f"{seg.path}: {exc}") from None
        self._per_frame_masks: list[tuple[Panel, MaskSpec]] = []
        good = geometry.mask.copy()
        try:
            good &= file_masks_good(geometry)
            good &= mask_arrays_good(geometry, self._static_mask_reader(segments[0] if segments else None))
        except GeometryError as exc:
            raise DataFileError(f"{self.path}: {exc}") from None
        if static_good is not None:
            good &= static_good
        good.flags.writeable = False
        self.static_good = good
        self._geometries: dict = {}
        self.geometry = geometry
        if not geometry.is_resolved and segments:
            values = {self._ref_key(r, segments[0], 0) for r in geometry.references}
            constant = all(self._ref_constant(r) for r in geometry.references)
            if constant and values:
                self.geometry = self._resolved(segments[0], 0)

    # ------------------------------------------------------------------ masks in the data file
    def _static_mask_reader(self, seg: Segment | None):
        def read(panel: Panel, spec: MaskSpec):
            if spec.file is not None or seg is None:
                return None
            if spec.data not in seg.h5:
                raise DataFileError(f"{seg.path}: has no mask dataset {spec.data} (mask{spec.index}_data of panel "
                                    f"{panel.name})")
            ds = seg.h5[spec.data]
            block_ndim = seg.dataset.ndim - self.n_frame_dims - (self.channel is not None)
            if ds.ndim == block_ndim + self.n_frame_dims and self.n_frame_dims:
                self._per_frame_masks.append((panel, spec))
                return None
            return ds[()]
        return read

    def _frame_masks_good(self, seg: Segment, j: int) -> np.ndarray | None:
        if not self._per_frame_masks:
            return None
        wanted = set(map(id, (s for _, s in self._per_frame_masks)))

        def read(panel: Panel, spec: MaskSpec):
            if id(spec) not in wanted:
                return None
            if spec.data not in seg.h5:
                raise DataFileError(f"{seg.path}: has no mask dataset {spec.data}")
            return seg.h5[spec.data][j]
        try:
            return mask_arrays_good(self.geometry, read)
        except GeometryError as exc:
            raise DataFileError(f"{seg.path}: frame {j}: {exc}") from None

    # ------------------------------------------------------------------ per-frame values
    def _ref_dataset(self, ref: ValueRef, seg: Segment) -> tuple[h5py.Dataset, bool]:
        if ref.path in seg.h5:
            return seg.h5[ref.path], True
        if self.meta_h5 is not None and ref.path in self.meta_h5:
            return self.meta_h5[ref.path], False
        raise DataFileError(f"{seg.path}: has no {ref.path} (the geometry's {ref.quantity} = {ref.text()})")

    def _ref_key(self, ref: ValueRef, seg: Segment, j: int) -> float:
        ds, in_segment = self._ref_dataset(ref, seg)
        n = seg.n if in_segment else len(self)
        index = j if in_segment else seg.first + j
        if ds.size == 1:
            value = ds[()].reshape(-1)[0] if ds.ndim else ds[()]
        elif ds.ndim == 1 and ds.shape[0] == n:
            value = ds[index]
        else:
            raise DataFileError(f"{seg.path}: {ref.path} has shape {ds.shape}; expected a scalar or one value per "
                                f"frame ({n})")
        if isinstance(value, bytes):
            value = value.decode()
        try:
            return ref.to_si(float(value))
        except (TypeError, ValueError, ZeroDivisionError):
            raise DataFileError(f"{seg.path}: {ref.path} = {value!r} is not a usable {ref.quantity}") from None

    def _ref_constant(self, ref: ValueRef) -> bool:
        first = None
        for seg in self.segments:
            ds, _ = self._ref_dataset(ref, seg)
            values = np.unique(np.asarray(ds[()]).reshape(-1))
            if len(values) != 1 or (first is not None and values[0] != first):
                return False
            first = values[0]
        return True

    def _resolved(self, seg: Segment, j: int) -> Geometry:
        if self.geometry.is_resolved:
            return self.geometry
        values = {r: self._ref_key(r, seg, j) for r in self.geometry.references}
        key = tuple(sorted((r.path, r.quantity, v) for r, v in values.items()))
        if key not in self._geometries:
            try:
                self._geometries[key] = self.geometry.resolve(values)
            except GeometryError as exc:
                raise DataFileError(f"{seg.path}: frame {j}: {exc}") from None
        return self._geometries[key]

    # ------------------------------------------------------------------ frames
    def __len__(self) -> int:
        return sum(seg.n for seg in self.segments)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.read(i)

    def locate(self, i: int) -> tuple[Segment, int]:
        """The segment holding source frame ``i`` and the frame's index in it."""
        if not 0 <= i < len(self):
            raise DataFileError(f"{self.path}: holds {len(self)} frames, asked for frame {i}")
        for seg in self.segments:
            if i < seg.first + seg.n:
                return seg, i - seg.first
        raise AssertionError("segments do not cover the source")

    def event(self, i: int) -> str:
        """CrystFEL event id of source frame ``i`` (``//i``)."""
        return f"//{i}"

    def read(self, i: int) -> Frame:
        """Source frame ``i`` (0-based) as a :class:`Frame`."""
        seg, j = self.locate(int(i))
        index: tuple = (j,) if self.n_frame_dims else ()
        if self.channel is not None:
            index += (self.channel,)
        try:
            raw = np.asarray(seg.dataset[index] if index else seg.dataset[()])
        except (OSError, ValueError) as exc:
            raise DataFileError(f"{seg.path}: cannot read frame {j} (truncated, corrupt or a missing compression "
                                f"filter: {str(exc).splitlines()[0]})") from None
        geometry = self._resolved(seg, j)
        slab = to_slab(geometry, raw)
        good = self.static_good.copy()
        frame_masks = self._frame_masks_good(seg, j)
        if frame_masks is not None:
            good &= frame_masks
        if any(p.flags for p in geometry.panels):
            good &= flags_good(geometry, slab)
        n_marker = 0
        for value in self.marker_values:
            at_marker = slab == value
            n_marker += int(np.count_nonzero(at_marker & good))
            good &= ~at_marker
        counts = slab.astype(np.float32)
        saturated = np.zeros(slab.shape, dtype=bool)
        if self.saturation_value is not None:
            with np.errstate(invalid="ignore"):
                saturated = slab >= self.saturation_value
        nonfinite = ~np.isfinite(counts) & good
        n_nonfinite, n_good = int(np.count_nonzero(nonfinite)), int(np.count_nonzero(good))
        if n_nonfinite > MAX_NONFINITE_FRACTION * n_good:
            raise DataFileError(f"{seg.path}: frame {j}: {n_nonfinite} of {n_good} good pixels are NaN or infinite")
        good &= ~nonfinite
        metadata = dict(self.metadata)
        metadata.update(frame_index=int(i), file_frame=j, n_nonfinite=n_nonfinite, n_marker=n_marker)
        if seg.image_nr_low is not None:
            metadata["image_nr"] = seg.image_nr_low + j
        if not np.isnan(geometry.clen_m):
            metadata["clen_m"] = geometry.clen_m
        if geometry.photon_energy_ev is not None:
            metadata["photon_energy_ev"] = geometry.photon_energy_ev
        return Frame(event=self.event(int(i)), counts=counts, good=good, saturated=saturated,
                     source_file=str(seg.path), metadata=metadata, geometry=geometry)

    def close(self) -> None:
        for h5 in self._files:
            try:
                h5.close()
            except Exception:  # closing an already closed or failed file
                pass
        self._files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
