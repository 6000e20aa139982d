"""Partial reflections: the spectrum-integrated engine against the earlier one (each reflection at its own Bragg
wavelength with a Gaussian profile), default run's beam (1 % tophat, 6 keV, 10 um crystal, 1IC6), full Eiger 4M.

Per camera length (0.15 / 0.25 / 0.35 m), over ``--frames`` random orientations, for reflections with at least
1 expected photon in the new engine (the peak lists' threshold), split into in-band (Bragg wavelength inside the
band) and out-of-band (excited by their tails at the band's edge):

* position shift: |new - old| spot centre (px), median and maximum;
* photon ratio: new / old N_hkl, median (old N_hkl of a reflection the old engine did not list is 0: "missing");
* seconds per full-size frame (expected image and peak list; median and minimum over the frames, the two
  engines interleaved), new engine; the old engine's when its source can be read from git (``--old-commit``).

The old model is recomputed here from its formulas (bragg.py before issue 14): sigma_r = sqrt((0.376 / L)^2 +
(|g| eta)^2), rho = [Phi_N((b/2 - eps_g)/sigma_eps) - Phi_N((-b/2 - eps_g)/sigma_eps)] / b with
sigma_eps = sigma_r / |g_z|, N = Laue integrated photons at lambda_g, spot at the ray along g + z / lambda_g.
Writes benchmarks/results/partials.json.

    python benchmarks/partials.py [--frames 10] [--photon-energy-ev 6000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from cxlspeaks.constants import FWHM_PER_SIGMA
from cxlspeaks.crystal import embedded_pdb_path, load_crystal
from cxlspeaks.geometry import eiger4m_geometry, polarisation_factor
from cxlspeaks.simulate import Beam, BraggSimulator, CrystalSample
from cxlspeaks.simulate.bragg import laue_integrated_photons

HERE = Path(__file__).resolve().parent
OLD_COMMIT = "5f1d2c3"


def old_reflections(sim: BraggSimulator, astar: np.ndarray) -> dict:
    """The earlier engine's N_hkl and spot centres, keyed by (h, k, l) (Gaussian profile at lambda_g)."""
    beam, sample = sim.beam, sim.sample
    g = sim.crystal.hkl @ astar.T
    g2 = np.einsum("ij,ij->i", g, g)
    gz = g[:, 2]
    sel = np.flatnonzero(gz < 0)
    g, g2, gz = g[sel], g2[sel], gz[sel]
    lam_g = -2 * gz / g2
    eps = lam_g / beam.wavelength_m - 1
    sigma_r = np.sqrt((0.886 / FWHM_PER_SIGMA / sample.size_m) ** 2
                      + g2 * (sample.mosaicity_rad / FWHM_PER_SIGMA) ** 2)
    sigma_eps = sigma_r / np.abs(gz)
    half = beam.bandwidth / 2
    rho = (ndtr((half - eps) / sigma_eps) - ndtr((-half - eps) / sigma_eps)) / beam.bandwidth
    k_out = g + np.outer(1 / lam_g, [0.0, 0.0, 1.0])
    photons = laue_integrated_photons(beam.fluence_per_m2, polarisation_factor(k_out, beam.polarisation_fraction),
                                      sim.crystal.intensity[sel], sample.volume_m3, sim.crystal.volume_m3, lam_g,
                                      lam_g ** 2 * g2 / 4, rho)
    near = photons > 1e-9
    fs, ss, panel = sim.geometry.ray_to_pixel(k_out[near])
    hkl = sim.crystal.hkl[sel][near]
    return {tuple(h): (n, f, s, e) for h, n, f, s, e, p in zip(hkl, photons[near], fs, ss, eps[near], panel)
            if p >= 0}


