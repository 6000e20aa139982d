"""Peak matching and metrics on hand-made peak lists with hand-computed answers; true peaks of a frames file."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest

from cxlspeaks.io import DataFileError, FrameStackWriter
from cxlspeaks.peaks.matching import (
    METRIC_NAMES,
    PEAK_COLUMNS,
    empty_peak_table,
    match_frames,
    match_peaks,
    metrics_table,
    peak_metrics,
    recall_by_photons,
)
from cxlspeaks.peaks.truth import read_true_peaks


def peaks(rows, columns=("fs", "ss")) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(-1, len(columns)), columns=list(columns))


# T0 (20 photons) and T1 (5 photons) are 3 px apart; T2 (2 photons) is far away.
TRUTH = peaks([(10.0, 10.0, 20.0), (13.0, 10.0, 5.0), (40.0, 40.0, 2.0)], ("fs", "ss", "photons"))
# P0: 1.4 px from T0 and 1.6 px from T1.  P1: 0.5 px from T0.  P2: 2.5 px from T2.  P3: a duplicate of P1.
# Nearest first: P1-T0 (0.5) wins, then P0 cannot take T0 and takes T1 (1.6); P2 is out of reach, P3 loses the
# exact tie with P1 by index. Matching in prediction order with each prediction's nearest free peak would instead
# give P0-T0 and leave P1 and T1 unmatched.
PRED = peaks([(11.4, 10.0, 0.9), (10.3, 10.4, 0.8), (42.5, 40.0, 0.7), (10.3, 10.4, 0.6)], ("fs", "ss", "score"))


def test_match_peaks_is_one_to_one_nearest_first():
    m = match_peaks(PRED, TRUTH)
    assert list(m.columns) == ["pred_index", "true_index", "distance_px", "dfs", "dss"]
    assert m["pred_index"].tolist() == [0, 1]
    assert m["true_index"].tolist() == [1, 0]
    assert m["distance_px"].to_numpy() == pytest.approx([1.6, 0.5])
    assert m["dfs"].to_numpy() == pytest.approx([-1.6, 0.3])
    assert m["dss"].to_numpy() == pytest.approx([0.0, 0.4])
    assert m["pred_index"].dtype == np.int64 and m["true_index"].dtype == np.int64


def test_match_peaks_tie_goes_to_the_lower_index_whatever_the_order():
    truth = peaks([(0.0, 0.0)])
    pred = peaks([(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)])  # all exactly 1 px away
    assert match_peaks(pred, truth)["pred_index"].tolist() == [0]
    assert match_peaks(pred.iloc[::-1], truth)["pred_index"].tolist() == [0]  # positional: now (-1, 0)
    two_true = peaks([(1.0, 0.0), (-1.0, 0.0)])
    m = match_peaks(peaks([(0.0, 0.0)]), two_true)
    assert m["true_index"].tolist() == [0]


def test_radius_boundary_is_inclusive():
    truth = peaks([(0.0, 0.0)])
    assert len(match_peaks(peaks([(2.0, 0.0)]), truth)) == 1
    assert len(match_peaks(peaks([(0.0, -2.0)]), truth)) == 1
    assert len(match_peaks(peaks([(2.0 + 1e-9, 0.0)]), truth)) == 0
    assert len(match_peaks(peaks([(3.0, 4.0)]), truth, radius_px=5.0)) == 1
    assert len(match_peaks(peaks([(3.0, 4.0)]), truth, radius_px=4.999999)) == 0
    assert match_peaks(peaks([(2.0, 0.0)]), truth)["distance_px"].tolist() == [2.0]


def test_match_peaks_empty_and_nonfinite_inputs():
    empty = empty_peak_table()
    for pred, true in ((empty, TRUTH), (PRED, empty), (empty, empty)):
        m = match_peaks(pred, true)
        assert len(m) == 0 and list(m.columns) == ["pred_index", "true_index", "distance_px", "dfs", "dss"]
    m = match_peaks(peaks([(np.nan, 10.0), (10.0, 10.0)]), TRUTH)
    assert m["pred_index"].tolist() == [1] and m["true_index"].tolist() == [0]
    with pytest.raises(ValueError, match="ss"):
        match_peaks(pd.DataFrame({"fs": [1.0]}), TRUTH)


def test_empty_peak_table_is_typed():
    table = empty_peak_table(extra=("background",))
    assert list(table.columns) == [*PEAK_COLUMNS, "background"]
    assert len(table) == 0 and all(table[c].dtype == np.float64 for c in table.columns)


def test_metrics_of_one_frame_by_hand():
    truth_table, prediction_table = match_frames([PRED], [TRUTH])
    assert truth_table["matched"].tolist() == [True, True, False]
    assert truth_table["pred_peak"].tolist() == [1, 0, -1]
    assert truth_table["error_px"].to_numpy()[:2] == pytest.approx([0.5, 1.6])
    assert math.isnan(truth_table["error_px"].iloc[2])
    assert prediction_table["matched"].tolist() == [True, True, False, False]
    assert prediction_table["matched_true_photons"].to_numpy()[:2].tolist() == [5.0, 20.0]
    assert prediction_table["matched_true_photons"].iloc[2:].isna().all()
    assert prediction_table["score"].tolist() == [0.9, 0.8, 0.7, 0.6]
    assert truth_table["item"].tolist() == [0, 0, 0]

    m = peak_metrics(truth_table, prediction_table, frames=1)
    assert set(m) == set(METRIC_NAMES)
    assert (m["n_true"], m["n_predicted"], m["tp"], m["fp"], m["fn"], m["n_ignored"]) == (3, 4, 2, 2, 1, 0)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2PR/(P+R) = (2/3)/(7/6)
    assert m["rms_px"] == pytest.approx(math.sqrt((0.5 ** 2 + 1.6 ** 2) / 2))
    assert m["mean_dfs"] == pytest.approx((0.3 - 1.6) / 2)
    assert m["mean_dss"] == pytest.approx(0.2)
    assert m["false_per_frame"] == pytest.approx(2.0)


def test_min_photons_ignores_predictions_matched_to_weak_reflections():
    truth_table, prediction_table = match_frames([PRED], [TRUTH])
    # >= 10 photons: only T0 counts; P0 (matched to T1, 5 photons) is neither true nor false positive
    m = peak_metrics(truth_table, prediction_table, min_photons=10)
    assert (m["n_true"], m["tp"], m["fp"], m["fn"], m["n_ignored"]) == (1, 1, 2, 0, 1)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(0.5)
    assert m["rms_px"] == pytest.approx(0.5)
    # >= 3 photons: T2 (2 photons, missed) leaves recall
    m = peak_metrics(truth_table, prediction_table, min_photons=3)
    assert (m["n_true"], m["tp"], m["fp"], m["fn"], m["n_ignored"]) == (2, 2, 2, 0, 0)
    assert m["recall"] == pytest.approx(1.0)
    # the threshold is inclusive: 5 photons count at min_photons = 5
    assert peak_metrics(truth_table, prediction_table, min_photons=5)["n_true"] == 2
    assert peak_metrics(truth_table, prediction_table, min_photons=5.001)["n_true"] == 1


def test_empty_frames_and_false_per_frame():
    keys = pd.DataFrame({"dataset": ["01", "01", "01"], "frame": [7, 8, 9], "flux": [1.0, 1.0, 2.0]})
    predicted = [PRED, peaks([(5.0, 5.0)]), empty_peak_table()]
    truth = [TRUTH, TRUTH.iloc[:0], TRUTH.iloc[:0]]
    truth_table, prediction_table = match_frames(predicted, truth, keys=keys)
    assert list(truth_table.columns[:3]) == ["dataset", "frame", "flux"]
    assert truth_table["frame"].tolist() == [7, 7, 7]
    assert prediction_table["frame"].tolist() == [7, 7, 7, 7, 8]
    assert prediction_table["score"].isna().tolist() == [False] * 4 + [True]

    m = peak_metrics(truth_table, prediction_table, frames=keys)
    assert (m["n_frames"], m["tp"], m["fp"], m["fn"]) == (3, 2, 3, 1)
    assert m["false_per_frame"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(0.5)  # 2*2 / (2*2 + 3 + 1)
    assert peak_metrics(truth_table, prediction_table, frames=3)["false_per_frame"] == pytest.approx(1.0)
    assert math.isnan(peak_metrics(truth_table, prediction_table)["false_per_frame"])  # frame count unknown

    table = metrics_table(truth_table, prediction_table, by=["frame"], min_photons=(0, 10), frames=keys)
    assert list(table.columns) == ["frame", "min_photons", *METRIC_NAMES]
    assert table["frame"].tolist() == [7, 7, 8, 8, 9, 9]
    row8 = table[(table["frame"] == 8) & (table["min_photons"] == 0)].iloc[0]
    assert (row8["n_true"], row8["fp"]) == (0, 1)
    assert row8["precision"] == 0.0 and math.isnan(row8["recall"]) and row8["f1"] == 0.0
    assert row8["false_per_frame"] == 1.0
    row9 = table[table["frame"] == 9].iloc[0]  # no peaks at all: known only through `frames`
    assert (row9["n_frames"], row9["fp"], row9["false_per_frame"]) == (1, 0, 0.0)
    assert math.isnan(row9["precision"]) and math.isnan(row9["recall"]) and math.isnan(row9["f1"])
    row7 = table[(table["frame"] == 7) & (table["min_photons"] == 10)].iloc[0]
    assert (row7["tp"], row7["fp"], row7["n_ignored"]) == (1, 2, 1)

    by_flux = metrics_table(truth_table, prediction_table, by="flux", min_photons=0, frames=keys)
    assert by_flux["flux"].tolist() == [1.0, 2.0]
    assert by_flux["false_per_frame"].tolist() == [1.5, 0.0]


def test_no_predictions_gives_zero_recall_and_f1():
    truth_table, prediction_table = match_frames([empty_peak_table()], [TRUTH])
    m = peak_metrics(truth_table, prediction_table, frames=1)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 3)
    assert math.isnan(m["precision"]) and m["recall"] == 0.0 and m["f1"] == 0.0
    assert math.isnan(m["rms_px"]) and m["false_per_frame"] == 0.0


def test_match_frames_checks_its_inputs():
    with pytest.raises(ValueError, match="predicted tables"):
        match_frames([PRED], [TRUTH, TRUTH])
    with pytest.raises(ValueError, match="rows"):
        match_frames([PRED], [TRUTH], keys=pd.DataFrame({"frame": [1, 2]}))
    with pytest.raises(ValueError, match="clash"):
        match_frames([PRED], [TRUTH], keys=pd.DataFrame({"fs": [1]}))


def test_recall_by_photons_bins():
    photons = [0.5, 1.0, 2.9, 3.0, 9.0, 10.0, 29.9, 30.0, 1000.0]
    truth = pd.DataFrame({"fs": 10.0 * np.arange(len(photons)), "ss": 0.0, "photons": photons})
    hit = [True, False, True, True, True, False, False, True, True]
    pred = truth.loc[hit, ["fs", "ss"]].copy()
    pred["fs"] += 0.5
    truth_table, _ = match_frames([pred], [truth])
    table = recall_by_photons(truth_table)
    assert table["bin"].tolist() == ["1-3", "3-10", "10-30", ">=30"]
    assert table["n_true"].tolist() == [2, 2, 2, 2]  # 0.5 photons is in no bin
    assert table["n_matched"].tolist() == [1, 2, 0, 2]
    assert table["recall"].tolist()[:2] == [0.5, 1.0]
    assert table["recall"].tolist()[2:] == [0.0, 1.0]
    assert table["rms_px"].tolist()[:2] == [0.5, 0.5] and math.isnan(table["rms_px"].iloc[2])
    custom = recall_by_photons(truth_table, edges=(0, 1, np.inf))
    assert custom["bin"].tolist() == ["0-1", ">=1"] and custom["n_true"].tolist() == [1, 8]
    empty_bin = recall_by_photons(truth_table, edges=(2000, 3000))
    assert empty_bin["n_true"].tolist() == [0] and math.isnan(empty_bin["recall"].iloc[0])
    with pytest.raises(ValueError, match="increasing"):
        recall_by_photons(truth_table, edges=(3, 1))


def test_recall_by_photons_per_group():
    keys = pd.DataFrame({"finder": ["a", "b"]})
    truth = peaks([(0.0, 0.0, 5.0)], ("fs", "ss", "photons"))
    truth_table, _ = match_frames([peaks([(0.0, 0.0)]), empty_peak_table()], [truth, truth], keys=keys)
    table = recall_by_photons(truth_table, edges=(1, 10), by=["finder"])
    assert table["finder"].tolist() == ["a", "b"] and table["recall"].tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------- true peaks of a frames file
def write_frames(path, peak_lists, shape=(8, 8), max_peaks=4):
    with FrameStackWriter(path, len(peak_lists), shape, max_peaks) as writer:
        for i, p in enumerate(peak_lists):
            writer.write_frame(i, np.full(shape, i, np.uint32), None, None, peaks=p)


def peak_arrays(fs, ss, photons, hkl):
    hkl = np.asarray(hkl)
    return {"peakXPosRaw": np.asarray(fs), "peakYPosRaw": np.asarray(ss), "peakTotalIntensity": np.asarray(photons),
            "peakH": hkl[:, 0], "peakK": hkl[:, 1], "peakL": hkl[:, 2]}


def test_read_true_peaks_of_a_frames_file(tmp_path):
    path = tmp_path / "frames.h5"
    first = peak_arrays([1.25, 6.5], [2.0, 3.75], [12.5, 0.75], [(1, 2, 3), (-1, 0, 4)])
    last = peak_arrays([0.5, 1.5, 2.5], [7.0, 6.0, 5.0], [1.0, 2.0, 3.0], [(0, 0, 1), (0, 0, 2), (0, 0, 3)])
    write_frames(path, [first, None, last])
    tables = read_true_peaks(path)
    assert len(tables) == 3
    assert list(tables[0].columns) == ["fs", "ss", "photons", "h", "k", "l"]
    expected0 = pd.DataFrame({"fs": [1.25, 6.5], "ss": [2.0, 3.75], "photons": [12.5, 0.75],
                              "h": [1, -1], "k": [2, 0], "l": [3, 4]})
    pd.testing.assert_frame_equal(tables[0], expected0)
    assert len(tables[1]) == 0 and list(tables[1].columns) == list(expected0.columns)
    assert tables[1]["fs"].dtype == np.float64 and tables[1]["h"].dtype == np.int64
    assert tables[2]["l"].tolist() == [1, 2, 3] and tables[2]["fs"].tolist() == [0.5, 1.5, 2.5]
    subset = read_true_peaks(path, frames=[2, 0, 2])
    assert [len(t) for t in subset] == [3, 2, 3]
    pd.testing.assert_frame_equal(subset[1], expected0)
    assert read_true_peaks(path, frames=[]) == []
    with pytest.raises(DataFileError, match="frame 3 out of range"):
        read_true_peaks(path, frames=[0, 3])


def test_read_true_peaks_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(DataFileError, match="missing.h5"):
        read_true_peaks(missing)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataFileError, match="corrupt.h5"):
        read_true_peaks(corrupt)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as h5:
        h5["/entry_1/result_1/nPeaks"] = np.zeros(2, np.int32)
    with pytest.raises(DataFileError, match="bare.h5.*peakXPosRaw"):
        read_true_peaks(bare)
