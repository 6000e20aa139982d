"""Command-line entry functions of live operation (wired into ``cxlspeaks replay`` / ``cxlspeaks live``).

    replay SOURCE --bind tcp://127.0.0.1:PORT --protocol stream2|stream1 [--rate HZ] [--count N]
    live --connect tcp://HOST:PORT --models DIR --out RUN_DIR [--workers N] [--geometry G]
         [--finder network|peakfinder8] [--device auto|cpu|cuda] [--http HOST:PORT] [--channel threshold_1]

Both return an exit code: 0 done, 2 a one-line error on stderr (bad file, bad argument, no clients).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def replay_main(argv=None) -> int:
    """``replay``: serve a frames file as a DCU's Stream V2/V1."""
    p = argparse.ArgumentParser(prog="cxlspeaks replay", description="Serve a file of frames as a DECTRIS DCU does.")
    p.add_argument("source", type=Path, help="frames file (/entry/data/data) or any source open_source reads")
    p.add_argument("--bind", default="tcp://127.0.0.1:31001", help="PUSH endpoint (default tcp://127.0.0.1:31001)")
    p.add_argument("--protocol", choices=("stream2", "stream1"), default="stream2")
    p.add_argument("--rate", type=float, default=None, help="images per second (default: as fast as taken)")
    p.add_argument("--count", type=int, default=None, help="images to send (default: each frame once)")
    p.add_argument("--compression", choices=("bslz4", "lz4", "none"), default="bslz4")
    p.add_argument("--series-id", type=int, default=1)
    p.add_argument("--wait-clients", type=int, default=1, help="wait for this many clients (default 1)")
    args = p.parse_args(argv)
    from .replay import replay

    try:
        n = replay(args.source, args.bind, args.protocol, args.rate, args.count, args.compression, args.series_id,
                   wait_peers=args.wait_clients)
    except (ValueError, OSError, TimeoutError) as exc:
        print(f"cxlspeaks replay: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"sent {n} images")
    return 0


def live_main(argv=None) -> int:
    """``live``: score the stream into RUN_DIR (frames.csv, hits_*.cxi, hits.lst, summary.json)."""
    p = argparse.ArgumentParser(prog="cxlspeaks live", description="Score the Eiger stream as it comes.")
    p.add_argument("--connect", required=True, help="stream endpoint, e.g. tcp://dcu:31001")
    p.add_argument("--models", type=Path, default=Path("results/models"),
                   help="folder with hit/, photon_energy/, clen/ (and peaks/) checkpoint.pt")
    p.add_argument("--out", type=Path, required=True, help="RUN_DIR")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--geometry", type=Path, default=None, help="CrystFEL geometry (default: from the start message)")
    p.add_argument("--finder", choices=("network", "peakfinder8"), default="peakfinder8")
    p.add_argument("--http", default=None, help="HOST:PORT of the web monitor (default off)")
    p.add_argument("--channel", default="threshold_1", help="image channel (threshold_1, threshold_2, difference)")
    p.add_argument("--protocol", choices=("stream2", "stream1"), default="stream2")
    p.add_argument("--max-age", type=float, default=2.0, help="skip frames waiting longer than this (s)")
    p.add_argument("--hits-per-cxi", type=int, default=100)
    p.add_argument("--device", default="auto",
                   help="peak network device with --finder network: auto (a GPU when present), cpu, cuda[:N]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .run import live

    try:
        summary = live(args.connect, args.models, args.out, args.workers, args.geometry, args.finder, args.http,
                       args.channel, args.protocol, args.max_age, args.hits_per_cxi, device=args.device)
    except (ValueError, OSError) as exc:
        print(f"cxlspeaks live: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "series"}, indent=1))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("replay", "live"):
        print("usage: python -m cxlspeaks.live {replay|live} ...", file=sys.stderr)
        return 2
    return (replay_main if argv[0] == "replay" else live_main)(argv[1:])
