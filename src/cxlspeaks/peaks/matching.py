"""Peak tables and the matching of predicted peaks to true reflections (read by :mod:`.truth`), with the metrics.

Evaluation protocol (docs/DESIGN.md, "Evaluation protocol"): *a predicted peak matches a true reflection within
2 px (one-to-one, nearest first); precision, recall, F1, RMS position error of matches; recall binned by expected
photons of the reflection.*

Peak tables
    A peak table is a :class:`pandas.DataFrame` with one row per peak and at least the float64 columns ``fs``,
    ``ss`` (raw convention: the pixel centre at the integer index, fs = x, ss = y; CrystFEL adds 0.5 when it
    reads CXI positions), ``photons`` (integrated photons), ``snr`` and ``score`` (the finder's confidence, larger
    = surer). True-peak tables (:func:`cxlspeaks.peaks.truth.read_true_peaks`) have ``fs``, ``ss``, ``photons``
    (the expected photons of the reflection) and the Miller indices ``h``, ``k``, ``l``.

Matching rule (:func:`match_peaks`)
    Every (predicted, true) pair whose Euclidean distance is <= ``radius_px`` (inclusive: exactly 2.0 px matches)
    is a candidate. Candidates are sorted by distance, ties by predicted index, then true index (positional
    indices), and accepted greedily when neither peak is used yet. So each prediction matches at most one true
    reflection and vice versa, and the nearest pairs win. Peaks with a non-finite position never match. Matching
    always uses *all* true reflections, whatever photon threshold the metrics apply later.

Metrics (:func:`peak_metrics`, threshold ``min_photons``)
    Only true reflections with ``photons >= min_photons`` are *counted*. A prediction matched to a reflection below
    the threshold is *ignored* (neither true nor false positive), and the weak reflection leaves recall.

    - ``tp``: counted true reflections that are matched (= predictions matched to a counted reflection)
    - ``fp``: unmatched predictions; ``fn``: counted true reflections that are unmatched
    - ``n_ignored``: predictions matched to a reflection below ``min_photons``
    - ``precision = tp / (tp + fp)``: NaN when ``tp + fp == 0`` (no prediction counts)
    - ``recall = tp / (tp + fn)``: NaN when ``tp + fn == 0`` (no true reflection counts)
    - ``f1 = 2 tp / (2 tp + fp + fn)`` (equal to 2PR/(P+R) whenever both are defined): NaN only when
      ``tp + fp + fn == 0``; it is 0 when nothing is found although there are true reflections, and 0 when there
      are predictions but no counted reflection (e.g. empty frames)
    - ``rms_px = sqrt(mean(error_px**2))``, ``mean_dfs``, ``mean_dss`` (the bias, predicted - true) over the tp
      matches: NaN when ``tp == 0``
    - ``false_per_frame = fp / n_frames``: the frame count is not in the tables (a frame with neither true nor
      predicted peaks has no row), so it comes from the ``frames`` argument (a count, or the frame-key table given
      to :func:`match_frames` as ``keys``); without it ``n_frames`` and ``false_per_frame`` are NaN.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree


PEAK_COLUMNS = ("fs", "ss", "photons", "snr", "score")
MATCH_COLUMNS = ("pred_index", "true_index", "distance_px", "dfs", "dss")
# per-peak columns of the tables made by match_frames (everything else there is a frame-key column)
TRUTH_TABLE_COLUMNS = ("peak", "fs", "ss", "photons", "matched", "error_px", "dfs", "dss", "pred_peak")
PREDICTION_TABLE_COLUMNS = ("peak", "fs", "ss", "photons", "snr", "score", "matched", "true_peak",
                            "matched_true_photons", "error_px")
METRIC_NAMES = ("n_frames", "n_true", "n_predicted", "tp", "fp", "fn", "n_ignored", "precision", "recall", "f1",
                "rms_px", "mean_dfs", "mean_dss", "false_per_frame")


# ---------------------------------------------------------------------- tables
def empty_peak_table(extra: Sequence[str] = ()) -> pd.DataFrame:
    """A peak table with no rows: the float64 columns of PEAK_COLUMNS, then ``extra`` (also float64)."""
    columns = list(PEAK_COLUMNS) + [c for c in extra if c not in PEAK_COLUMNS]
    return pd.DataFrame({c: np.empty(0, dtype=np.float64) for c in columns})


# ---------------------------------------------------------------------- matching
def _positions(table: pd.DataFrame, what: str) -> np.ndarray:
    missing = [c for c in ("fs", "ss") if c not in table.columns]
    if missing:
        raise ValueError(f"{what} peak table has no column {', '.join(missing)}")
    return np.column_stack([table["fs"].to_numpy(np.float64), table["ss"].to_numpy(np.float64)]).reshape(-1, 2)


def _empty_matches() -> pd.DataFrame:
    return pd.DataFrame({"pred_index": np.empty(0, np.int64), "true_index": np.empty(0, np.int64),
                         "distance_px": np.empty(0), "dfs": np.empty(0), "dss": np.empty(0)})


def match_peaks(predicted: pd.DataFrame, truth: pd.DataFrame, radius_px: float = 2.0) -> pd.DataFrame:
    """Match predicted peaks to true reflections one-to-one, nearest first, within ``radius_px`` (inclusive).

    All pairs with distance <= radius_px are sorted by (distance, pred_index, true_index) and accepted greedily
    when neither peak is used yet. Returns one row per match, ordered by pred_index: pred_index, true_index
    (positional indices into ``predicted`` and ``truth``, int64), distance_px, dfs, dss (predicted - true, px).
    """
    radius_px = float(radius_px)
    if not (np.isfinite(radius_px) and radius_px >= 0):
        raise ValueError(f"radius_px must be a finite number >= 0, got {radius_px}")
    pred = _positions(predicted, "predicted")
    true = _positions(truth, "true")
    ok_p = np.flatnonzero(np.isfinite(pred).all(axis=1))
    ok_t = np.flatnonzero(np.isfinite(true).all(axis=1))
    if ok_p.size == 0 or ok_t.size == 0:
        return _empty_matches()
    # candidates from the trees with a slightly larger radius; the exact test is the hypot below
    pairs = cKDTree(pred[ok_p]).sparse_distance_matrix(
        cKDTree(true[ok_t]), radius_px * (1 + 1e-9) + 1e-12, output_type="ndarray")
    pi = ok_p[pairs["i"].astype(np.int64)]
    ti = ok_t[pairs["j"].astype(np.int64)]
    dfs = pred[pi, 0] - true[ti, 0]
    dss = pred[pi, 1] - true[ti, 1]
    dist = np.hypot(dfs, dss)
    keep = dist <= radius_px
    pi, ti, dfs, dss, dist = pi[keep], ti[keep], dfs[keep], dss[keep], dist[keep]
    order = np.lexsort((ti, pi, dist))
    used_p: set[int] = set()
    used_t: set[int] = set()
    accepted = []
    for k in order:
        p, t = int(pi[k]), int(ti[k])
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        accepted.append(k)
    if not accepted:
        return _empty_matches()
    acc = np.asarray(accepted, dtype=np.int64)
    acc = acc[np.argsort(pi[acc], kind="stable")]
    return pd.DataFrame({"pred_index": pi[acc], "true_index": ti[acc], "distance_px": dist[acc],
                         "dfs": dfs[acc], "dss": dss[acc]})


def _frame_keys(keys: pd.DataFrame | None, n: int) -> pd.DataFrame:
    if keys is None:
        return pd.DataFrame({"item": np.arange(n, dtype=np.int64)})
    if len(keys) != n:
        raise ValueError(f"keys has {len(keys)} rows for {n} frames")
    clash = set(keys.columns) & (set(TRUTH_TABLE_COLUMNS) | set(PREDICTION_TABLE_COLUMNS) | {"h", "k", "l"})
    if clash:
        raise ValueError(f"keys columns {sorted(clash)} clash with the per-peak columns")
    return keys.reset_index(drop=True)


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name in table.columns:
        return table[name].to_numpy(np.float64)
    return np.full(len(table), np.nan)


def match_frames(predicted: Sequence[pd.DataFrame], truth: Sequence[pd.DataFrame], radius_px: float = 2.0,
                 keys: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match frame by frame (:func:`match_peaks`); returns ``(truth_table, prediction_table)``.

    ``keys`` holds one row per frame (e.g. dataset, frame, flux, finder); its columns lead both tables. Default:
    one column ``item`` = the frame's position in the sequences.

    truth_table, one row per true reflection: key columns, peak (index in its frame's table), fs, ss, photons,
    matched (bool), error_px, dfs, dss (predicted - true; NaN when unmatched), pred_peak (the matched prediction's
    index in its frame, -1 when unmatched), and h, k, l when every truth table has them.

    prediction_table, one row per predicted peak: key columns, peak, fs, ss, photons, snr, score (NaN where the
    table lacks the column), matched (bool), true_peak (-1 when unmatched), matched_true_photons and error_px
    (NaN when unmatched).

    Frames without peaks leave no rows; pass ``keys`` (or its length) as ``frames`` to :func:`peak_metrics`.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predicted tables for {len(truth)} truth tables")
    n = len(truth)
    keys = _frame_keys(keys, n)
    with_hkl = n > 0 and all(all(c in t.columns for c in ("h", "k", "l")) for t in truth)
    t_cols: dict[str, list[np.ndarray]] = {c: [] for c in TRUTH_TABLE_COLUMNS}
    p_cols: dict[str, list[np.ndarray]] = {c: [] for c in PREDICTION_TABLE_COLUMNS}
    hkl: dict[str, list[np.ndarray]] = {c: [] for c in ("h", "k", "l")}
    t_frame, p_frame = [], []
    for i, (pred, true) in enumerate(zip(predicted, truth)):
        m = match_peaks(pred, true, radius_px)
        nt, npred = len(true), len(pred)
        pi, ti = m["pred_index"].to_numpy(), m["true_index"].to_numpy()
        t_photons = _column(true, "photons")

        matched_t = np.zeros(nt, bool)
        matched_t[ti] = True
        error = np.full(nt, np.nan)
        error[ti] = m["distance_px"].to_numpy()
        dfs = np.full(nt, np.nan)
        dfs[ti] = m["dfs"].to_numpy()
        dss = np.full(nt, np.nan)
        dss[ti] = m["dss"].to_numpy()
        pred_peak = np.full(nt, -1, np.int64)
        pred_peak[ti] = pi
        for c, v in zip(TRUTH_TABLE_COLUMNS, (np.arange(nt), _column(true, "fs"), _column(true, "ss"), t_photons,
                                              matched_t, error, dfs, dss, pred_peak)):
            t_cols[c].append(v)
        if with_hkl:
            for c in hkl:
                hkl[c].append(true[c].to_numpy(np.int64))
        t_frame.append(np.full(nt, i, np.int64))

        matched_p = np.zeros(npred, bool)
        matched_p[pi] = True
        true_peak = np.full(npred, -1, np.int64)
        true_peak[pi] = ti
        mtp = np.full(npred, np.nan)
        mtp[pi] = t_photons[ti]
        p_error = np.full(npred, np.nan)
        p_error[pi] = m["distance_px"].to_numpy()
        for c, v in zip(PREDICTION_TABLE_COLUMNS,
                        (np.arange(npred), _column(pred, "fs"), _column(pred, "ss"), _column(pred, "photons"),
                         _column(pred, "snr"), _column(pred, "score"), matched_p, true_peak, mtp, p_error)):
            p_cols[c].append(v)
        p_frame.append(np.full(npred, i, np.int64))

    def assemble(cols: dict[str, list[np.ndarray]], frame_rows: list[np.ndarray], extra=None) -> pd.DataFrame:
        rows = np.concatenate(frame_rows) if frame_rows else np.empty(0, np.int64)
        table = keys.iloc[rows].reset_index(drop=True)
        dtypes = {"peak": np.int64, "matched": bool, "pred_peak": np.int64, "true_peak": np.int64}
        for c, parts in list(cols.items()) + list((extra or {}).items()):
            dtype = dtypes.get(c, np.int64 if c in ("h", "k", "l") else np.float64)
            table[c] = np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)
        return table

    truth_table = assemble(t_cols, t_frame, hkl if with_hkl else None)
    prediction_table = assemble(p_cols, p_frame)
    return truth_table, prediction_table


# ---------------------------------------------------------------------- metrics
def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _frame_count(frames) -> float:
    if frames is None:
        return float("nan")
    if isinstance(frames, (pd.DataFrame, pd.Series)):
        return float(len(frames))
    return float(frames)


def peak_metrics(truth_table: pd.DataFrame, prediction_table: pd.DataFrame, min_photons: float = 0.0,
                 frames: int | pd.DataFrame | None = None) -> dict:
    """Precision, recall, F1, RMS error and bias, counting true reflections with photons >= ``min_photons``.

    Tables as made by :func:`match_frames`. ``frames``: the number of frames (or the frame-key table, one row per
    frame) behind the tables, for ``false_per_frame``; NaN without it. Definitions and edge cases: see the
    module docstring. Returns a dict with the keys METRIC_NAMES (counts as int, the rest float).
    """
    t_photons = truth_table["photons"].to_numpy(np.float64)
    counted = t_photons >= min_photons
    t_matched = truth_table["matched"].to_numpy(bool)
    hits = counted & t_matched
    tp = int(hits.sum())
    n_true = int(counted.sum())
    fn = n_true - tp
    p_matched = prediction_table["matched"].to_numpy(bool)
    mtp = prediction_table["matched_true_photons"].to_numpy(np.float64)
    fp = int((~p_matched).sum())
    n_ignored = int((p_matched & ~(mtp >= min_photons)).sum())
    n_frames = _frame_count(frames)
    if tp:
        err = truth_table["error_px"].to_numpy(np.float64)[hits]
        rms = float(np.sqrt(np.mean(err ** 2)))
        mean_dfs = float(truth_table["dfs"].to_numpy(np.float64)[hits].mean())
        mean_dss = float(truth_table["dss"].to_numpy(np.float64)[hits].mean())
    else:
        rms = mean_dfs = mean_dss = float("nan")
    return {
        "n_frames": n_frames, "n_true": n_true, "n_predicted": len(prediction_table),
        "tp": tp, "fp": fp, "fn": fn, "n_ignored": n_ignored,
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "rms_px": rms, "mean_dfs": mean_dfs, "mean_dss": mean_dss,
        "false_per_frame": _ratio(fp, n_frames) if np.isfinite(n_frames) else float("nan"),
    }


def best_score_threshold(found: Sequence[pd.DataFrame], truth: Sequence[pd.DataFrame], thresholds: Sequence[float],
                         radius_px: float, min_photons: float) -> tuple[float, pd.DataFrame]:
    """The score threshold with the best F1 over frames: each frame's found peaks (a ``score`` column, found at or
    below the lowest threshold) are cut at every threshold, matched to its true reflections within ``radius_px``
    and scored for reflections of at least ``min_photons`` (:func:`peak_metrics`).

    Returns:
        the best threshold and the scan, a table of threshold, precision, recall, f1 (one row per threshold).
    """
    scan = []
    for threshold in thresholds:
        kept = [p[p["score"] >= threshold] for p in found]
        truth_table, prediction_table = match_frames(kept, truth, radius_px)
        metrics = peak_metrics(truth_table, prediction_table, min_photons)
        scan.append({"threshold": float(threshold), **{k: metrics[k] for k in ("precision", "recall", "f1")}})
    scan = pd.DataFrame(scan)
    best = scan.loc[scan["f1"].fillna(-1).idxmax()]
    return float(best["threshold"]), scan


def _groups(tables: Sequence[pd.DataFrame | None], by: list[str]) -> list[tuple]:
    keys = []
    for table in tables:
        if table is None:
            continue
        missing = [c for c in by if c not in table.columns]
        if missing:
            raise ValueError(f"group columns {missing} are missing from a table")
        keys.append(table[by].drop_duplicates())
    if not keys:
        return []
    all_keys = pd.concat(keys, ignore_index=True).drop_duplicates()
    try:
        all_keys = all_keys.sort_values(by, kind="stable")
    except TypeError:  # unorderable mixed types: keep the order of appearance
        pass
    return [tuple(row) for row in all_keys.itertuples(index=False, name=None)]


def _select(table: pd.DataFrame | None, by: list[str], key: tuple) -> pd.DataFrame | None:
    if table is None:
        return None
    mask = np.ones(len(table), bool)
    for column, value in zip(by, key):
        col = table[column]
        mask &= (col.isna().to_numpy() if pd.isna(value) else (col == value).to_numpy())
    return table[mask]


def metrics_table(truth_table: pd.DataFrame, prediction_table: pd.DataFrame, by: Sequence[str] = (),
                  min_photons: float | Sequence[float] = (0.0,), frames: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`peak_metrics` per group of ``by`` columns and per threshold in ``min_photons``: one row each.

    ``frames``: the frame-key table (one row per frame, holding the ``by`` columns, e.g. the concatenated ``keys``
    given to :func:`match_frames`) so that n_frames and false_per_frame are right per group, frames without any
    peak included; without it both are NaN. Columns: by..., min_photons, then METRIC_NAMES.
    """
    by = [by] if isinstance(by, str) else list(by)
    thresholds = [float(min_photons)] if np.isscalar(min_photons) else [float(v) for v in min_photons]
    rows = []
    group_keys = _groups([truth_table, prediction_table, frames], by) if by else [()]
    for key in group_keys:
        t = _select(truth_table, by, key)
        p = _select(prediction_table, by, key)
        f = _select(frames, by, key) if frames is not None else None
        for threshold in thresholds:
            row = dict(zip(by, key))
            row["min_photons"] = threshold
            row.update(peak_metrics(t, p, threshold, frames=f))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "min_photons", *METRIC_NAMES])