def load_old_engine(commit: str):
    """The pre-issue-14 BraggSimulator class from git, or None where git or the commit is unavailable."""
    try:
        text = subprocess.run(["git", "show", f"{commit}:src/cxlspeaks/simulate/bragg.py"], cwd=HERE.parent,
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    text = text.replace("from ..", "from cxlspeaks.").replace("from .beam", "from cxlspeaks.simulate.beam")
    path = Path(tempfile.mkdtemp()) / "old_bragg.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_bragg", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_bragg"] = module                     # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module.BraggSimulator


def compare(clen_m: float, crystal, beam: Beam, sample: CrystalSample, frames: int, old_class) -> dict:
    geometry = eiger4m_geometry(clen_m)
    sim = BraggSimulator(geometry, crystal, beam, sample)
    _, astars = crystal.random_orientations(np.random.default_rng(2024), frames)
    stats = {"in_band": {"shift": [], "ratio": [], "missing": 0}, "out_of_band": {"shift": [], "ratio": [],
                                                                               "missing": 0}}
    new_s, old_s, peaks = [], [], []
    for astar in astars:
        t0 = time.perf_counter()
        frame = sim.simulate(astar)
        new_s.append(time.perf_counter() - t0)
        if old_class is not None:
            old_sim = old_class(geometry, crystal, beam, sample)
            t0 = time.perf_counter()
            old_sim.simulate(astar)
            old_s.append(time.perf_counter() - t0)
        old = old_reflections(sim, astar)
        strong = frame.peaks[frame.peaks["photons_total"] >= 1.0]
        peaks.append(len(strong))
        g = strong[["h", "k", "l"]].to_numpy() @ astar.T
        eps_g = -2 * g[:, 2] / np.sum(g * g, axis=1) / beam.wavelength_m - 1
        for (h, k, l, n_new, fs, ss), e in zip(strong[["h", "k", "l", "photons_total", "fs", "ss"]].to_numpy(),
                                               eps_g):
            group = stats["in_band" if abs(e) <= beam.bandwidth / 2 else "out_of_band"]
            n_old, fs_old, ss_old, _ = old.get((int(h), int(k), int(l)), (0.0, np.nan, np.nan, e))
            if n_old < 1e-6:
                group["missing"] += 1
                continue
            group["shift"].append(float(np.hypot(fs - fs_old, ss - ss_old)))
            group["ratio"].append(float(n_new / n_old))
    out = {"clen_m": clen_m, "frames": frames, "mean_peaks_per_frame_ge_1_photon": float(np.mean(peaks)),
           "new_seconds_per_frame": float(np.median(new_s)),
           "old_seconds_per_frame": float(np.median(old_s)) if old_s else None,
           "new_seconds_per_frame_min": float(np.min(new_s)),
           "old_seconds_per_frame_min": float(np.min(old_s)) if old_s else None}
    for name, group in stats.items():
        shift, ratio = np.array(group["shift"]), np.array(group["ratio"])
        out[name] = {"reflections": int(len(shift) + group["missing"]), "missing_in_old": group["missing"],
                     "shift_px_median": float(np.median(shift)) if len(shift) else None,
                     "shift_px_max": float(shift.max()) if len(shift) else None,
                     "photon_ratio_new_over_old_median": float(np.median(ratio)) if len(ratio) else None,
                     "photon_ratio_p10_p90": [float(np.percentile(ratio, 10)), float(np.percentile(ratio, 90))]
                     if len(ratio) else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--photon-energy-ev", type=float, default=6000.0)
    parser.add_argument("--crystal-size-m", type=float, default=10e-6)
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "partials.json")
    args = parser.parse_args()
    beam = Beam(args.photon_energy_ev)
    sample = CrystalSample(args.crystal_size_m)
    crystal = load_crystal(embedded_pdb_path("1IC6"),
                           d_min_A=eiger4m_geometry(0.15).d_min_A(beam.photon_energy_ev, beam.bandwidth))
    old_class = load_old_engine(args.old_commit)
    rows = [compare(clen, crystal, beam, sample, args.frames, old_class) for clen in (0.15, 0.25, 0.35)]
    print(f"{'clen':>5} {'band':>12} {'refl':>5} {'missing':>7} {'shift med':>9} {'shift max':>9} "
          f"{'N new/old':>9} {'s/frame new':>11} {'old':>6}")
    for r in rows:
        for name in ("in_band", "out_of_band"):
            g = r[name]
            fmt = lambda v: "-" if v is None else f"{v:.2f}"   # noqa: E731
            print(f"{r['clen_m']:5.2f} {name:>12} {g['reflections']:5d} {g['missing_in_old']:7d} "
                  f"{fmt(g['shift_px_median']):>9} {fmt(g['shift_px_max']):>9} "
                  f"{fmt(g['photon_ratio_new_over_old_median']):>9} {r['new_seconds_per_frame']:11.3f} "
                  f"{fmt(r['old_seconds_per_frame']):>6}")
        print(f"      fastest frame: new {r['new_seconds_per_frame_min']:.3f} s, old "
              f"{fmt(r['old_seconds_per_frame_min'])} s")
    result = {"rows": rows, "settings": {"photon_energy_ev": beam.photon_energy_ev, "bandwidth": beam.bandwidth,
                                         "spectrum": beam.spectrum, "crystal_size_m": sample.size_m,
                                         "structure": "1IC6 (shipped)", "detector": "eiger4m",
                                         "peaks": "new N_hkl >= 1 photon"},
              "machine": {"python": sys.version.split()[0], "platform": platform.platform()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
