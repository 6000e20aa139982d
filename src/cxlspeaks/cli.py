"""The ``cxlspeaks`` command: run the trained models on a frames file.

    cxlspeaks run FRAMES.h5 --models results/models -o predictions.csv [--geometry detector.geom]

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
                                     "camera length.")
    parser.add_argument("--version", action="version", version=f"cxlspeaks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score the frames of an HDF5 file (hit -> photon energy, camera length)")
    run.add_argument("frames", type=Path, help="HDF5 file with an (N, ss, fs) stack at /entry/data/data")
    run.add_argument("--models", type=Path, default=Path("results/models"),
                     help="folder with hit/, photon_energy/ and clen/ checkpoint.pt (default results/models)")
    for attribute in ("hit", "photon_energy", "clen"):
        run.add_argument(f"--{attribute.replace('_', '-')}-checkpoint", type=Path, default=None,
                         help=f"the {attribute} checkpoint (default MODELS/{attribute}/checkpoint.pt)")
    run.add_argument("--geometry", type=Path, default=None,
                     help="CrystFEL geometry of the detector (default: the geometry stored in the file)")
    run.add_argument("--threshold", type=float, default=0.5, help="hit probability threshold (default 0.5)")
    run.add_argument("-o", "--output", type=Path, default=None, help="CSV to write (default: standard output)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .crystal import StructureError
    from .geometry import GeometryError
    from .io import DataFileError
    from .pipeline import run_pipeline
    from .train import CheckpointError

    checkpoints = {a: getattr(args, f"{a}_checkpoint") or args.models / a / "checkpoint.pt"
                   for a in ("hit", "photon_energy", "clen")}
    try:
        table = run_pipeline(args.frames, checkpoints, args.output, args.geometry, threshold=args.threshold)
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
