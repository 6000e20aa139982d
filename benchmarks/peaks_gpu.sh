#!/usr/bin/env bash
# Speed of the batched peak path (cxlspeaks.peaks.batched) on one GPU, in under 5 minutes, without a default run:
# FRAMES synthetic full-size Eiger 4M frames (benchmarks/peaks_gpu.py), batch sizes BATCHES, float32, float16 and
# bfloat16, bslz4 decompression included and excluded, next to NetworkPeakFinder and peakfinder8 on one CPU thread;
# the peak network of results/models/peaks/checkpoint.pt when it exists, else a random-weight one.
# Writes benchmarks/results/peaks_gpu.json (rows: finder, device, dtype, batch_size, decode_included, frames_per_s,
# count_mismatch, max_position_diff_px, max_photons_rel_diff).
#
#   bash benchmarks/peaks_gpu.sh            # FRAMES=32 BATCHES=8,32 DEVICE=cuda by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import importlib.util, os, sys
missing = [m for m in ("torch", "numpy", "pandas", "scipy", "h5py", "hdf5plugin", "dectris.compression", "yaml")
           if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"peaks_gpu.sh: install {', '.join(missing)} first (pip install -e .)")
import torch
if os.environ.get("DEVICE", "cuda").startswith("cuda") and not torch.cuda.is_available():
    sys.exit("peaks_gpu.sh: torch sees no CUDA device (DEVICE=cpu measures the CPU)")
print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
PY
exec python benchmarks/peaks.py --quick --device "${DEVICE:-cuda}" --frames "${FRAMES:-32}" \
    --batch-size "${BATCHES:-8,32}" --decode-threads "${DECODE_THREADS:-8}" --finders network,peakfinder8 "$@"
