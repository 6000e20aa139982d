"""The ``cxlspeaks`` command: run the trained models on a frames file.

    cxlspeaks run FRAMES.h5 --models results/models -o predictions.csv [--cxi peaks.cxi] [--geometry detector.geom]

With ``--cxi`` the hits' peaks (found by the peak network, MODELS/peaks/checkpoint.pt) are written for CrystFEL:
peaks.cxi, peaks.lst (the hits) and peaks.geom, for ``indexamajig -i peaks.lst -g peaks.geom --peaks=cxi``.

Exit codes: 0 success, 2 bad input (a missing, truncated or mis-shaped file, a checkpoint for another attribute),
with one line on stderr naming the problem and the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxlspeaks", description="CXLS Eiger frames: hits, photon energy, "
                                     "camera length, Bragg peaks.")
    parser.add_argument("--version", action="version", version=f"cxlspeaks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score the frames of an HDF5 file (hit -> photon energy, camera length, "
                              "peaks)")
    run.add_argument("frames", type=Path, help="HDF5 file with an (N, ss, fs) stack at /entry/data/data")
    run.add_argument("--models", type=Path, default=Path("results/models"),
                     help="folder with hit/, photon_energy/, clen/ and peaks/ checkpoint.pt (default results/models)")
    for attribute in ("hit", "photon_energy", "clen", "peaks"):
        run.add_argument(f"--{attribute.replace('_', '-')}-checkpoint", type=Path, default=None,
                         help=f"the {attribute} checkpoint (default MODELS/{attribute}/checkpoint.pt)")
    run.add_argument("--geometry", type=Path, default=None,
                     help="CrystFEL geometry of the detector (default: the geometry stored in the file)")
    run.add_argument("--threshold", type=float, default=0.5, help="hit probability threshold (default 0.5)")
    run.add_argument("-o", "--output", type=Path, default=None, help="CSV to write (default: standard output)")
    run.add_argument("--cxi", type=Path, default=None,
                     help="write the hits' peaks here (CXI), with the CrystFEL .lst and .geom beside it")
    run.add_argument("--no-peaks", action="store_true", help="skip peak finding (no peak network needed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .crystal import StructureError
    from .geometry import GeometryError
    from .io import DataFileError
    from .pipeline import run_pipeline
    from .train import CheckpointError

    attributes = ("hit", "photon_energy", "clen") + (() if args.no_peaks else ("peaks",))
    checkpoints = {a: getattr(args, f"{a}_checkpoint") or args.models / a / "checkpoint.pt" for a in attributes}
    try:
        if args.no_peaks and args.cxi is not None:
            raise ValueError("--cxi needs peak finding; drop --no-peaks")
        table = run_pipeline(args.frames, checkpoints, args.output, args.geometry, threshold=args.threshold,
                             cxi_output=args.cxi)
    except (DataFileError, CheckpointError, GeometryError, StructureError, ValueError, KeyError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        message = text.splitlines()[0] if text else type(exc).__name__
        print(f"cxlspeaks: error: {message}", file=sys.stderr)
        return 2
    if args.output is None:
        table.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
