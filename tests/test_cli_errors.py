"""`cxlspeaks run` on bad input: exit code 2, one line `cxlspeaks: error: ...` naming the problem, no traceback;
and what a good run writes (-o -, integer n_peaks, the .cell beside --cxi)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cxlspeaks.checkpoint import save_checkpoint
from cxlspeaks.cli import main
from cxlspeaks.geometry import tiny_geometry
from cxlspeaks.io import DATA, GEOMETRY_TEXT, bitshuffle_lz4
from cxlspeaks.models import build_model
from cxlspeaks.peaks.network import PeakNet, PeakNetConfig

BIN = 8
N_FRAMES = 3


def write_stack(path: Path, data: np.ndarray, geometry_text: str | None = None, compress: bool = False) -> Path:
    with h5py.File(path, "w") as h5:
        kwargs = dict(chunks=(1, *data.shape[1:]), **bitshuffle_lz4()) if compress and data.size else {}
        h5.create_dataset(DATA, data=data, **kwargs)
        if geometry_text is not None:
            h5[GEOMETRY_TEXT] = geometry_text
    return path


def checkpoint_content(attribute: str, model: str = "", n_classes: int = 2, input_shape=(16, 16), **change) -> dict:
    """A hand-made checkpoint that model_from_checkpoint / NetworkPeakFinder accept (random weights)."""
    torch.manual_seed(0)
    if attribute == "peaks":
        config = PeakNetConfig(width=8)
        content = dict(model_state=PeakNet(config.width, config.cell).state_dict(), optimizer_state={}, epoch=1,
                       config={"attribute": "peaks", "model": "peaknet", "network": config.to_dict()},
                       class_names=["peak"], threshold=0.5)
    else:
        model = model or ("hit_fcn" if attribute == "hit" else "paper_linear")
        loss = "bce" if attribute == "hit" else "ce"
        inputs = ("counts", "mask") if model == "hit_fcn" else ("counts",)
        net = build_model(model, (len(inputs), *input_shape), 1 if loss == "bce" else n_classes)
        state = net.state_dict()
        if attribute == "hit":
            state["head.bias"] = torch.full_like(state["head.bias"], 20.0)  # every frame a hit
        values = [6000.0 + 1000 * k for k in range(n_classes)] if attribute == "photon_energy" else \
            [0.1 + 0.05 * k for k in range(n_classes)]
        content = dict(model_state=state, optimizer_state={}, epoch=1,
                       config={"attribute": attribute, "model": model, "loss": loss},
                       class_names=[str(v) for v in values] if loss == "ce" else ["no peaks", "peaks"],
                       class_values=values if loss == "ce" else [0.0, 1.0], input_shape=[len(inputs), *input_shape],
                       inputs=list(inputs), bin_factor=BIN)
    content.update(change)
    return content


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    geometry = tiny_geometry()
    text = geometry.to_geom_text()
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, size=(N_FRAMES, *geometry.shape)).astype(np.uint32)
    counts[:, 40:43, 60:63] += 200
    frames = write_stack(root / "frames.h5", counts, text, compress=True)
    models = root / "models"
    for attribute in ("hit", "photon_energy", "clen", "peaks"):
        save_checkpoint(models / attribute / "checkpoint.pt", **checkpoint_content(attribute))
    (root / "detector.geom").write_text(text)
    return dict(root=root, frames=frames, models=models, geom=root / "detector.geom", counts=counts, text=text)


def _bad_inputs(s: dict) -> dict:
    """name -> (extra arguments after `run`, expected part of the one error line). Builds the bad files."""
    root, frames, models, geom, text = s["root"], s["frames"], s["models"], s["geom"], s["text"]
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    shape = s["counts"].shape[1:]

    def stack(name, data, with_geometry=True):
        return str(write_stack(bad / name, data, text if with_geometry else None))

    def ckpt(name, attribute, **change):
        path = bad / name
        save_checkpoint(path, **checkpoint_content(attribute, **change))
        return str(path)

    truncated = bad / "truncated.h5"
    truncated.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    (bad / "text.h5").write_text("not hdf5\n")
    with h5py.File(bad / "nodata.h5", "w") as h5:
        h5[GEOMETRY_TEXT] = text
    (bad / "garbage.geom").write_text("p0/min_fs = banana\n")
    (bad / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    (bad / "a_folder.pt").mkdir(exist_ok=True)
    (bad / "a_file").write_text("x")
    (bad / "notacell.cell").write_text("hello\n")
    nan_state = checkpoint_content("hit")["model_state"]
    nan_state["head.weight"][0, 0] = float("nan")
    huge = checkpoint_content("photon_energy")["model_state"]
    huge["linear.weight"] = torch.full_like(huge["linear.weight"], 3e38)
    wrong = checkpoint_content("hit")["model_state"]
    wrong["head.weight"] = torch.zeros(1, 7)
    negative = np.zeros((1, *shape), np.int32)
    negative[0, 5, 5] = -3
    m = ["--models", str(models)]
    hit = str(models / "hit" / "checkpoint.pt")
    return {
        "missing frames": ([str(bad / "absent.h5"), *m], "file not found"),
        "truncated frames": ([str(truncated), *m], str(truncated)),
        "not hdf5": ([str(bad / "text.h5"), *m], "not a readable HDF5 file"),
        "no data": ([str(bad / "nodata.h5"), *m], "unknown layout"),
        "mis-shaped": ([stack("small.h5", np.zeros((2, 30, 40), np.uint32), False), *m, "--geometry", str(geom)],
                       "has frame shape (30, 40)"),
        "2-D stack": ([stack("flat.h5", np.zeros(shape, np.uint32)), *m], "has frame shape (128,)"),
        "bool stack": ([stack("bool.h5", np.zeros((1, *shape), bool)), *m], "is bool, not photon counts"),
        "complex stack": ([stack("complex.h5", np.zeros((1, *shape), np.complex64)), *m], "complex64"),
        "negative counts": ([stack("negative.h5", negative), *m], "negative counts"),
        "empty stack": ([stack("empty.h5", np.zeros((0, *shape), np.uint32)), *m], "holds no frames"),
        "no geometry": ([stack("nogeom.h5", np.zeros((1, *shape), np.uint32), False), *m], "--geometry"),
        "missing geometry": ([str(frames), *m, "--geometry", str(bad / "absent.geom")], "absent.geom"),
        "garbage geometry": ([str(frames), *m, "--geometry", str(bad / "garbage.geom")], "garbage.geom"),
        "geometry before checkpoints": ([str(frames), "--models", str(bad), "--geometry",
                                         str(bad / "garbage.geom")], "garbage.geom"),
        "-o is the input": ([str(frames), *m, "-o", str(frames)], "is the input frames file"),
        "-o is a checkpoint": ([str(frames), *m, "-o", hit], "is the hit checkpoint"),
        "-o is the geometry": ([str(frames), *m, "--geometry", str(geom), "-o", str(geom)], "is the --geometry"),
        "-o via another name": ([str(frames), *m, "-o", str(root / "bad" / ".." / "frames.h5")],
                                "is the input frames file"),
        "--cxi is the input": ([str(frames), *m, "--cxi", str(frames)], "is the input frames file"),
        "--cxi .lst is -o": ([str(frames), *m, "--cxi", str(bad / "p.cxi"), "-o", str(bad / "p.lst")],
                             "is also the"),
        "--cxi named .geom": ([str(frames), *m, "--cxi", str(bad / "p.geom")], "needs a file name"),
        "--cxi .geom is the geometry": ([str(frames), *m, "--geometry", str(geom), "--cxi", str(root / "detector.cxi")],
                                        "is the --geometry"),
        "-o is a folder": ([str(frames), *m, "-o", str(bad)], "is a folder"),
        "-o under a file": ([str(frames), *m, "-o", str(bad / "a_file" / "out.csv")], "is not a folder"),
        "--threshold 0": ([str(frames), *m, "--threshold", "0"], "--threshold"),
        "--threshold 1.5": ([str(frames), *m, "--threshold", "1.5"], "--threshold"),
        "--threshold nan": ([str(frames), *m, "--threshold", "nan"], "--threshold"),
        "--threshold text": ([str(frames), *m, "--threshold", "high"], "--threshold"),
        "--batch-size 0": ([str(frames), *m, "--batch-size", "0"], "--batch-size"),
        "unknown option": ([str(frames), "--frobnicate"], "--frobnicate"),
        "missing checkpoint": ([str(frames), "--models", str(bad)],
                               "snakemake --cores 2 results/models/hit/checkpoint.pt"),
        "checkpoint a folder": ([str(frames), *m, "--hit-checkpoint", str(bad / "a_folder.pt")], "is not a file"),
        "checkpoint not torch": ([str(frames), *m, "--hit-checkpoint", str(bad / "junk.pt")],
                                 "not a loadable weights-only checkpoint"),
        "checkpoint of another attribute": ([str(frames), *m, "--hit-checkpoint",
                                             str(models / "clen" / "checkpoint.pt")], "is for attribute 'clen'"),
        "checkpoint missing keys": ([str(frames), *m, "--clen-checkpoint", _partial(bad)],
                                    "not a cxlspeaks checkpoint"),
        "checkpoint without input_shape": ([str(frames), *m, "--clen-checkpoint",
                                            _without(bad, "clen", "input_shape")], "has no input_shape"),
        "checkpoint wrong shapes": ([str(frames), *m, "--hit-checkpoint",
                                     ckpt("wrong.pt", "hit", model_state=wrong)], "weights do not fit"),
        "checkpoint unknown model": ([str(frames), *m, "--clen-checkpoint",
                                      ckpt("unknown.pt", "clen", config={"attribute": "clen", "model": "magic",
                                                                         "loss": "ce"})], "unknown model 'magic'"),
        "checkpoint no classes": ([str(frames), *m, "--clen-checkpoint", ckpt("noclass.pt", "clen", class_names=[])],
                                  "has no classes"),
        "checkpoint no class values": ([str(frames), *m, "--photon-energy-checkpoint",
                                        ckpt("novalues.pt", "photon_energy", class_values=None)], "class_values"),
        "checkpoint NaN weights": ([str(frames), *m, "--hit-checkpoint", ckpt("nan.pt", "hit", model_state=nan_state)],
                                   "NaN or infinite"),
        "NaN model outputs": ([str(frames), *m, "--photon-energy-checkpoint",
                               ckpt("huge.pt", "photon_energy", model_state=huge)], "gave NaN"),
        "checkpoint for other frames": ([str(frames), *m, "--clen-checkpoint",
                                         ckpt("other.pt", "clen", input_shape=(10, 10))], "was trained on (10, 10)"),
        "peaks checkpoint of hit": ([str(frames), *m, "--peaks-checkpoint", hit], "not 'peaks'"),
        "peaks checkpoint no threshold": ([str(frames), *m, "--peaks-checkpoint", _without(bad, "peaks", "threshold")],
                                          "has no threshold"),
        "--cxi with --no-peaks": ([str(frames), *m, "--no-peaks", "--cxi", str(bad / "p.cxi")], "--cxi needs peak"),
        "missing cascade checkpoint": ([str(frames), *m, "--finder", "cascade"],
                                       "snakemake --cores 2 results/models/peaks_cascade/checkpoint.pt"),
        "cascade checkpoint of the network": ([str(frames), *m, "--finder", "cascade", "--peaks-checkpoint",
                                               str(models / "peaks" / "checkpoint.pt")], "not 'peaks_cascade'"),
        "unknown finder": ([str(frames), *m, "--finder", "magic"], "--finder"),
        "--cell without --cxi": ([str(frames), *m, "--cell", str(geom)], "give --cxi too"),
        "--cell missing": ([str(frames), *m, "--cxi", str(bad / "p.cxi"), "--cell", str(bad / "absent.cell")],
                           "--cell"),
        "--cell not a cell": ([str(frames), *m, "--cxi", str(bad / "p.cxi"), "--cell", str(bad / "notacell.cell")],
                              "not a CrystFEL unit cell file"),
    }


def _partial(folder: Path) -> str:
    path = folder / "partial.pt"
    save_checkpoint(path, model_state={}, epoch=1)
    return str(path)


def _without(folder: Path, attribute: str, key: str) -> str:
    content = checkpoint_content(attribute)
    del content[key]
    path = folder / f"{attribute}_without_{key}.pt"
    save_checkpoint(path, **content)
    return str(path)


@pytest.fixture(scope="module")
def bad_inputs(setup):
    return _bad_inputs(setup)


CASES = ["missing frames", "truncated frames", "not hdf5", "no data", "mis-shaped", "2-D stack", "bool stack",
         "complex stack", "negative counts", "empty stack", "no geometry", "missing geometry",
         "garbage geometry", "geometry before checkpoints", "-o is the input", "-o is a checkpoint",
         "-o is the geometry", "-o via another name", "--cxi is the input", "--cxi .lst is -o", "--cxi named .geom",
         "--cxi .geom is the geometry", "-o is a folder", "-o under a file", "--threshold 0", "--threshold 1.5",
         "--threshold nan", "--threshold text", "--batch-size 0", "unknown option", "missing checkpoint",
         "checkpoint a folder", "checkpoint not torch", "checkpoint of another attribute", "checkpoint missing keys",
         "checkpoint without input_shape", "checkpoint wrong shapes", "checkpoint unknown model",
         "checkpoint no classes", "checkpoint no class values", "checkpoint NaN weights", "NaN model outputs",
         "checkpoint for other frames", "peaks checkpoint of hit", "peaks checkpoint no threshold",
         "--cxi with --no-peaks", "--cell without --cxi", "--cell missing", "--cell not a cell",
         "missing cascade checkpoint", "cascade checkpoint of the network", "unknown finder"]


def test_the_table_lists_every_case(bad_inputs):
    assert sorted(bad_inputs) == sorted(CASES) and len(CASES) >= 25


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_exit_code_2(case, bad_inputs, setup, capsys):
    args, expected = bad_inputs[case]
    outputs = list((setup["root"] / "bad").glob("p.*"))
    code = main(["run", *args, "--quiet"] if case != "unknown option" else ["run", *args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("cxlspeaks: error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    assert list((setup["root"] / "bad").glob("p.*")) == outputs      # nothing written


@pytest.mark.parametrize("case", ["missing checkpoint", "-o is the input", "--threshold 1.5"])
def test_bad_input_through_the_installed_command(case, bad_inputs):
    args, expected = bad_inputs[case]
    result = subprocess.run([sys.executable, "-m", "cxlspeaks.cli", "run", *args], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_refused(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["run", str(setup["frames"]), "--models", str(setup["models"]), "-o", str(locked / "x.csv")]) == 2
    finally:
        locked.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


# ---------------------------------------------------------------------- good runs
def test_dash_o_writes_the_table_to_standard_output_with_integer_peak_counts(setup, tmp_path, capsys):
    assert main(["run", str(setup["frames"]), "--models", str(setup["models"]), "-o", "-", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[0] == ("frame,event,source_file,hit_probability,is_hit,photon_energy_ev,photon_energy_probability,"
                        "clen_m,clen_probability,n_peaks,n_masked,n_saturated")
    assert len(lines) == 1 + N_FRAMES
    assert all(line.split(",")[-3].isdigit() for line in lines[1:])      # n_peaks "12", not "12.0"
    out = tmp_path / "deep" / "er" / "scored.csv"                         # missing folders are created
    assert main(["run", str(setup["frames"]), "--models", str(setup["models"]), "-o", str(out), "--quiet"]) == 0
    assert out.read_text().splitlines() == lines
    table = pd.read_csv(out, dtype={"n_peaks": "Int64"})
    assert table["is_hit"].all() and table["n_peaks"].notna().all()


def test_n_peaks_is_empty_for_non_hits(setup, tmp_path):
    from cxlspeaks.pipeline import run_pipeline

    checkpoints = {a: setup["models"] / a / "checkpoint.pt" for a in ("hit", "photon_energy", "clen", "peaks")}
    cold = tmp_path / "cold.pt"
    state = checkpoint_content("hit")["model_state"]
    state["head.bias"] = torch.full_like(state["head.bias"], -20.0)
    save_checkpoint(cold, **checkpoint_content("hit", model_state=state))
    table = run_pipeline(setup["frames"], {**checkpoints, "hit": cold}, tmp_path / "t.csv")
    assert str(table["n_peaks"].dtype) == "Int64" and table["n_peaks"].isna().all()
    assert not table["is_hit"].any()
    assert (tmp_path / "t.csv").read_text().splitlines()[1].split(",")[-3] == ""


def test_cxi_writes_the_cell_file_beside_the_peaks(setup, tmp_path, capsys):
    cxi = tmp_path / "out" / "peaks.cxi"
    args = ["run", str(setup["frames"]), "--models", str(setup["models"]), "-o", str(tmp_path / "s.csv"), "--quiet"]
    assert main([*args, "--cxi", str(cxi)]) == 0
    cell = cxi.with_suffix(".cell").read_text()
    assert cell.startswith("CrystFEL unit cell file version 1.0\n")
    for line in ("lattice_type = tetragonal", "centering = P", "unique_axis = c", "a = 67.288 A", "b = 67.288 A",
                 "c = 106.582 A", "al = 90.00 deg"):
        assert line in cell.splitlines(), (line, cell)
    assert any(line.startswith(";") and "1IC6" in line and "--cell" in line for line in cell.splitlines())
    assert {p.suffix for p in cxi.parent.iterdir()} == {".cxi", ".lst", ".geom", ".cell"}
    mine = tmp_path / "lysozyme.cell"
    mine.write_text("CrystFEL unit cell file version 1.0\n\nlattice_type = tetragonal\ncentering = P\n"
                    "unique_axis = c\na = 79.1 A\nb = 79.1 A\nc = 37.9 A\nal = 90 deg\nbe = 90 deg\nga = 90 deg\n")
    assert main([*args, "--cxi", str(cxi), "--cell", str(mine)]) == 0
    assert cxi.with_suffix(".cell").read_text() == mine.read_text()
    assert capsys.readouterr().err == ""


def test_finder_cascade_gives_the_cascade_peaks(setup, tmp_path, capsys):
    """`--finder cascade` with a tiny cascade trained in-process (MODELS/peaks_cascade/checkpoint.pt): the CSV's
    n_peaks and the CXI peaks are CascadePeakFinder.find's on the same frames (prepared for the detector)."""
    from test_cascade import spot_frame

    from cxlspeaks.peaks.cascade import CascadeConfig, CascadePeakFinder
    from cxlspeaks.peaks.cascade_train import train_cascade
    from cxlspeaks.frames import FramesFile
    from cxlspeaks.cxi import read_cxi_peaks
    from cxlspeaks.run_peaks import peaks_on_good_pixels

    geometry = tiny_geometry()
    rng = np.random.default_rng(5)
    train, truths = zip(*[spot_frame(rng, 12, good=geometry.mask, shape=geometry.shape) for _ in range(8)])
    checkpoint = train_cascade(list(train), list(truths), geometry.mask, geometry=geometry,
                               config=CascadeConfig(epochs=3, min_steps=50, seed=1))
    models = tmp_path / "models"
    for attribute in ("hit", "photon_energy", "clen"):
        (models / attribute).mkdir(parents=True)
        (models / attribute / "checkpoint.pt").symlink_to(setup["models"] / attribute / "checkpoint.pt")
    CascadePeakFinder(checkpoint).save(models / "peaks_cascade" / "checkpoint.pt")
    counts = np.stack([spot_frame(rng, 10, good=geometry.mask, shape=geometry.shape)[0]
                       for _ in range(N_FRAMES)]).astype(np.uint32)
    frames = write_stack(tmp_path / "spots.h5", counts, setup["text"], compress=True)
    out, cxi = tmp_path / "scored.csv", tmp_path / "peaks.cxi"
    assert main(["run", str(frames), "--models", str(models), "--finder", "cascade", "-o", str(out),
                 "--cxi", str(cxi), "--quiet"]) == 0, capsys.readouterr().err
    table = pd.read_csv(out, dtype={"n_peaks": "Int64"})
    assert table["is_hit"].all()
    finder = CascadePeakFinder(models / "peaks_cascade" / "checkpoint.pt")
    with FramesFile(frames) as source:
        finder.prepare(source.geometry)
        expected = [peaks_on_good_pixels(finder.find(source.read(i), source.mask), source.mask)
                    for i in range(N_FRAMES)]
    assert table["n_peaks"].tolist() == [len(e) for e in expected] and sum(map(len, expected)) > 0
    for peaks, want in zip(read_cxi_peaks(cxi), expected):
        np.testing.assert_allclose(peaks[["fs", "ss"]].to_numpy(), want[["fs", "ss"]].to_numpy(), rtol=0, atol=1e-4)
    # the network stays the default: without --finder the cascade's checkpoint folder is not read
    assert main(["run", str(frames), "--models", str(models), "--quiet"]) == 2
    assert "results/models/peaks/checkpoint.pt" in capsys.readouterr().err
