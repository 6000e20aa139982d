"""Neural networks by name: the source paper's architectures and cxlspeaks' own.

Every model takes a batch of binned frames, (B, C, H, W) float32, whose channels are named by its ``inputs``:
``counts`` (photon counts summed over bins, see :mod:`cxlspeaks.features`), ``signal`` (the binned *expected*
Bragg signal: only a simulation knows it, so a model that reads it is an oracle, not a detector) and ``mask``
(fraction of good pixels in each bin). It returns logits (B, n_outputs). Models are built by
``build_model(name, input_shape, n_outputs)``; ``MODELS`` lists them. A class with ``any_shape = True`` runs on
binned frames of any size (the pipeline lets it score frames of another shape than it was trained on); the others
need exactly their ``input_shape``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        cls.registry_name = name
        MODELS[name] = cls
        return cls

    return decorator


def model_class(name: str) -> type[nn.Module]:
    """The registered model class of ``name``."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, input_shape: tuple[int, int, int], n_outputs: int) -> nn.Module:
    """A model from the registry for inputs of shape (C, H, W) and ``n_outputs`` logits."""
    return model_class(name)(input_shape, n_outputs)


def anscombe(x: torch.Tensor) -> torch.Tensor:
    """2 sqrt(n + 3/8): Poisson counts to approximately unit-variance values."""
    return 2.0 * torch.sqrt(x.clamp_min(0) + 0.375)


def _flat_size(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).numel())


# ---------------------------------------------------------------------- cxlspeaks' own
@register("hit_fcn")
class HitFCN(nn.Module):
    """The pipeline's hit finder: fully convolutional, photon-count-aware, mask-aware, any frame size.

    Input (counts, mask): counts go through the Anscombe transform, minus the median of the frame's good bins (so
    the water level does not matter), and are zeroed in masked bins; the mask is a second channel. Four 3x3
    conv + GroupNorm + SiLU blocks, all with stride 2, widen 16 -> 64 channels; global max *and* mean pooling
    feed one linear layer, so a single bright Bragg spot anywhere in the frame can decide, and no dense layer
    sees pixels.
    """

    inputs = ("counts", "mask")
    any_shape = True  # fully convolutional, global pooling: runs on any binned frame size

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 1, width: int = 16):
        super().__init__()
        if input_shape[0] != 2:
            raise ValueError(f"hit_fcn takes 2 input channels (counts, mask), got {input_shape[0]}")
        chans = [2, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1),
                       nn.GroupNorm(4, chans[i + 1]), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * chans[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts, mask = x[:, :1], x[:, 1:2]
        good = mask > 0
        z = anscombe(counts)
        flat = torch.where(good, z, torch.nan).flatten(1)
        level = torch.nanmedian(flat, dim=1).values.nan_to_num(0.0)[:, None, None, None]
        z = torch.where(good, z - level, torch.zeros_like(z))
        f = self.features(torch.cat([z, mask], dim=1))
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


@register("water_ring_linear")
class WaterRingLinear(nn.Module):
    """Photon energy or camera length from the water scattering, immune to the Bragg spots.

    The water ring's radius (q = 2.05 1/A at 2 theta = 2 asin(q lambda / 4 pi), radius clen tan 2 theta) and the
    water level per pixel (solid angle ~ 1/clen^2) encode both beam parameters; Bragg spots fall anywhere and only
    confuse a linear model. So each bin is capped at 4 x (the frame's median bin + 1) counts (a spot adds at most
    that), the capped counts are averaged over ``pool`` x ``pool`` blocks per good pixel, log1p-transformed,
    standardised (running mean and variance, no learned scale) and one linear layer classifies the coarse map.
    """

    inputs = ("counts", "mask")

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 3, pool: int = 16):
        super().__init__()
        self.pool = pool
        with torch.no_grad():
            n_features = self._map(torch.zeros(1, *input_shape)).shape[1]
        self.standardise = nn.BatchNorm1d(n_features, affine=False)
        self.linear = nn.Linear(n_features, n_outputs)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        counts, mask = x[:, :1], x[:, 1:2]
        good = mask > 0
        level = torch.nanmedian(torch.where(good, counts, torch.nan).flatten(1), dim=1).values.nan_to_num(0.0)
        capped = torch.minimum(counts, 4 * (level[:, None, None, None] + 1)) * good
        pooled = F.avg_pool2d(capped, self.pool, ceil_mode=True) / F.avg_pool2d(mask, self.pool,
                                                                                 ceil_mode=True).clamp_min(1e-3)
        return torch.log1p(pooled).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardise(self._map(x)))


