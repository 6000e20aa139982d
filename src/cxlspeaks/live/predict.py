"""The models of :class:`~cxlspeaks.pipeline.FramePredictor` on one worker's frames, without its per-call overhead.

:class:`LivePredictor` gives the numbers ``FramePredictor.predict`` gives (hit probability to float32 rounding,
the same photon-energy and camera-length classes), as plain dicts instead of a DataFrame, and

* runs the photon-energy and camera-length models on the hits only (``predict`` reports them for hits only);
* checks a frame shape against the checkpoints once, not per frame;
* for the ``hit_fcn`` model, runs its convolutions channels-last (NHWC: the same numbers to float32 rounding,
  ~25 % less CPU time on one thread than NCHW here) and takes the median of the frame's good bins from a histogram of the binned photon
  counts (``np.partition`` for other values; torch's ``nanmedian`` over the masked bins is the slowest step of that
  model on one thread): the same value, the lower of the two middle values, then the model's own layers.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def _lower_median(values: np.ndarray) -> float:
    """torch.nanmedian's value: the lower of the two middle values (0 for no value, as nan_to_num(0))."""
    if values.size == 0:
        return 0.0
    k = (values.size - 1) // 2
    return float(np.partition(values, k)[k])


def _level(counts: np.ndarray, good: np.ndarray, anscombe) -> float:
    """The lower median of anscombe(counts) over the good bins. anscombe is non-decreasing, so that is anscombe of
    the counts' lower median, which for photon counts (small integers) a histogram gives without sorting."""
    import torch

    values = counts[good]
    if values.size == 0:
        return 0.0
    if values.min() >= 0 and values.max() < 1 << 16 and np.array_equal(values, np.floor(values)):
        k = (values.size - 1) // 2
        x = np.searchsorted(np.cumsum(np.bincount(values.astype(np.int64))), k, side="right")
        return float(anscombe(torch.tensor([x], dtype=torch.float32))[0])
    return _lower_median(anscombe(torch.from_numpy(values)).numpy())


def hit_fcn_logits(model, x):
    """``HitFCN.forward(x)`` with the median taken in numpy (see the module docstring)."""
    import torch

    from ..models import anscombe

    counts, mask = x[:, :1], x[:, 1:2]
    good = mask > 0
    z = anscombe(counts)
    cn, gn = counts.numpy(), good.numpy()
    level = torch.tensor([_level(cn[i, 0], gn[i, 0], anscombe) for i in range(len(cn))],
                         dtype=z.dtype)[:, None, None, None]
    z = torch.where(good, z - level, torch.zeros_like(z))
    f = model.features(torch.cat([z, mask], dim=1).contiguous(memory_format=torch.channels_last))
    pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
    return model.head(pooled)


class LivePredictor:
    """``predict(counts (N, H, W) float32, mask (H, W), geometry)`` -> one dict per frame with hit_probability,
    is_hit, photon_energy_ev, photon_energy_probability, clen_m, clen_probability (NaN for non-hits)."""

    def __init__(self, predictor):
        from ..models import HitFCN

        self.predictor = predictor
        self.bin_factor = predictor.bin_factor
        self._checked: set = set()
        hit = predictor.models["hit"]
        self._fast_hit = type(hit) is HitFCN and tuple(hit.inputs) == ("counts", "mask")
        if self._fast_hit:   # channels-last convolutions: ~25 % less CPU time for HitFCN on one thread
            import torch

            hit.to(memory_format=torch.channels_last)

    def predict(self, counts: np.ndarray, mask: np.ndarray, geometry=None) -> list[dict]:
        import torch

        p = self.predictor
        counts = np.ascontiguousarray(counts, dtype=np.float32)
        if counts.shape[1:] not in self._checked:
            p.check_shape(counts.shape[1:], "frames")
            self._checked.add(counts.shape[1:])
        channels = p.channels(counts, mask, geometry=geometry)

        def inputs(model, rows=None):
            stacked = torch.stack([channels[name] for name in model.inputs], dim=1)
            return stacked if rows is None else stacked[rows]

        with torch.no_grad():
            hit = p.models["hit"]
            logits = hit_fcn_logits(hit, inputs(hit)) if self._fast_hit else hit(inputs(hit))
            p_hit = p._finite("hit", torch.sigmoid(logits[:, 0]).numpy())
            is_hit = p_hit >= p.threshold
            out = [{"hit_probability": float(v), "is_hit": bool(h), "photon_energy_ev": NAN,
                    "photon_energy_probability": NAN, "clen_m": NAN, "clen_probability": NAN}
                   for v, h in zip(p_hit, is_hit)]
            hits = np.flatnonzero(is_hit)
            if len(hits):
                rows = torch.from_numpy(hits)
                for attribute, column in (("photon_energy", "photon_energy_ev"), ("clen", "clen_m")):
                    model = p.models[attribute]
                    probabilities = p._finite(attribute, torch.softmax(model(inputs(model, rows)), dim=1).numpy())
                    values = np.asarray(p.checkpoints[attribute]["class_values"], dtype=np.float64)
                    for k, i in enumerate(hits):
                        out[i][column] = float(values[probabilities[k].argmax()])
                        out[i][f"{attribute}_probability"] = float(probabilities[k].max())
        return out
