"""Classification metrics of the frame models: confusion matrices and ROC curves (numpy only).

Shared by :mod:`cxlspeaks.evaluate` (the numbers) and :mod:`cxlspeaks.report` (the plots).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes x n_classes): rows are the truth, columns the prediction."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return matrix


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without frames stay zero), as the source paper shows them."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=float), where=sums > 0)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, thresholds), from the highest score down; ties share a step."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(labels)[distinct]
    fp = np.cumsum(~labels)[distinct]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(tp) + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(fp) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, scores[distinct]]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; ties count one half); NaN without both classes."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))
