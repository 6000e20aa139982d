"""The geometry-aware beam-parameter model (water_profile_linear): its ring profile is placed by the geometry, so
the water ring sits where Bragg's law puts it and a moved beam centre leaves the features unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxlspeaks.constants import wavelength_m
from cxlspeaks.features import binned_frames, binned_radius_m, mask_fraction
from cxlspeaks.geometry import tiny_geometry
from cxlspeaks.models import build_model
from cxlspeaks.simulate.beam import Beam
from cxlspeaks.simulate.engine import expected_water

WATER_PEAK_Q_PER_A = 2.05  # the maximum of liquid water's S(q) (Hura et al. 2000; PHYSICS.md)


def profile_inputs(geometry, image, factor=1):
    mask = geometry.mask
    x = np.stack([binned_frames(image[None], mask, factor)[0], mask_fraction(mask, factor),
                  binned_radius_m(geometry, factor)])
    return torch.from_numpy(x[None].astype(np.float32))


def ring_radius_m(photon_energy_ev, clen_m, q_per_A=WATER_PEAK_Q_PER_A):
    """r = L tan(2 asin(q lambda / 4 pi)): where scattering at q meets a flat detector at distance L."""
    wavelength_A = wavelength_m(photon_energy_ev) * 1e10
    return clen_m * math.tan(2 * math.asin(q_per_A * wavelength_A / (4 * math.pi)))


@pytest.mark.parametrize("photon_energy_ev", [6000.0, 8000.0])
def test_the_profile_peaks_at_the_water_ring_radius(photon_energy_ev):
    # at 0.1 m the ring (82 mm at 6 keV) lies well inside this 154 mm detector
    geometry = tiny_geometry(n_fs=256, n_ss=256, pixel_size_m=0.6e-3, clen_m=0.10)
    water = expected_water(geometry, Beam(photon_energy_ev=photon_energy_ev, n_photons=1e13))
    # per pixel, the solid angle (obliquity cos^3) and polarisation pull the maximum inwards; per unit solid angle
    # and polarisation the water's scattering is S(q), whose maximum is at q = 2.05 A^-1
    per_sr = water / (geometry.solid_angles_sr * geometry.polarisation_factors(1.0))
    model = build_model("water_profile_linear", (3, 256, 256), 3).eval()
    profile, covered = model.profile(profile_inputs(geometry, per_sr / per_sr[geometry.mask].max() * 1e3))
    # mean level per ring back from log1p, its maximum within 3 rings (3.75 mm) of the q = 2.05 ring
    radii = (np.arange(model.n_radii) + 0.5) * model.r_max_m / model.n_radii
    level = np.expm1(profile[0].numpy())
    level[~covered[0].numpy()] = 0
    expected = ring_radius_m(photon_energy_ev, 0.10)
    assert abs(radii[level.argmax()] - expected) <= 3 * model.r_max_m / model.n_radii


def test_a_moved_beam_centre_with_its_geometry_gives_the_same_profile():
    centred = tiny_geometry(n_fs=256, n_ss=256, pixel_size_m=0.6e-3, clen_m=0.15, gap_width_px=0)
    panel = centred.panels[0]
    moved = centred.replace_panels(corner_x=panel.corner_x + 40, corner_y=panel.corner_y - 25)
    # unpolarised: the level of a ring is the same along its whole circle, so part of a ring averages the same
    beam = Beam(photon_energy_ev=7000.0, n_photons=1e13, polarisation_fraction=0.5)
    model = build_model("water_profile_linear", (3, 256, 256), 3).eval()
    a, cov_a = model.profile(profile_inputs(centred, expected_water(centred, beam) * 1e3))
    b, cov_b = model.profile(profile_inputs(moved, expected_water(moved, beam) * 1e3))
    both = (cov_a & cov_b)[0]
    # the two frames differ in which rings they cover, not in the profile of the rings both cover
    assert both.sum() > 60 and not torch.equal(cov_a, cov_b)
    rel = (torch.expm1(a[0]) - torch.expm1(b[0])).abs() / torch.expm1(a[0]).clamp_min(1e-6)
    assert rel[both].max() < 0.02
    # and the model's output uses the training mean for uncovered rings: finite logits for both
    with torch.no_grad():
        assert torch.isfinite(model(profile_inputs(moved, expected_water(moved, beam)))).all()


def test_binned_radius_is_the_mean_pixel_distance_from_the_beam():
    geometry = tiny_geometry(n_fs=16, n_ss=16, pixel_size_m=1e-3, gap_width_px=0)
    radius = binned_radius_m(geometry, 2)
    pos = geometry.pixel_positions_m
    r = np.hypot(pos[..., 0], pos[..., 1])
    assert radius.shape == (8, 8)
    assert radius[3, 5] == pytest.approx(r[6:8, 10:12].mean(), rel=1e-6)