@register("water_profile_linear")
class WaterProfileLinear(nn.Module):
    """Photon energy or camera length from the radial profile of the water scattering, placed by the geometry.

    Input (counts, mask, radius): binned counts, the fraction of good pixels per bin and each bin's mean distance
    from the beam axis in the detector plane, ``radius`` in metres (from the geometry's beam centre and pixel
    positions, :func:`cxlspeaks.features.binned_radius_m`; negative where a bin has no good pixel). The water ring
    of liquid water peaks at q = 2.05 A^-1, i.e. at r = L tan(2 asin(q lambda / 4 pi)) from the beam, and the
    level per pixel falls with the pixel's solid angle (~ A cos^3(2theta) / L^2): the profile counts(r) holds both
    beam parameters (PHYSICS.md, water). Each bin is capped at 4 x (the frame's median bin + 1) counts, so Bragg
    spots cannot dominate (as in ``water_ring_linear``); capped counts and good-pixel fractions are summed into
    ``n_radii`` rings of equal width up to ``r_max_m`` (default 0.16 m, beyond the corner of an Eiger 4M at its
    beam centre), giving the mean capped counts per good pixel of each ring; log1p, standardised (running mean
    and variance), one linear layer.

    Because the features are a function of the radius only, a frame with its beam centre elsewhere, or another
    detector layout of the same pixel size (EIGER2 4M), gives the same features where its rings are covered;
    rings a frame does not cover take the training mean (standardised value 0), so they do not vote.
    """

    inputs = ("counts", "mask", "radius")
    any_shape = True  # features are a function of the radius only: any frame size and layout

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 3, n_radii: int = 128,
                 r_max_m: float = 0.16):
        super().__init__()
        if input_shape[0] != 3:
            raise ValueError(f"water_profile_linear takes 3 input channels (counts, mask, radius), "
                             f"got {input_shape[0]}")
        self.n_radii, self.r_max_m = n_radii, r_max_m
        self.standardise = nn.BatchNorm1d(n_radii, affine=False)
        self.linear = nn.Linear(n_radii, n_outputs)

    def profile(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log1p of the mean capped counts per good pixel in each ring (B, n_radii), and which rings a frame
        covers (B, n_radii) bool."""
        counts, mask, radius = x[:, 0], x[:, 1], x[:, 2]
        good = (mask > 0) & (radius >= 0) & (radius < self.r_max_m)
        level = torch.nanmedian(torch.where(good, counts, torch.nan).flatten(1), dim=1).values.nan_to_num(0.0)
        capped = torch.minimum(counts, 4 * (level[:, None, None] + 1)) * good
        ring = (radius.clamp(0, self.r_max_m * (1 - 1e-6)) / self.r_max_m * self.n_radii).long().flatten(1)
        weight = (mask * good).flatten(1)
        total = torch.zeros(x.shape[0], self.n_radii, dtype=x.dtype, device=x.device)
        pixels = torch.zeros_like(total)
        total.scatter_add_(1, ring, capped.flatten(1))
        pixels.scatter_add_(1, ring, weight)
        covered = pixels > 0.5  # at least half a good pixel's worth of bins in the ring
        return torch.log1p(total / pixels.clamp_min(1e-3)), covered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, covered = self.profile(x)
        # A ring the frame does not cover takes the running mean: standardised to 0, it does not vote.
        features = torch.where(covered, features, self.standardise.running_mean.to(features.dtype))
        return self.linear(self.standardise(features))


# ---------------------------------------------------------------------- the source paper's architectures
# Everett & Kurth (2024), "Crystallography Peak Detection at CXLS", as committed in adamkurth/cxls_hitfinder
# (cnn/src/pkg/models.py at ebf427e, the state of the paper). They read the full 2163 x 2069 frame as raw float
# counts; here they read the binned counts (bin before any dense layer), otherwise layer for layer.
class _PaperModel(nn.Module):
    inputs = ("counts",)


@register("paper_hit_cnn")
class PaperHitCNN(_PaperModel):
    """The paper's hit finder ("Binary_Classification"): Conv 1->8 (10x10, padding 1) -> GroupNorm(4) -> ReLU ->
    2x2 max-pool -> Conv 8->16 (3x3, padding 1) -> GroupNorm(4) -> ReLU -> flatten -> Linear -> 1 logit."""

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 8, kernel_size=10, stride=1, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(8, 16, kernel_size=3, stride=1, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Flatten())
        self.classifier = nn.Linear(_flat_size(self.features, input_shape), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("paper_base_cnn")
class PaperBaseCNN(_PaperModel):
    """The paper's comparison "BaseCNN" as committed: Conv 1->2 (25x25, stride 10, padding 1) -> ReLU ->
    flatten -> Linear -> 1 logit. (The paper's figure shows a 3-channel 10x10 variant that was never committed.)"""

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(input_shape[0], 2, kernel_size=25, stride=10, padding=1),
                                      nn.ReLU(), nn.Flatten())
        self.classifier = nn.Linear(_flat_size(self.features, input_shape), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register("paper_dual_cnn")
class PaperDualCNN(nn.Module):
    """The paper's extreme-low-flux classifier ("DualInputCNN") on the overlay and the peak image.

    The "peak image" is the expected Bragg signal, which only a simulation has: this model is an oracle-assisted
    classifier and cannot run on recorded frames (the pipeline refuses it). Two branches with separate weights
    (Conv 1->32, 5x5, stride 2, padding 1 -> ReLU -> 2x2 max-pool) are flattened, concatenated and classified by
    Linear(128) -> ReLU -> Linear(1).
    """

    inputs = ("counts", "signal")

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 1):
        super().__init__()

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(1, 32, kernel_size=5, stride=2, padding=1), nn.ReLU(),
                                 nn.MaxPool2d(2, 2), nn.Flatten())

        self.overlay_branch, self.peak_branch = branch(), branch()
        flat = _flat_size(self.overlay_branch, (1, *input_shape[1:]))
        self.classifier = nn.Sequential(nn.Linear(2 * flat, 128), nn.ReLU(), nn.Linear(128, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.overlay_branch(x[:, :1]), self.peak_branch(x[:, 1:2])], dim=1))


