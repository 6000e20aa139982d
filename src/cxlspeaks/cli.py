"""The ``cxlspeaks`` command: run the trained models on recorded frames.

    cxlspeaks run SOURCE --models results/models -o predictions.csv [--cxi peaks.cxi [--cell X.cell]]
                  [--geometry detector.geom] [--channel N|NAME] [--finder network|cascade] [--beam-fit] [--quiet]

SOURCE: a cxlspeaks frames file or plain HDF5 stack (/entry/data/data or the geometry's ``data``), a DECTRIS NXmx
master file (legacy data_NNNNNN links or a v2024.2 VDS; ``--channel`` for a multi-channel one), a Cheetah/OM CXI
file (``--geometry`` required) or a CrystFEL ``.lst`` event list (:func:`cxlspeaks.sources.open_source`).
``--geometry`` is optional where the file describes its detector (stored geometry text, NXmx metadata). Rows:
frame, event, source_file, the scores, n_peaks, n_masked, n_saturated (``--beam-fit``: also each frame's photon
energy and camera length as continuous estimates with 1-sigma uncertainties, :mod:`cxlspeaks.run_beam`). Use outside the models' training (another
detector layout, a camera length outside the trained range) is one ``cxlspeaks: warning: ...`` line per kind.

Output: the CSV goes to ``-o FILE``, or to standard output without ``-o`` or with ``-o -``. With ``--cxi`` the
hits' peaks (found by the peak network, MODELS/peaks/checkpoint.pt, or with ``--finder cascade`` by the cascade,
MODELS/peaks_cascade/checkpoint.pt) are written for CrystFEL: peaks.cxi,
peaks.lst (the hits), peaks.geom and peaks.cell (a copy of ``--cell``, else the 1IC6 cell with a comment saying
so), for ``indexamajig -i peaks.lst -g peaks.geom -p peaks.cell --peaks=cxi``. Missing output folders are
created. A progress bar goes to standard error when it is a terminal (never with ``--quiet``).

Exit codes: 0 success; 2 bad input, with exactly one line ``cxlspeaks: error: ...`` on stderr naming the problem
and the file or option, before any frame is scored when it can be known then: bad options (``--threshold``
outside (0, 1)), an output that is an input file or another output or cannot be written, a missing, truncated,
mis-shaped, empty, bool/complex or (integer stack) negative frames file, a bad geometry (checked before the
checkpoints), any unusable checkpoint (missing: with the Snakemake target that rebuilds it), NaN model outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


class UsageError(Exception):
    """A command-line option argparse refuses (reported as one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability strictly between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cxlspeaks", description="CXLS Eiger frames: hits, photon energy, camera length, Bragg "
                     "peaks.")
    parser.add_argument("--version", action="version", version=f"cxlspeaks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score recorded frames (hit -> photon energy, camera length, peaks)")
    run.add_argument("frames", type=Path, metavar="SOURCE",
                     help="frames: HDF5 stack, NXmx master file, CXI file or CrystFEL .lst event list")
    run.add_argument("--models", type=Path, default=Path("results/models"),
                     help="folder with hit/, photon_energy/, clen/ and peaks/ (peaks_cascade/ for --finder cascade) "
                     "checkpoint.pt (default results/models)")
    for attribute in ("hit", "photon_energy", "clen"):
        run.add_argument(f"--{attribute.replace('_', '-')}-checkpoint", type=Path, default=None,
                         help=f"the {attribute} checkpoint (default MODELS/{attribute}/checkpoint.pt)")
    run.add_argument("--peaks-checkpoint", type=Path, default=None,
                     help="the --finder's checkpoint (default MODELS/peaks/checkpoint.pt for the network, "
                     "MODELS/peaks_cascade/checkpoint.pt for the cascade)")
    run.add_argument("--finder", choices=("network", "cascade"), default="network",
                     help="peak finder: network (the peak network, default) or cascade (the sparse CPU cascade)")
    run.add_argument("--geometry", type=Path, default=None,
                     help="CrystFEL geometry of the detector (default: the geometry stored in the file, or "
                     "built from the NXmx metadata)")
    run.add_argument("--channel", default=None,
                     help="channel of a multi-channel NXmx master file, by index or name")
    run.add_argument("--threshold", type=_probability, default=0.5,
                     help="hit probability threshold, in (0, 1) (default 0.5)")
    run.add_argument("--batch-size", type=_positive_int, default=8, help="frames scored at once (default 8)")
    run.add_argument("-o", "--output", type=Path, default=None,
                     help="CSV to write ('-' or none: standard output)")
    run.add_argument("--cxi", type=Path, default=None,
                     help="write the hits' peaks here (CXI), with the CrystFEL .lst, .geom and .cell beside it")
    run.add_argument("--cell", type=Path, default=None,
                     help="CrystFEL unit cell file copied to the .cell beside --cxi (default: the 1IC6 cell)")
    run.add_argument("--no-peaks", action="store_true", help="skip peak finding (no peak network needed)")
    run.add_argument("--beam-fit", action="store_true",
                     help="add photon_energy_fit_ev, clen_fit_m and their sigmas: a fit of the water ring per frame "
                          "(~1.7 s per Eiger 4M frame; flat detectors)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar on standard error")
    # Listed here for --help; their own parsers (cxlspeaks.live.cli) read their options.
    commands.add_parser("replay", add_help=False, help="serve a file of frames as a DECTRIS detector's stream "
                        "(Stream V2/V1; `cxlspeaks replay --help`)")
    commands.add_parser("live", add_help=False, help="score the Eiger stream live with N workers, CrystFEL-ready "
                        "output and a web monitor (`cxlspeaks live --help`)")
    return parser


#: subcommands with their own parsers: name -> (module, function) taking the arguments after the name
_DELEGATED = {"replay": ("cxlspeaks.live.cli", "replay_main"), "live": ("cxlspeaks.live.cli", "live_main")}


def _error(message: str) -> int:
    lines = [line for line in str(message).splitlines() if line.strip()]
    print(f"cxlspeaks: error: {lines[0] if lines else message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        import importlib

        module, function = _DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _error(str(exc))
    from .checkpoint import CheckpointError
    from .crystal import StructureError
    from .geometry import GeometryError
    from .io import DataFileError
    from .pipeline import RunArgumentError, run_pipeline
    from .run_peaks import PEAK_FINDERS

    attributes = ("hit", "photon_energy", "clen") + (() if args.no_peaks else ("peaks",))
    folders = {"hit": "hit", "photon_energy": "photon_energy", "clen": "clen", "peaks": PEAK_FINDERS[args.finder]}
    checkpoints = {a: getattr(args, f"{a}_checkpoint") or args.models / folders[a] / "checkpoint.pt"
                   for a in attributes}
    if args.no_peaks and args.cxi is not None:
        return _error("--cxi needs peak finding; drop --no-peaks")
    try:
        table = run_pipeline(args.frames, checkpoints, args.output, args.geometry, threshold=args.threshold,
                             batch_size=args.batch_size, cxi_output=args.cxi, cell_file=args.cell,
                             progress=False if args.quiet else None, channel=args.channel,
                             peak_finder=args.finder, beam_fit=args.beam_fit)
    except (DataFileError, CheckpointError, GeometryError, StructureError, RunArgumentError) as exc:
        return _error(str(exc) or type(exc).__name__)
    except OSError as exc:  # the disk, not the code: a write that failed after the checks (full, removed folder)
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}")
    if args.output is None or str(args.output) == "-":
        table.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
