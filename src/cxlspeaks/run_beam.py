"""`cxlspeaks run --beam-fit`: each frame's photon energy and camera length as continuous estimates with their
1-sigma uncertainties, beside the 3-class models' answers.

The estimate is :func:`cxlspeaks.beamparams.water_fit.fit_water_frame`: a Poisson maximum-likelihood fit of the
expected water profile (S_w(q) of Hura et al. 2003 / Clark et al. 2010, polarisation and solid angle of each
pixel; PHYSICS.md) over (photon energy, camera length, scale) on the frame's good pixels, binned by radius from
the geometry's beam centre, with Bragg spots masked as Poisson outliers, so hits and empty frames take the same
estimator. Its sigmas come from the Fisher information, widened to the profile likelihood's half-width where that
is wider. The water ring fixes mostly lambda x L: on the default run's frames the energy is good to ~1.5-3 % at
0.15 m and 6-18 % at 0.25-0.35 m, as the oracle bound (benchmarks/beamparams.py) says any estimator must be;
the sigma says how good each frame's is. About 1.7 s per full Eiger 4M frame on one core. Caution: where the
ring's maximum (2.05 1/A) is off the detector the fit can claim a small sigma for a wrong answer.
"""

from __future__ import annotations

import numpy as np

BEAM_FIT_COLUMNS = ("photon_energy_fit_ev", "photon_energy_fit_sigma_ev", "clen_fit_m", "clen_fit_sigma_m")


class BeamFitter:
    """Fits frames of one or more detectors (profile bins made once per detector).

    Raises ValueError (one line) for a detector the fit cannot use (not one flat plane facing the beam): at once
    for the source's detector, or for a detector with per-frame values (an HDF5 clen path) at its first frame."""

    def __init__(self, geometry):
        self._bins: dict = {}
        if geometry.is_resolved:            # refuse an unusable detector before any frame is read
            self._bins_for(geometry)

    def _bins_for(self, geometry):
        from .beamparams.profile import ProfileBins

        key = geometry.to_geom_text()
        if key not in self._bins:
            if len(self._bins) >= 4:
                self._bins.pop(next(iter(self._bins)))
            self._bins[key] = ProfileBins.from_geometry(geometry)
        return self._bins[key]

    def fit(self, counts: np.ndarray, good: np.ndarray, geometry) -> dict:
        """:data:`BEAM_FIT_COLUMNS` of one frame: ``counts`` float (ss, fs) photons, ``good`` bool (ss, fs)
        (pixels outside it are left out of the fit), ``geometry`` the frame's detector. NaN where the fit has no
        photons to work with, or where its maximum lies on the edge of the range searched
        (:class:`~cxlspeaks.beamparams.water_fit.PriorBox`: 5-9.5 keV, 0.10-0.50 m; within 0.5 % of a bound): a
        frame from outside that range gets no estimate rather than a confident wrong one."""
        from .beamparams.water_fit import PriorBox, fit_water_frame

        bins = self._bins_for(geometry)
        nan = dict.fromkeys(BEAM_FIT_COLUMNS, float("nan"))
        if not np.any(good) or float(np.sum(counts, where=good)) <= 0:
            return nan
        prior = PriorBox()
        estimate = fit_water_frame(np.asarray(counts, dtype=np.float64), geometry, bins, prior=prior,
                                   extra_mask=~good)
        for value, (lo, hi) in ((estimate.photon_energy_ev, prior.photon_energy_ev), (estimate.clen_m, prior.clen_m)):
            if not lo * 1.005 < value < hi / 1.005:
                return nan
        return {"photon_energy_fit_ev": float(estimate.photon_energy_ev),
                "photon_energy_fit_sigma_ev": float(estimate.sigma_photon_energy_ev),
                "clen_fit_m": float(estimate.clen_m), "clen_fit_sigma_m": float(estimate.sigma_clen_m)}