@register("paper_linear")
class PaperLinear(_PaperModel):
    """The paper's photon-energy and camera-length model ("Linear"): flatten -> one Linear layer."""

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 3):
        super().__init__()
        self.linear = nn.Linear(int(torch.tensor(input_shape).prod()), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class _ChannelAttention(nn.Module):
    """Average- and max-pooled channel vectors, each through its own MLP (ratio 16, no bias), summed."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid())

        self.avg_mlp, self.max_mlp = mlp(), mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.avg_mlp(x.mean(dim=(2, 3))) + self.max_mlp(x.amax(dim=(2, 3)))
        return x * weight[:, :, None, None]


class _SpatialAttention(nn.Module):
    """As committed: the channel max and mean through Conv 2->32 (7x7, padding 3, dilation 2) and a sigmoid; it
    returns the attention map times itself (the features are not multiplied in) and shrinks each side by 6."""

    def __init__(self, out_channels: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(2, out_channels, kernel_size=7, padding=3, dilation=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.conv(torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)],
                                                      dim=1)))
        return attention * attention


@register("paper_attention_heatmap")
class PaperAttentionHeatmap(_PaperModel):
    """The paper's peak-location model ("HeatmapCNN"): Conv 1->16 (5x5) -> BatchNorm -> ReLU -> 4x4 max-pool ->
    Conv 16->32 (3x3) -> BatchNorm -> ReLU -> channel attention -> spatial attention -> Conv 32->1 (3x3) ->
    bilinear upsampling (align_corners) to the input size. Its dropout was defined but never applied. Returns a
    heatmap of logits (B, 1, H, W)."""

    def __init__(self, input_shape: tuple[int, int, int], n_outputs: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(4, 4),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            _ChannelAttention(32), _SpatialAttention(32))
        self.heatmap = nn.Conv2d(32, n_outputs, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heatmap(self.features(x))
        return F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=True)
