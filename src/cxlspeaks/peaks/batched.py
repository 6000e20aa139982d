"""Hit scores and network peaks of a batch of frames, everything after decompression on one torch device.

:class:`BatchedPeakPipeline` gives, for a batch of frames, what :class:`~cxlspeaks.pipeline.FramePredictor`
``.predict`` (hit probability; photon energy and camera length for hits) and
:meth:`NetworkPeakFinder.find <cxlspeaks.peaks.network.NetworkPeakFinder.find>` give frame by frame, with

* decompression of DECTRIS bitshuffle-LZ4 chunks (tag 56500 ``bslz4``, the HDF5 filter's chunk format) on a pool
  of CPU threads (``dectris-compression``, as :mod:`cxlspeaks.sources.messages`), straight into pinned host memory
  when the device is CUDA, copied with ``non_blocking`` on a side stream;
* while batch n is computed, batch n + 1 is decoded and copied (:meth:`BatchedPeakPipeline.run`);
* the peak network in ``channels_last`` under ``torch.autocast`` in float16 or bfloat16 (the log1p of the counts
  and the probabilities stay float32) or in float32; optionally ``torch.compile``;
* local maxima, centroids, photons, SNR and merging of close peaks as tensor operations
  (:mod:`cxlspeaks.peaks.batched_ops`), one device-to-host copy of the batch's peaks;
* the hit model's inputs binned on the device (sum over bin_factor^2 pixels, masked pixels excluded: exact for
  integer counts below 2^24, as :func:`~cxlspeaks.features.binned_frames`) and named by
  :meth:`FramePredictor.channels <cxlspeaks.pipeline.FramePredictor.channels>`.

Numbers: on the CPU in float32 the peaks are those of ``find`` (measured on synthetic Eiger 4M frames: positions
within 2e-12 px, photons within 1e-15 relative; the refinement runs in float64 there); on CUDA the refinement runs
in float32 (~1e-5 px). Autocast changes the probabilities by up to 7e-4 (float16) and 3.4e-3 (bfloat16) (CPU
autocast, trained network, a 512 x 512 px synthetic crop), which moves only a peak whose score lies that close to
the threshold; ``benchmarks/peaks_gpu.py`` measures the count mismatch on the GPU.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from .batched_ops import cell_peaks, merge_close_peaks, refine_centroids
from .network import NetworkPeakFinder, valid_cells

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PEAK_COLUMNS = ("fs", "ss", "photons", "snr", "score")


@dataclass
class Chunks:
    """Compressed frames: one DECTRIS ``bslz4`` (or ``lz4``) chunk per frame, each of ``shape`` (ss, fs) and
    numpy ``dtype`` (uint16, uint32, int32...), as a Stream V2 image message carries them (tag 56500)."""

    payloads: Sequence[bytes]
    dtype: np.dtype | str
    shape: tuple[int, int]
    algorithm: str = "bslz4"

    def __len__(self) -> int:
        return len(self.payloads)

    def __getitem__(self, index: slice) -> "Chunks":
        return Chunks(self.payloads[index], self.dtype, self.shape, self.algorithm)


@dataclass
class BatchResult:
    """One batch: ``scores`` (FramePredictor.predict's columns, or None without a predictor) and ``peaks``: per
    frame a table of :data:`PEAK_COLUMNS` (``find``'s), or None for a frame that is no hit."""

    scores: pd.DataFrame | None
    peaks: list[pd.DataFrame | None]


def decode_chunk(payload: bytes, algorithm: str, dtype: np.dtype, shape: tuple[int, int], out: np.ndarray,
                 index: int = 0) -> None:
    """Decompress one chunk into ``out`` ((ss, fs) of ``dtype``); ValueError naming chunk ``index`` when it is
    corrupt or of another size."""
    from dectris.compression import decompress

    try:
        data = decompress(payload, algorithm, elem_size=dtype.itemsize if algorithm == "bslz4" else 0)
    except Exception as exc:    # the C extension raises RuntimeError/ValueError on a corrupt payload
        raise ValueError(f"chunk {index}: cannot decompress {algorithm} data ({exc})") from None
    if len(data) != out.nbytes:
        raise ValueError(f"chunk {index}: decompresses to {len(data)} bytes, a {shape} {dtype} frame has "
                         f"{out.nbytes}")
    out[...] = np.frombuffer(data, dtype=dtype).reshape(shape)


class BatchedPeakPipeline:
    """Hit scores and network peaks of frame batches on ``device`` (see the module docstring).

    Args:
        peak_checkpoint: the peak network's checkpoint (path or loaded dict, as :class:`NetworkPeakFinder`).
        predictor: a :class:`~cxlspeaks.pipeline.FramePredictor` (hit, photon-energy and camera-length models);
            None: no scores, peaks of every frame.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: the peak network's arithmetic: ``float32`` (default), ``float16`` or ``bfloat16`` (autocast).
        batch_size: frames per batch when :meth:`run` splits an array or :class:`Chunks`.
        threshold: peak probability threshold (default the checkpoint's).
        compile: ``torch.compile`` the peak network (off by default; first batches of each shape compile).
        decode_threads: CPU threads decompressing chunks.
        hits_only: with a predictor, find peaks in hits only (as ``cxlspeaks run``); False: in every frame.
    Raises:
        CheckpointError: an unusable peak checkpoint; ValueError: unknown dtype, batch_size < 1.
    """

    def __init__(self, peak_checkpoint: dict | str | Path, predictor=None, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, batch_size: int = 8, threshold: float | None = None,
                 compile: bool = False, decode_threads: int = 4, hits_only: bool = True):
        dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype}: the peak network runs in float32, float16 or bfloat16")
        if batch_size < 1 or decode_threads < 1:
            raise ValueError(f"batch_size ({batch_size}) and decode_threads ({decode_threads}) must be >= 1")
        self.finder = NetworkPeakFinder(peak_checkpoint, threshold=threshold)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.dtype, self.batch_size, self.hits_only = dtype, int(batch_size), bool(hits_only)
        self.threshold = self.finder.threshold
        self.refine_dtype = torch.float32 if self.cuda else torch.float64
        model = copy.deepcopy(self.finder.model).to(self.device, memory_format=torch.channels_last).eval()
        self.model = torch.compile(model) if compile else model
        self.predictor = predictor
        self.models = {}
        if predictor is not None:
            self.models = {a: copy.deepcopy(m).to(self.device).eval() for a, m in predictor.models.items()}
        self._checked: set = set()
        self.warnings: list[str] = []
        self._decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="bslz4")
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="stage")
        self._copy_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def close(self) -> None:
        """Stop the decoding threads."""
        self._decoder.shutdown()
        self._stager.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ host -> device
    def decode(self, chunks: Chunks, out: np.ndarray | None = None) -> np.ndarray:
        """The frames of ``chunks`` as (B, ss, fs) of their dtype, decompressed on the decoding threads (into
        ``out`` when given). ValueError for a corrupt chunk or one of another size."""
        dtype, shape = np.dtype(chunks.dtype), tuple(int(n) for n in chunks.shape)
        if out is None:
            out = np.empty((len(chunks), *shape), dtype)
        jobs = [self._decoder.submit(decode_chunk, p, chunks.algorithm, dtype, shape, out[k], k)
                for k, p in enumerate(chunks.payloads)]
        for job in jobs:
            job.result()
        return out

    def stage(self, batch: np.ndarray | Chunks) -> tuple[torch.Tensor, object]:
        """(frames on the device, copy event or None): decoded (chunks) into pinned host memory on CUDA, copied
        without blocking on a side stream. The tensor holds the raw integers (or floats) of the frames."""
        if isinstance(batch, Chunks):
            dtype = np.dtype(batch.dtype)
            host = self._host_buffer((len(batch), *batch.shape), dtype)
            self.decode(batch, _numpy_view(host, dtype))
        else:
            array = np.asarray(batch)
            if array.ndim != 3:
                raise ValueError(f"frames of shape {array.shape}: a batch is (B, ss, fs)")
            host = self._host_buffer(array.shape, array.dtype) if self.cuda else None
            if host is None:
                return _as_tensor(np.ascontiguousarray(array)), None
            _numpy_view(host, array.dtype)[...] = array
        if not self.cuda:
            return host, None
        with torch.cuda.stream(self._copy_stream):
            on_device = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        return on_device, event

    def _wait(self, raw: torch.Tensor, event) -> None:
        """Make the compute stream wait for the side stream's copy of ``raw`` (CUDA; nothing elsewhere)."""
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            raw.record_stream(stream)

    def _host_buffer(self, shape, dtype: np.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=_torch_storage_dtype(np.dtype(dtype)), pin_memory=self.cuda)

    def _counts(self, raw: torch.Tensor, dtype: np.dtype | None) -> torch.Tensor:
        """float32 photons of raw frames on the device (uint16/uint32 were carried as int16/int32 bits)."""
        x = raw.to(self.device).float()
        if dtype is not None and np.dtype(dtype).kind == "u" and np.dtype(dtype).itemsize in (2, 4):
            x = torch.where(x < 0, x + float(1 << (8 * np.dtype(dtype).itemsize)), x)
        return x

    def _mask(self, good, n: int, shape, name: str) -> torch.Tensor:
        mask = torch.tensor(np.asarray(good, bool), device=self.device)
        if mask.shape not in (tuple(shape), (n, *shape)):
            raise ValueError(f"{name} of shape {tuple(mask.shape)}, frames (B, ss, fs) = {(n, *shape)}")
        return mask.expand(n, *shape)

    # ------------------------------------------------------------------ one batch
    def process(self, batch: np.ndarray | Chunks, good: np.ndarray, geometry=None,
                centroid_good: np.ndarray | None = None) -> BatchResult:
        """Scores and peaks of one batch.

        Args:
            batch: (B, ss, fs) counts (numpy, any integer or float dtype) or :class:`Chunks`.
            good: bool (ss, fs) or (B, ss, fs): good pixels (the network's mask; masked pixels are never read).
            geometry: the frames' detector, for models reading each bin's radius.
            centroid_good: bool (ss, fs) or (B, ss, fs): the pixels centroids, photons and backgrounds may use
                (default ``good``; e.g. good and not saturated).
        Returns:
            :class:`BatchResult`. Raises ValueError for masks of another shape, CheckpointError for NaN scores.
        """
        raw, event = self.stage(batch)
        return self._process(raw, np.dtype(batch.dtype), event, good, geometry, centroid_good)

    def _process(self, raw, dtype, event, good, geometry, centroid_good) -> BatchResult:
        self._wait(raw, event)
        counts = self._counts(raw, dtype)
        n, shape = counts.shape[0], tuple(counts.shape[1:])
        mask = self._mask(good, n, shape, "good-pixel mask")
        usable = mask if centroid_good is None else self._mask(centroid_good, n, shape, "centroid_good mask")
        scores, rows = None, torch.arange(n, device=self.device)
        if self.predictor is not None:
            scores = self.scores(counts, mask, geometry)
            if self.hits_only:
                rows = torch.from_numpy(np.flatnonzero(scores["is_hit"].to_numpy())).to(self.device)
        if len(rows) == n:
            tables = self.find_tensor(counts, mask, usable)
        else:
            tables = self.find_tensor(counts[rows], _take(mask, rows), _take(usable, rows)) if len(rows) else []
        peaks: list[pd.DataFrame | None] = [None] * n
        for k, table in zip(rows.tolist(), tables):
            peaks[k] = table
        return BatchResult(scores, peaks)

    def find(self, counts: np.ndarray, good: np.ndarray, centroid_good: np.ndarray | None = None,
             threshold: float | None = None) -> list[pd.DataFrame]:
        """``NetworkPeakFinder.find`` of every frame of (B, ss, fs) ``counts`` (any dtype), ``good`` and
        ``centroid_good`` bool (ss, fs) or (B, ss, fs): one table of :data:`PEAK_COLUMNS` per frame."""
        counts = np.asarray(counts)
        raw, event = self.stage(counts)
        self._wait(raw, event)
        x = self._counts(raw, counts.dtype)
        n, shape = x.shape[0], tuple(x.shape[1:])
        mask = self._mask(good, n, shape, "good-pixel mask")
        usable = mask if centroid_good is None else self._mask(centroid_good, n, shape, "centroid_good mask")
        return self.find_tensor(x, mask, usable, threshold)

    def probabilities(self, counts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, ceil(ss/cell), ceil(fs/cell)) float32 cell probabilities of float32 counts and bool masks (B, ss,
        fs) on the device; 0 on cells without good pixels (``NetworkPeakFinder.probabilities``)."""
        cell = self.finder.config.cell
        pad = (0, -counts.shape[2] % cell, 0, -counts.shape[1] % cell)
        x = F.pad(counts, pad)[:, None].contiguous(memory_format=torch.channels_last)
        m = F.pad(mask.float(), pad)[:, None].contiguous(memory_format=torch.channels_last)
        step = len(x) if self.cuda else 1    # CPU: one frame per call keeps the activations in cache
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            logits = torch.cat([self.model(x[s:s + step], m[s:s + step]) for s in range(0, len(x), step)])
        with torch.inference_mode():
            return (torch.sigmoid(logits.float()) * valid_cells(m, cell))[:, 0].contiguous()

    def find_tensor(self, counts: torch.Tensor, mask: torch.Tensor, usable: torch.Tensor,
                    threshold: float | None = None) -> list[pd.DataFrame]:
        """:meth:`find` of float32 counts and bool masks (B, ss, fs) already on the device."""
        threshold = self.threshold if threshold is None else threshold
        cell = self.finder.config.cell
        p = self.probabilities(counts, mask)
        with torch.inference_mode():
            frame, ci, cj, score = cell_peaks(p, threshold, self.finder.config.max_peaks)
            centre = (cell - 1) / 2
            fs, ss, photons, snr = refine_centroids(counts, usable, frame, ci.to(self.refine_dtype) * cell + centre,
                                                    cj.to(self.refine_dtype) * cell + centre, self.refine_dtype)
            keep = merge_close_peaks(frame, fs.double(), ss.double(), score, counts.shape[0])
            table = torch.stack([fs.double(), ss.double(), photons.double(), snr.double(), score.double()], 1)
            table, frame = table[keep].cpu().numpy(), frame[keep].cpu().numpy()
        bounds = np.searchsorted(frame, np.arange(1, counts.shape[0]))
        return [pd.DataFrame(part, columns=list(PEAK_COLUMNS)) for part in np.split(table, bounds)]

    # ------------------------------------------------------------------ hit, photon energy, camera length
    def scores(self, counts: torch.Tensor, mask: torch.Tensor, geometry=None) -> pd.DataFrame:
        """``FramePredictor.predict`` of (B, ss, fs) float32 counts and bool masks on the device: binned on the
        device, channels by ``FramePredictor.channels``, the models on the device in float32."""
        p = self.predictor
        f = p.bin_factor
        binned = _bin_sum(torch.where(mask, counts, torch.zeros((), device=counts.device)), f)
        fraction = _bin_sum(mask.float(), f) / f ** 2
        shape = tuple(binned.shape[1:])
        if shape not in self._checked:
            self.warnings += p.check_shape(shape, "frames")
            self._checked.add(shape)
        channels = p.channels(binned.cpu().numpy(), fraction.cpu().numpy(), geometry=geometry)

        def run(attribute: str) -> torch.Tensor:
            model = self.models[attribute]
            x = torch.stack([channels[name] for name in model.inputs], dim=1).to(self.device)
            with torch.inference_mode():
                return model(x).float()

        p_hit = p._finite("hit", torch.sigmoid(run("hit")[:, 0]).cpu().numpy())
        out = pd.DataFrame({"hit_probability": p_hit, "is_hit": p_hit >= p.threshold})
        for attribute, column in (("photon_energy", "photon_energy_ev"), ("clen", "clen_m")):
            probabilities = p._finite(attribute, torch.softmax(run(attribute), dim=1).cpu().numpy())
            values = np.asarray(p.checkpoints[attribute]["class_values"], dtype=np.float64)
            out[column] = np.where(out["is_hit"], values[probabilities.argmax(axis=1)], np.nan)
            out[f"{attribute}_probability"] = np.where(out["is_hit"], probabilities.max(axis=1), np.nan)
        return out

    # ------------------------------------------------------------------ a stream of batches
    def run(self, frames: np.ndarray | Chunks | Iterable[np.ndarray | Chunks], good: np.ndarray, geometry=None,
            centroid_good: np.ndarray | None = None) -> Iterator[BatchResult]:
        """:meth:`process` of every batch, batch n + 1 decoded and copied to the device while batch n computes.

        ``frames``: an array (N, ss, fs) or :class:`Chunks` (split into ``batch_size`` batches), or an iterable of
        batches. Yields one :class:`BatchResult` per batch, in order."""
        if isinstance(frames, (np.ndarray, Chunks)):
            frames = [frames[s:s + self.batch_size] for s in range(0, len(frames), self.batch_size)]
        pending = None
        for batch in frames:
            dtype = np.dtype(batch.dtype)
            job = (self._stager.submit(self.stage, batch), dtype)
            if pending is not None:
                yield self._finish(pending, good, geometry, centroid_good)
            pending = job
        if pending is not None:
            yield self._finish(pending, good, geometry, centroid_good)

    def _finish(self, pending, good, geometry, centroid_good) -> BatchResult:
        job, dtype = pending
        raw, event = job.result()
        return self._process(raw, dtype, event, good, geometry, centroid_good)


def _torch_storage_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype carrying the bits of a numpy frame dtype (unsigned 16/32-bit as signed: same bits)."""
    kinds = {("u", 1): torch.uint8, ("u", 2): torch.int16, ("u", 4): torch.int32, ("i", 2): torch.int16,
             ("i", 4): torch.int32, ("i", 8): torch.int64, ("f", 4): torch.float32, ("f", 8): torch.float64}
    key = (dtype.kind, dtype.itemsize)
    if key not in kinds:
        raise ValueError(f"frames of dtype {dtype}: need unsigned or signed integers or floats")
    return kinds[key]


def _numpy_view(host: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return host.numpy().view(np.dtype(dtype))


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.view(np.dtype(str(_torch_storage_dtype(array.dtype)).replace("torch.", ""))))


def _take(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """mask[rows] of a (B, ss, fs) mask, still a view when the mask is one (ss, fs) mask expanded."""
    return mask[:1].expand(len(rows), *mask.shape[1:]) if mask.stride(0) == 0 else mask[rows]


def _bin_sum(images: torch.Tensor, factor: int) -> torch.Tensor:
    """:func:`cxlspeaks.features.bin_sum` of (B, ss, fs) tensors: sums over factor x factor bins, zero-padded."""
    n, ss, fs = images.shape
    padded = F.pad(images, (0, -fs % factor, 0, -ss % factor))
    return padded.reshape(n, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor).sum((2, 4))
