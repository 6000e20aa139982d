"""benchmarks/realistic.py on the tiny detector with hand-made checkpoints: its bookkeeping of frames, ice and hits
against what the simulated frames hold, and the same numbers on a rerun (seeded simulation)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from cxlspeaks.checkpoint import save_checkpoint
from cxlspeaks.peaks.cascade import N_FEATURES, CascadeConfig
from test_cli_errors import checkpoint_content

REPO = Path(__file__).resolve().parents[1]
N = 1


def load_benchmark():
    spec = importlib.util.spec_from_file_location("realistic_benchmark", REPO / "benchmarks" / "realistic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Every frame a hit (head bias 20), random class models and network, and a cascade that keeps every
    candidate (output bias 20)."""
    folder = tmp_path_factory.mktemp("realistic_models")
    for attribute in ("hit", "photon_energy", "clen"):
        save_checkpoint(folder / attribute / "checkpoint.pt", **checkpoint_content(attribute))
    save_checkpoint(folder / "peaks" / "checkpoint.pt", **checkpoint_content("peaks"))
    config = CascadeConfig()
    h = config.hidden
    state = {"0.weight": torch.zeros(h, N_FEATURES), "0.bias": torch.zeros(h), "2.weight": torch.zeros(h, h),
             "2.bias": torch.zeros(h), "4.weight": torch.zeros(1, h), "4.bias": torch.full((1,), 20.0),
             "mean": torch.zeros(N_FEATURES), "std": torch.ones(N_FEATURES)}
    save_checkpoint(folder / "peaks_cascade" / "checkpoint.pt", model_state=state, optimizer_state={}, epoch=1,
                    config={"attribute": "peaks_cascade", "model": "cascade", "cascade": config.to_dict()},
                    class_names=["peak"], threshold=0.5)
    return folder


def run(models, tmp_path, name):
    bench = load_benchmark()
    return bench.main(["--frames", str(N), "--detector", "tiny", "--no-singles", "--models", str(models),
                       "--output", str(tmp_path / name)])


def test_counts_ice_and_hits_as_the_frames_hold_them_and_reruns_give_the_same_numbers(models, tmp_path):
    result = run(models, tmp_path, "a.json")
    rows = {(r["set"], r["finder"]): r for r in result["rows"]}
    assert set(rows) == {(s, f) for s in ("clean", "realistic", "ice_only_empties") for f in ("cascade", "network")}
    for (name, finder), row in rows.items():
        assert "trained on clean frames" in row["models"]
        assert row["n_empty_frames"] == N
        # the all-hit model calls every frame a hit: empty frames too, and ice-only empties
        assert row["empty_hit_rate"] == 1.0
        if name == "ice_only_empties":
            # ice_fraction 1: every empty frame carries ice; no crystal frame is scored
            assert row["n_crystal_frames"] == 0 and math.isnan(row["hit_tpr"])
            assert row["n_empty_frames_with_ice"] == N and row["ice_empty_hit_rate"] == 1.0
            # peaks on ice spots are a part of the ice frames' false peaks
            assert row["ice_spot_peaks_per_ice_frame"] <= row["false_peaks_per_ice_frame"]
        else:
            assert row["n_crystal_frames"] == N and row["hit_tpr"] == 1.0
            assert 0.0 <= row["photon_energy_accuracy"] <= 1.0
        if name == "clean":   # no nuisances: no ice anywhere
            assert row["n_empty_frames_with_ice"] == 0 and math.isnan(row["false_peaks_per_ice_frame"])
    again = run(models, tmp_path, "b.json")
    for a, b in zip(result["rows"], again["rows"]):
        assert a.keys() == b.keys()
        for key in a:
            if key == "find_seconds_per_frame":
                continue
            same = (a[key] == b[key]) or (isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key]))
            assert same, (a["set"], a["finder"], key, a[key], b[key])
