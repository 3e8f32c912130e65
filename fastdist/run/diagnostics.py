"""What a multi-worker run reveals about its workers, written to metrics.json.

- divergence: ||theta_i - mean|| / ||mean|| per worker (how far local training drifted);
- the linear path between workers 0 and 1: test loss/accuracy at 11 points
  (alpha = 0, 0.1, ..., 1) and its barrier, the worst loss on the path above the
  straight line between its ends (Frankle et al. 2020), on the test set and on a fixed
  subset of training rows;
- the same barriers after permuting worker 1's units to match worker 0's (Git Re-Basin
  weight matching, Ainsworth et al. 2023): a barrier that alignment removes was a
  permutation symmetry, not a real obstacle between the two solutions;
- member accuracies, and the gap between the weight average and the output ensemble.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.alignment import permute, weight_matching
from fastdist.combiners.averaging import mean_of_rows
from fastdist.combiners.base import CombinedModel
from fastdist.combiners.evaluate import evaluate
from fastdist.models.base import Model

__all__ = [
    "worker_divergence",
    "interpolation_path",
    "loss_barriers",
    "train_subset",
    "worker_diagnostics",
]

# Training rows the train-loss barrier is measured on (a fixed seeded subset).
TRAIN_ROWS = 2048


def worker_divergence(rows: np.ndarray) -> list[float]:
    mean = rows.astype(np.float64).mean(axis=0)
    scale = max(float(np.linalg.norm(mean)), 1e-12)
    return [float(np.linalg.norm(row - mean) / scale) for row in rows]


def _path_scores(
    model: Model, a: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, alphas: np.ndarray
) -> tuple[list[float], list[float]]:
    """Loss and accuracy of ``(1 - alpha) a + alpha b`` on (x, y), per alpha."""
    losses, accuracies = [], []
    for alpha in alphas:
        theta = ((1.0 - alpha) * a.astype(np.float64) + alpha * b).astype(np.float32)
        scores = evaluate(CombinedModel((theta,)), model, x, y)
        losses.append(scores["loss"])
        accuracies.append(scores["accuracy"])
    return losses, accuracies


def _barrier(alphas: np.ndarray, losses: list[float]) -> float:
    """The worst loss on the path above the straight line between its ends."""
    line = (1.0 - alphas) * losses[0] + alphas * losses[-1]
    return float(np.max(np.asarray(losses) - line))


def interpolation_path(
    model: Model,
    a: np.ndarray,
    b: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    points: int = 11,
) -> dict:
    alphas = np.linspace(0.0, 1.0, points)
    losses, accuracies = _path_scores(model, a, b, x, y, alphas)
    return {
        "alpha": alphas.tolist(),
        "test_loss": losses,
        "test_accuracy": accuracies,
        "loss_barrier": _barrier(alphas, losses),
        "accuracy_drop": float(min(accuracies[0], accuracies[-1]) - min(accuracies)),
    }


def train_subset(
    train: tuple[np.ndarray, np.ndarray], rows: int = TRAIN_ROWS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed seeded subset of at most ``rows`` of the training rows ``train``
    (arrays, or row views that index with an array of positions)."""
    x, y = train
    n = len(x)
    index = np.sort(np.random.default_rng(seed).choice(n, size=min(n, rows), replace=False))
    return np.asarray(x[index]), np.asarray(y[index])


def loss_barriers(
    model: Model,
    a: np.ndarray,
    b: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    train: tuple[np.ndarray, np.ndarray] | None = None,
    align: bool = True,
    points: int = 11,
    test_path: dict | None = None,
) -> dict:
    """Loss barriers between ``a`` and ``b``: ``loss_barrier_test`` (and
    ``loss_barrier_train`` when ``train`` rows are given), and, when ``align`` and the
    model declares its permutation symmetries, ``aligned_loss_barrier_test`` /
    ``_train`` with ``b``'s units first matched to ``a``'s by weight matching, plus the
    ``aligned_interpolation`` path (``b`` aligned as the far end). When alignment moves
    no unit the aligned barriers are the unaligned ones (nothing is evaluated again).
    ``test_path``: :func:`interpolation_path` of ``a`` and ``b`` on ``test`` over the
    same points, when already evaluated.
    """
    alphas = np.linspace(0.0, 1.0, points)
    sets = {"test": test} if train is None else {"test": test, "train": train}
    paths = {}
    if test_path is not None:
        paths["test"] = test_path["test_loss"], test_path["test_accuracy"]
    for name, (x, y) in sets.items():
        if name not in paths:
            paths[name] = _path_scores(model, a, b, x, y, alphas)
    out = {f"loss_barrier_{name}": _barrier(alphas, paths[name][0]) for name in sets}
    if not align or model.permutation_spec() is None:
        return out
    aligned = permute(model, b, weight_matching(model, a, b))
    for name, (x, y) in sets.items():
        if not np.array_equal(aligned, b):
            paths[name] = _path_scores(model, a, aligned, x, y, alphas)
        out[f"aligned_loss_barrier_{name}"] = _barrier(alphas, paths[name][0])
    losses, accuracies = paths["test"]
    out["aligned_interpolation"] = {
        "alpha": alphas.tolist(),
        "test_loss": losses,
        "test_accuracy": accuracies,
        "loss_barrier": out["aligned_loss_barrier_test"],
        "accuracy_drop": float(min(accuracies[0], accuracies[-1]) - min(accuracies)),
    }
    return out


def worker_diagnostics(
    model: Model,
    rows: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    train: tuple[np.ndarray, np.ndarray] | None = None,
    align: bool = True,
) -> dict:
    """Diagnostics for ``rows`` (one parameter vector per worker) on the test set
    (x, y). ``train``: training rows (x, y) for the train-loss barriers (a fixed subset
    of at most ``TRAIN_ROWS`` of them is used); None: test barriers only. ``align``:
    also the barriers after weight matching worker 1 to worker 0."""
    members = [evaluate(CombinedModel((row,)), model, x, y)["accuracy"] for row in rows]
    averaged = evaluate(CombinedModel((mean_of_rows(rows),)), model, x, y)["accuracy"]
    ensembled = evaluate(CombinedModel(tuple(rows)), model, x, y)["accuracy"]
    out = {
        "member_test_accuracy": members,
        "mean_member_test_accuracy": float(np.mean(members)),
        "best_member_test_accuracy": float(np.max(members)),
        "worker_divergence": worker_divergence(rows),
        "weight_avg_test_accuracy": averaged,
        "ensemble_test_accuracy": ensembled,
        "weight_avg_minus_ensemble_accuracy": averaged - ensembled,
    }
    if len(rows) >= 2:
        out["interpolation"] = path = interpolation_path(model, rows[0], rows[1], x, y)
        subset = None if train is None else train_subset(train)
        out.update(loss_barriers(model, rows[0], rows[1], (x, y), subset, align, test_path=path))
    return out
