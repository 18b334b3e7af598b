"""Evaluation metrics: AUC, GAUC, logloss, calibration, ECE, calibration per decile and RMSE,
vectorised with numpy."""

from __future__ import annotations

import numpy as np

from rankengine import Metric, Register, hookimpl, undefined


@hookimpl
def rankengine_register_metrics(register: Register[Metric]) -> None:
    register("auc", Metric(auc, label="AUC"), help="area under the ROC curve (ties count half)")
    register("gauc", Metric(gauc, needs_group=True, label="GAUC", headline=False),
             help="AUC per group (user / request), averaged weighted by group size over groups "
                  "with both classes")
    register("logloss", Metric(logloss, direction="lower", label="logloss", headline=False),
             help="binary cross-entropy")
    register("calibration", Metric(calibration, direction="target", target=1.0, label="calib",
                                        headline=False),
             help="mean prediction / mean label (1.0 is calibrated; closest to 1 is best)")
    register("ece", Metric(ece, direction="lower", label="ECE", headline=False),
             help=f"expected calibration error: Σ_b (n_b / N) · |mean p_b - mean y_b| over "
                  f"{ECE_BUCKETS} equal-mass buckets of the predictions (0 is calibrated)")
    register("decile_calibration", Metric(decile_calibration, direction="lower",
                                          label="calib/decile", headline=False),
             help=f"largest |mean p / mean label - 1| over the {DECILES} equal-mass deciles of "
                  f"the predictions, deciles without a positive label skipped (0 is calibrated "
                  f"in every decile)")
    register("rmse", Metric(rmse, task_type="regression", direction="lower", label="RMSE"),
             help="root mean squared error of the value")


def grouped_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC per group via the Mann-Whitney rank sum; returns (auc per group, rows per group).

    Groups without both classes get NaN; no rows, no groups.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups)
    if len(y) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((p, groups))
    g, s, t = groups[order], p[order], y[order]
    n = len(g)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
    group_id = np.cumsum(new_group) - 1
    tie_id = np.cumsum(new_tie) - 1
    position = np.arange(n, dtype=np.float64)
    start = position[new_group][group_id]
    rank_in_group = position - start + 1.0
    tie_mean = np.bincount(tie_id, rank_in_group) / np.bincount(tie_id)
    ranks = tie_mean[tie_id]
    n_pos = np.bincount(group_id, t)
    n_all = np.bincount(group_id).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(group_id, ranks * t)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    per_group[(n_pos == 0) | (n_neg == 0)] = np.nan
    return per_group, n_all


def _one_class(y: np.ndarray) -> float | None:
    """``undefined(...)`` when ``y`` has no rows or only one class, else None."""
    if len(y) == 0:
        return undefined("no rows")
    positives = float(np.sum(y))
    if positives == 0:
        return undefined("no positive labels")
    if positives == len(y):
        return undefined("no negative labels")
    return None


def auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    why = _one_class(np.asarray(y, dtype=np.float64))
    if why is not None:
        return why
    per_group, _ = grouped_auc(y, p, np.zeros(len(y), dtype=np.int64))
    return float(per_group[0])


def gauc(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    if groups is None:
        return undefined("no group column")
    if len(y) == 0:
        return undefined("no rows")
    per_group, sizes = grouped_auc(y, p, groups)
    valid = ~np.isnan(per_group)
    if not valid.any():
        return undefined("no group has both positive and negative labels")
    return float(np.average(per_group[valid], weights=sizes[valid]))


def logloss(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    if len(y) == 0:
        return undefined("no rows")
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def calibration(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    if len(y) == 0:
        return undefined("no rows")
    positives = float(np.mean(y))
    if positives <= 0:
        return undefined("mean label is 0")
    return float(np.mean(p)) / positives


#: buckets of expected calibration error: equal mass (each holds a tenth of the rows), so a
#: rare positive class still gets buckets where its predictions are
ECE_BUCKETS = 10
DECILES = 10


def equal_mass_buckets(y: np.ndarray, p: np.ndarray,
                       buckets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean label, mean prediction and rows of each of ``buckets`` equal-mass buckets of ``p``.

    Rows are sorted by prediction once (stable, so tied predictions keep their row order and a
    tie may straddle two buckets); bucket sizes are ``np.array_split``'s (the first
    ``len % buckets`` hold one row more); with fewer rows than buckets, one row a bucket. At
    least one row.
    """
    order = np.argsort(p, kind="stable")
    count = min(buckets, len(order))
    sizes = np.full(count, len(order) // count)
    sizes[:len(order) % count] += 1
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    mean_y = np.add.reduceat(y[order], starts) / sizes
    mean_p = np.add.reduceat(p[order], starts) / sizes
    return mean_y, mean_p, sizes


def ece(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return undefined("no rows")
    mean_y, mean_p, sizes = equal_mass_buckets(y, p, ECE_BUCKETS)
    return float(np.sum(sizes * np.abs(mean_p - mean_y))) / len(y)


def decile_calibration(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    """max over the deciles of the prediction of |mean p / mean label - 1|.

    A decile whose mean label is 0 has no ratio (over-prediction there is unbounded, and with a
    rare label the low deciles often hold no positive): it is skipped, as ``calibration`` is
    undefined there; undefined only when every decile is skipped (no positive label at all).
    ECE averages the gaps, so over-prediction in one decile can hide behind under-prediction in
    another; this is the worst decile.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return undefined("no rows")
    mean_y, mean_p, _ = equal_mass_buckets(y, p, DECILES)
    positive = mean_y > 0
    if not positive.any():
        return undefined("mean label is 0 in every decile")
    return float(np.max(np.abs(mean_p[positive] / mean_y[positive] - 1.0)))


def rmse(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
    if len(y) == 0:
        return undefined("no rows")
    return float(np.sqrt(np.mean((np.asarray(p, np.float64) - y) ** 2)))
