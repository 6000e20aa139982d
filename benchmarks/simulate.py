"""Speed and memory of full-size Eiger 4M frame simulation at the source paper's settings.

Per frame: orientation, Bragg signal (analytic engine), water (the expected image, scaled), Poisson noise, and
a bitshuffle-LZ4 compressed HDF5 write of the recorded counts (uint32, chunked per frame). Prints a table and
writes benchmarks/results/simulate.json. Target (issue 2): <= 0.16 s per frame on one core, < 2 GB of memory
(CrystFEL 0.10.2 pattern_sim: 159 s for the same frame).

    python benchmarks/simulate.py [--frames 30] [--structure FILE.pdb]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from cxlspeaks.crystal import embedded_pdb_path, load_crystal
from cxlspeaks.geometry import eiger4m_geometry
from cxlspeaks.io import create_frame_stack
from cxlspeaks.simulate import Beam, CrystalSample
from cxlspeaks.simulate.engine import FrameSimulator

HERE = Path(__file__).resolve().parent
DEFAULT_STRUCTURE = embedded_pdb_path("1IC6")  # shipped in the package (gzipped PDB, read by gemmi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--structure", type=Path, default=DEFAULT_STRUCTURE,
                        help="PDB file (default the 1IC6 model shipped in the package)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "simulate.json")
    args = parser.parse_args()

    beam = Beam(photon_energy_ev=6000.0, bandwidth=0.01, spectrum="tophat", n_photons=3e8, beam_radius_m=5e-6)
    sample = CrystalSample(size_m=10e-6)
    geometry = eiger4m_geometry(clen_m=0.15)
    structure = args.structure if args.structure.is_file() else None

    t0 = time.perf_counter()
    crystal = load_crystal(structure, d_min_A=geometry.d_min_A(beam.photon_energy_ev, beam.bandwidth))
    t_crystal = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = FrameSimulator(geometry, crystal, beam, sample, seed=1, dataset="benchmark")
    t_setup = time.perf_counter() - t0

    stages = {"orientation": 0.0, "signal": 0.0, "water_and_noise": 0.0, "hdf5_write": 0.0}
    n_peaks = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames.h5"
        with h5py.File(path, "w") as h5:
            stack = create_frame_stack(h5, "/entry/data/data", args.frames, geometry.shape, np.uint32)
            t_all = time.perf_counter()
            for i in range(args.frames):
                t = time.perf_counter()
                _, astar = sim.orientation(i)
                t1 = time.perf_counter()
                frame = sim.builtin.simulate(astar)
                t2 = time.perf_counter()
                counts = sim.record(i, frame.image)
                t3 = time.perf_counter()
                stack[i] = counts
                t4 = time.perf_counter()
                stages["orientation"] += t1 - t
                stages["signal"] += t2 - t1
                stages["water_and_noise"] += t3 - t2
                stages["hdf5_write"] += t4 - t3
                n_peaks.append(len(frame.peaks))
            t_all = time.perf_counter() - t_all
        file_mb = path.stat().st_size / 1e6

    per_frame = t_all / args.frames
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "seconds_per_frame": per_frame,
        "frames_per_second": 1 / per_frame,
        "peak_memory_mb": peak_rss_mb,
        "frames": args.frames,
        "stage_seconds_per_frame": {k: v / args.frames for k, v in stages.items()},
        "setup_seconds": {"structure_factors": t_crystal, "geometry_and_water": t_setup},
        "mean_peaks_per_frame": float(np.mean(n_peaks)),
        "compressed_mb_per_frame": file_mb / args.frames,
        "settings": {"detector": "eiger4m 2070 x 2167", "photon_energy_ev": 6000.0, "clen_m": 0.15,
                     "n_photons": 3e8, "beam_radius_m": 5e-6, "crystal_size_m": 10e-6, "bandwidth": 0.01,
                     "spectrum": "tophat", "structure": str(structure) if structure else "synthetic"},
        "targets": {"seconds_per_frame": 0.16, "peak_memory_mb": 2000, "pattern_sim_0.10.2_seconds": 159},
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count(), "platform": platform.platform(),
                    "numpy": np.__version__, "threads": os.environ.get("OMP_NUM_THREADS", "default")},
    }
    print(f"{'stage':<22}{'s / frame':>12}")
    for k, v in result["stage_seconds_per_frame"].items():
        print(f"{k:<22}{v:>12.4f}")
    print(f"{'total':<22}{per_frame:>12.4f}   ({1 / per_frame:.1f} frames/s; target <= 0.16 s)")
    print(f"peak memory {peak_rss_mb:.0f} MB (target < 2000 MB); {np.mean(n_peaks):.0f} peaks per frame; "
          f"{file_mb / args.frames:.2f} MB per compressed frame; setup {t_crystal:.2f} s |F|^2 + {t_setup:.2f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