def _bin_label(lo: float, hi: float) -> str:
    return f">={lo:g}" if np.isinf(hi) else f"{lo:g}-{hi:g}"


def recall_by_photons(truth_table: pd.DataFrame, edges: Sequence[float] = (1, 3, 10, 30, np.inf),
                      by: Sequence[str] = ()) -> pd.DataFrame:
    """Recall binned by expected photons: one row per bin [lo, hi) (and per group of ``by`` columns).

    Columns: by..., bin (label "1-3", "3-10", "10-30", ">=30"), lo, hi, n_true, n_matched, recall (NaN for an
    empty bin), rms_px (over the bin's matches, NaN without any). Reflections below edges[0] are in no bin.
    """
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"edges must be at least two increasing numbers, got {edges.tolist()}")
    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key in (_groups([truth_table], by) if by else [()]):
        t = _select(truth_table, by, key)
        photons = t["photons"].to_numpy(np.float64)
        matched = t["matched"].to_numpy(bool)
        error = t["error_px"].to_numpy(np.float64)
        for lo, hi in zip(edges[:-1], edges[1:]):
            in_bin = (photons >= lo) & (photons < hi)
            hit = in_bin & matched
            n_true, n_matched = int(in_bin.sum()), int(hit.sum())
            row = dict(zip(by, key))
            row.update({"bin": _bin_label(lo, hi), "lo": float(lo), "hi": float(hi), "n_true": n_true,
                        "n_matched": n_matched, "recall": _ratio(n_matched, n_true),
                        "rms_px": float(np.sqrt(np.mean(error[hit] ** 2))) if n_matched else float("nan")})
            rows.append(row)
    return pd.DataFrame(rows, columns=[*by, "bin", "lo", "hi", "n_true", "n_matched", "recall", "rms_px"])
