"""The Snakemake workflow: dry run of the default config, a real run of config/test.yaml, reruns, bad configs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)
import numpy as np
import pandas as pd
import pytest
import yaml

from cxlspeaks.geometry import read_geometry

from conftest import REPO

BITSHUFFLE_FILTER_ID = 32008
BITSHUFFLE_LZ4 = 2  # the filter's 5th parameter: 2 = LZ4 compression after the bit shuffle
STAGES = ("reflections", "water", "simulate_shard", "assemble", "geometry", "split")
# config/test.yaml writes to its own folder (results/test), so the tiny run never touches a default run's results
TINY_RESULTS = yaml.safe_load((REPO / "config" / "test.yaml").read_text())["results_dir"]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in ``workdir``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run."""
    block = output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)}


@pytest.fixture(scope="module")
def test_run(tiny_run_checkout):
    """The README's tiny run (`snakemake --cores 2 --configfile config/test.yaml`, typed in a fresh copy of the
    repository: conftest.tiny_run_checkout): the copy and its config."""
    return tiny_run_checkout, yaml.safe_load((tiny_run_checkout / "config" / "test.yaml").read_text())


def test_dry_run_of_the_default_config_lists_every_stage_for_every_dataset(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    result = snakemake(tmp_path, "--configfile", str(REPO / "config" / "config.yaml"), "-n")
    counts = job_counts(result.stdout + result.stderr)
    n = len(config["datasets"])
    frames = config["defaults"]["frames"]
    shards = -(-frames // config["defaults"]["frames_per_shard"])
    assert n == 11
    assert counts["water"] == counts["assemble"] == counts["geometry"] == n
    assert counts["simulate_shard"] == n * shards
    assert counts["reflections"] == 1 and counts["download_structure"] == 1
    assert counts["split"] == len(config["splits"])
    assert counts["train_peaks"] == counts["train_paper_heatmap"] == counts["train_cascade"] == 1
    assert counts["peak_report"] == 1
    assert counts["find_peaks"] == 5  # network, peakfinder8 (two settings), the paper's heatmap model, cascade


def test_lint_finds_nothing_to_fix():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True)
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_contract_files_have_the_stated_layout(test_run):
    workdir, config = test_run
    for name, entry in config["datasets"].items():
        frames = workdir / TINY_RESULTS / "datasets" / name / "frames.h5"
        n_crystal = entry.get("frames", config["defaults"]["frames"])
        n_empty = round(n_crystal * entry.get("empty_percent", config["defaults"]["empty_percent"]) / 100)
        n = n_crystal + n_empty
        geometry = read_geometry(workdir / TINY_RESULTS / "datasets" / name / "detector.geom")
        shape = geometry.shape
        assert geometry.panels[0].data == "/entry/data/data" and geometry.panels[0].dims[0] == "%"
        assert geometry.photon_energy_ev == entry["photon_energy_ev"] and geometry.clen_m == entry["clen_m"]
        with h5py.File(frames) as h5:
            for key, dtype in (("data", np.uint32), ("signal", np.float32), ("label", np.uint8)):
                dset = h5[f"/entry/data/{key}"]
                assert dset.shape == (n, *shape) and dset.dtype == dtype and dset.chunks == (1, *shape)
                plist = dset.id.get_create_plist()
                filters = [plist.get_filter(k) for k in range(plist.get_nfilters())]
                assert [(f[0], f[2][4]) for f in filters] == [(BITSHUFFLE_FILTER_ID, BITSHUFFLE_LZ4)]
            assert h5["/entry/data/background"].shape == shape and h5["/entry/data/background"].dtype == np.float32
            has_peaks = h5["/entry/data/has_peaks"][()]
            assert has_peaks.dtype == bool and has_peaks.shape == (n,)
            assert has_peaks[:n_crystal].all() and not has_peaks[n_crystal:].any()
            n_peaks = h5["/entry_1/result_1/nPeaks"][()]
            max_peaks = config["defaults"]["max_peaks"]
            for key in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakH", "peakK", "peakL"):
                assert h5[f"/entry_1/result_1/{key}"].shape == (n, max_peaks)
            for key in ("astar", "bstar", "cstar"):
                axis = h5[f"/entry/crystal/{key}"][()]
                assert axis.shape == (n, 3) and axis.dtype == np.float64
                assert (np.linalg.norm(axis[:n_crystal], axis=1) > 1e7).all() and not axis[n_crystal:].any()
            assert h5["/entry/instrument/beam/photon_energy_ev"][()] == entry["photon_energy_ev"]
            assert h5["/entry/instrument/detector/clen_m"][()] == entry["clen_m"]
            assert "panel0/clen" in h5["/entry/instrument/detector/geometry"][()].decode()
            # labels are the thresholded expected signal; empty frames carry none
            signal = h5["/entry/data/signal"][()]
            label = h5["/entry/data/label"][()]
            np.testing.assert_array_equal(label, signal >= config["defaults"].get("label_threshold_photons", 0.5))
            assert not signal[n_crystal:].any() and label[:n_crystal].any()
            # the true peak lists: positions on the detector, photons above the listing threshold
            xs = h5["/entry_1/result_1/peakXPosRaw"][()]
            for i in range(n_crystal):
                k = n_peaks[i]
                assert k > 0 and ((-0.5 <= xs[i, :k]) & (xs[i, :k] < shape[1] - 0.5)).all()  # raw convention
                assert (h5["/entry_1/result_1/peakTotalIntensity"][i, :k] >= 1.0).all()
        manifest = pd.read_csv(workdir / TINY_RESULTS / "datasets" / name / "manifest.csv")
        assert list(manifest.columns[:5]) == ["frame", "has_peaks", "n_peaks", "photon_energy_ev", "clen_m"]
        assert len(manifest) == n and manifest["n_peaks"].tolist() == n_peaks.tolist()
        assert (manifest["flux"] == entry.get("flux", "normal")).all()


def test_empty_frames_are_all_different_and_differ_from_overlays(test_run):
    workdir, config = test_run
    frames, n_empty_all = [], 0
    for name, entry in config["datasets"].items():
        n_crystal = entry.get("frames", config["defaults"]["frames"])
        n_empty = round(n_crystal * entry.get("empty_percent", config["defaults"]["empty_percent"]) / 100)
        assert n_empty >= 2
        n_empty_all += n_empty
        with h5py.File(workdir / TINY_RESULTS / "datasets" / name / "frames.h5") as h5:
            data = h5["/entry/data/data"][()]
        frames += [(name, i, data[i].tobytes(), i >= n_crystal) for i in range(len(data))]
    empties = [f for f in frames if f[3]]
    assert len(empties) == n_empty_all
    for a in range(len(empties)):
        for other in frames:
            if other[:2] != empties[a][:2]:
                assert other[2] != empties[a][2]


def test_split_is_80_20_per_stratum_and_reproducible(test_run):
    workdir, config = test_run
    split = pd.read_csv(workdir / TINY_RESULTS / "splits" / "all.csv", dtype={"dataset": str})
    assert list(split.columns) == ["dataset", "frame", "subset"]
    manifests = pd.concat([pd.read_csv(workdir / TINY_RESULTS / "datasets" / d / "manifest.csv")
                           .assign(dataset=d) for d in config["datasets"]])
    merged = split.merge(manifests, on=["dataset", "frame"], validate="one_to_one")
    assert len(merged) == len(manifests)
    for _, group in merged.groupby(["dataset", "has_peaks"]):
        n_test = (group["subset"] == "test").sum()
        assert abs(n_test - 0.2 * len(group)) <= 1
    lowflux = pd.read_csv(workdir / TINY_RESULTS / "splits" / "lowflux.csv", dtype={"dataset": str})
    assert set(lowflux["dataset"]) == {"extreme"}
    # the same seed gives the same split
    from cxlspeaks.dataset import stratified_split

    again = stratified_split(manifests.reset_index(drop=True), seed=config["seed"], name="all")
    pd.testing.assert_frame_equal(again, split)


def test_changing_one_dataset_reruns_only_its_jobs(test_run, tmp_path):
    workdir, config = test_run
    changed = dict(config)
    changed["datasets"] = {k: dict(v) for k, v in config["datasets"].items()}
    changed["datasets"]["02"]["n_photons"] = 1.0e8
    path = workdir / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    target = f"{TINY_RESULTS}/datasets/02/frames.h5"
    result = snakemake(workdir, "--configfile", str(path), "-n", target)
    out = result.stdout + result.stderr
    counts = job_counts(out)
    assert counts["assemble"] == 1 and counts["simulate_shard"] == 2 and counts["water"] == 1
    assert "dataset=02" in out and "dataset=01" not in out and "reflections" not in counts
    # the unchanged config schedules nothing for the same target
    same = snakemake(workdir, "--configfile", str(workdir / "config" / "test.yaml"), "-n", target)
    assert "Nothing to be done" in same.stdout + same.stderr


def test_a_killed_simulation_job_leaves_no_trusted_file(tmp_path):
    """Kill snakemake and its job mid-shard: the shard's final path never appears, and a rerun redoes it."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["defaults"].update(frames=400, frames_per_shard=400, detector="source_single_panel")
    # two datasets, so the photon-energy and camera-length classifiers have two classes; only 01 is built
    config["datasets"] = {name: config["datasets"][name] for name in ("01", "02")}
    config["splits"] = {"all": {}}
    config["training"]["attributes"] = {a: dict(config["training"]["attributes"][a], split="all")
                                        for a in ("hit", "photon_energy", "clen")}
    config["structure"]["d_min_A"] = 2.8
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(path), "--cores", "1", f"{TINY_RESULTS}/datasets/01/frames.h5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shard = tmp_path / TINY_RESULTS / "datasets" / "01" / "shards" / "0.h5"
    deadline = time.time() + 300
    try:
        while not list(shard.parent.glob(".0.h5.*.part")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(shard.parent.glob(".0.h5.*.part")), "the shard never started"
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not shard.exists()
    assert not (tmp_path / TINY_RESULTS / "datasets" / "01" / "frames.h5").exists()
    rerun = snakemake(tmp_path, "--configfile", str(path), "-n", f"{TINY_RESULTS}/datasets/01/frames.h5")
    assert job_counts(rerun.stdout + rerun.stderr)["simulate_shard"] == 1


# ---------------------------------------------------------------------- models, reports and the pipeline
def test_reports_hold_every_attribute_with_the_oracle(test_run):
    workdir, config = test_run
    reports = workdir / TINY_RESULTS / "reports"
    for attribute in config["training"]["attributes"]:
        for name in ("confusion_matrix.csv", "confusion_matrix.png", "metrics.json", "loss.png", "accuracy.png",
                     "roc.png"):
            assert (reports / attribute / name).stat().st_size > 0, (attribute, name)
        matrix = pd.read_csv(reports / attribute / "confusion_matrix.csv", index_col=0)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    metrics = json.loads((reports / "hit" / "metrics.json").read_text())
    assert set(metrics["per_flux"]) == {"normal", "low", "extreme"}
    for flux, block in metrics["per_flux"].items():
        assert 0.5 <= block["oracle_auc"] <= 1.0 and {"accuracy", "tpr", "fpr", "roc_auc"} <= set(block)
    index = (reports / "index.html").read_text()
    for attribute in config["training"]["attributes"]:
        assert f"{attribute}/confusion_matrix.png" in index
    assert "Pipeline on the test frames" in index
    history = pd.read_csv(workdir / TINY_RESULTS / "models" / "hit" / "history.csv")
    assert len(history) == config["training"]["attributes"]["hit"]["epochs"]


def cxlspeaks_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxlspeaks.cli", *args], capture_output=True, text=True)


def test_pipeline_command_scores_a_frames_file(test_run, tmp_path):
    workdir, config = test_run
    models = workdir / TINY_RESULTS / "models"
    frames = workdir / TINY_RESULTS / "datasets" / "01" / "frames.h5"
    out = tmp_path / "scored.csv"
    result = cxlspeaks_cli("run", str(frames), "--models", str(models), "-o", str(out))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    n = config["defaults"]["frames"] + round(config["defaults"]["frames"] * config["defaults"]["empty_percent"] / 100)
    assert list(table["frame"]) == list(range(n))
    assert {"hit_probability", "is_hit", "photon_energy_ev", "clen_m"} <= set(table.columns)
    assert table.loc[~table["is_hit"], "photon_energy_ev"].isna().all()
    # the same frames as a plain /entry/data/data stack with the detector's geometry file
    plain = tmp_path / "plain.h5"
    with h5py.File(frames) as src, h5py.File(plain, "w") as dst:
        dst["/entry/data/data"] = src["/entry/data/data"][()]
    again = tmp_path / "plain.csv"
    geom = workdir / TINY_RESULTS / "datasets" / "01" / "detector.geom"
    result = cxlspeaks_cli("run", str(plain), "--models", str(models), "--geometry", str(geom), "-o", str(again))
    assert result.returncode == 0, result.stderr
    pd.testing.assert_frame_equal(pd.read_csv(again).drop(columns="source_file"), table.drop(columns="source_file"))
    summary = pd.read_csv(workdir / TINY_RESULTS / "pipeline" / "summary.csv")
    predictions = pd.read_csv(workdir / TINY_RESULTS / "pipeline" / "test_predictions.csv")
    assert summary.loc[0, "frames"] == len(predictions)


def test_pipeline_command_writes_crystfel_peak_files_for_the_hits(test_run, tmp_path):
    from cxlspeaks.frames import FramesFile
    from cxlspeaks.cxi import read_cxi_peak_frames, read_cxi_peaks
    from cxlspeaks.peaks.network import NetworkPeakFinder

    workdir, _ = test_run
    models = workdir / TINY_RESULTS / "models"
    frames = workdir / TINY_RESULTS / "datasets" / "01" / "frames.h5"
    out, cxi = tmp_path / "scored.csv", tmp_path / "out" / "peaks.cxi"
    result = cxlspeaks_cli("run", str(frames), "--models", str(models), "-o", str(out), "--cxi", str(cxi))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    hits = table.loc[table["is_hit"], "frame"].tolist()
    assert table.loc[~table["is_hit"], "n_peaks"].isna().all()
    # the .lst names exactly the hits, as CrystFEL events of the CXI file
    lines = cxi.with_suffix(".lst").read_text().splitlines()
    assert lines == [f"{cxi.resolve()} //{i}" for i in hits]
    geom = cxi.with_suffix(".geom").read_text()
    assert "peak_list = /entry_1/result_1" in geom and "peak_list_type = cxi" in geom
    assert "/data = /entry/data/data" in geom
    # the peaks read back are the network's peaks of each hit, and the frames are reachable through the file
    assert list(read_cxi_peak_frames(cxi)) == hits
    finder = NetworkPeakFinder(models / "peaks" / "checkpoint.pt")
    with h5py.File(cxi) as h5, h5py.File(frames) as src:
        np.testing.assert_array_equal(h5["/entry/data/data"][hits[0]], src["/entry/data/data"][hits[0]])
    with FramesFile(frames) as source:
        for i, peaks in zip(hits, read_cxi_peaks(cxi)):
            expected = finder.find(source.read(i), source.mask)
            assert len(peaks) == len(expected) == table.loc[table["frame"] == i, "n_peaks"].item()
            np.testing.assert_allclose(peaks[["fs", "ss"]].to_numpy(), expected[["fs", "ss"]].to_numpy(),
                                       rtol=0, atol=1e-4)  # float32 in the file


def test_peak_report_compares_every_finder_per_flux_level(test_run):
    workdir, config = test_run
    reports = workdir / TINY_RESULTS / "reports"
    table = pd.read_csv(reports / "peaks" / "metrics.csv")
    finders = {"network", "peakfinder8", "peakfinder8_crystfel", "paper_heatmap", "cascade"}
    assert set(table["finder"]) == finders
    assert set(table["flux"]) == {"normal", "low", "extreme"}
    assert set(table["min_photons"]) == {0.0, 3.0, 10.0}
    assert len(table) == len(finders) * 3 * 3
    # counts are consistent: recall and precision follow from tp, fp, fn; fewer reflections above more photons
    ok = table["tp"] + table["fn"] > 0
    np.testing.assert_allclose(table.loc[ok, "recall"], table.loc[ok, "tp"] / (table.loc[ok, "tp"]
                                                                             + table.loc[ok, "fn"]))
    for _, group in table.groupby(["finder", "flux"]):
        assert group.sort_values("min_photons")["n_true"].is_monotonic_decreasing
    assert (table["frames_per_s"] > 0).all()
    for name in ("metrics.json", "recall_by_photons.csv", "recall_vs_photons.png", "examples.png"):
        assert (reports / "peaks" / name).stat().st_size > 0
    assert json.loads((reports / "peaks" / "metrics.json").read_text())[0]["finder"] in finders
    # every finder ran on the same test frames of the split
    split = pd.read_csv(workdir / TINY_RESULTS / "splits" / f"{config['peaks']['split']}.csv",
                        dtype={"dataset": str})
    n_test = int((split["subset"] == "test").sum())
    assert table.groupby("finder")["n_frames"].sum().eq(n_test * 3).all()
    assert "Peak finding" in (reports / "index.html").read_text()
    # the cascade finder's model, trained by train_cascade
    assert (workdir / TINY_RESULTS / "models" / "peaks_cascade" / "checkpoint.pt").stat().st_size > 0


def test_pipeline_command_rejects_bad_input_with_exit_code_2(test_run, tmp_path):
    workdir, _ = test_run
    models = workdir / TINY_RESULTS / "models"
    frames = workdir / TINY_RESULTS / "datasets" / "01" / "frames.h5"
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    misshaped = tmp_path / "misshaped.h5"
    with h5py.File(misshaped, "w") as h5:
        h5["/entry/data/data"] = np.zeros((2, 30, 40), np.uint32)
    geom = workdir / TINY_RESULTS / "datasets" / "01" / "detector.geom"
    cases = [
        (["run", str(tmp_path / "missing.h5"), "--models", str(models)], "file not found"),
        (["run", str(truncated), "--models", str(models)], str(truncated)),
        (["run", str(misshaped), "--models", str(models), "--geometry", str(geom)], "frame shape"),
        (["run", str(frames), "--models", str(models), "--hit-checkpoint",
          str(models / "clen" / "checkpoint.pt")], "is for attribute 'clen', not 'hit'"),
        (["run", str(frames), "--models", str(tmp_path)], "checkpoint not found"),
        (["run", str(frames), "--models", str(models), "--no-peaks", "--cxi", str(tmp_path / "p.cxi")],
         "--cxi needs peak finding"),
        (["run", str(frames), "--models", str(models), "--peaks-checkpoint", str(models / "hit" / "checkpoint.pt")],
         "is for attribute 'hit', not 'peaks'"),
    ]
    for args, message in cases:
        result = cxlspeaks_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr


def test_index_stage_and_detection_bound_of_the_tiny_run(test_run):
    """indexing.csv (skipped in one line without indexamajig, else indexed), bound.csv and their report sections."""
    from cxlspeaks.peaks.indexing import SKIPPED_NOT_FOUND, find_indexamajig

    workdir, config = test_run
    peaks = workdir / TINY_RESULTS / "reports" / "peaks"
    table = pd.read_csv(peaks / "indexing.csv", dtype={"dataset": str})
    finders = set(config["peaks"].get("finders", ["network", "peakfinder8", "peakfinder8_crystfel",
                                                  "paper_heatmap", "cascade"]))
    assert set(table["finder"]) == finders | {"truth"}
    log = (workdir / TINY_RESULTS / "logs" / "index_peaks.log").read_text()
    if find_indexamajig() is None:
        assert table["status"].str.startswith(SKIPPED_NOT_FOUND).all() and table["indexed"].isna().all()
        assert log.count("\n") == 1 and SKIPPED_NOT_FOUND in log
    else:
        assert (table["status"] == "ok").all(), log[-2000:]
        assert (table["correct"] + table["wrong"] <= table["indexed"]).all()
    bound = pd.read_csv(peaks / "bound.csv")
    recall = pd.read_csv(peaks / "recall_by_photons.csv")
    both = bound.merge(recall, on=["finder", "flux", "bin"], suffixes=("", "_finder"))
    assert len(both) == len(recall) == len(finders) * 3 * 4
    assert (both["n_true"] == both["n_true_finder"]).all()
    assert both["bound_recall"].dropna().between(0, 1).all()
    html = (workdir / TINY_RESULTS / "reports" / "index.html").read_text()
    assert "Detection bound" in html and "Indexing (CrystFEL indexamajig)" in html
