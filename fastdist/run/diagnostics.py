"""What a multi-worker run reveals about its workers, written to metrics.json.

- divergence: ||theta_i - mean|| / ||mean|| per worker (how far local training drifted);
- the linear path between workers 0 and 1: test loss/accuracy at 11 points
  (alpha = 0, 0.1, ..., 1) and its barrier, the worst loss on the path above the
  straight line between its ends (Frankle et al. 2020);
- member accuracies, and the gap between the weight average and the output ensemble.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import mean_of_rows
from fastdist.combiners.base import CombinedModel
from fastdist.combiners.evaluate import evaluate
from fastdist.models.base import Model

__all__ = ["worker_divergence", "interpolation_path", "worker_diagnostics"]


def worker_divergence(rows: np.ndarray) -> list[float]:
    mean = rows.astype(np.float64).mean(axis=0)
    scale = max(float(np.linalg.norm(mean)), 1e-12)
    return [float(np.linalg.norm(row - mean) / scale) for row in rows]


def interpolation_path(
    model: Model,
    a: np.ndarray,
    b: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    points: int = 11,
) -> dict:
    alphas = np.linspace(0.0, 1.0, points)
    losses, accuracies = [], []
    for alpha in alphas:
        theta = ((1.0 - alpha) * a.astype(np.float64) + alpha * b).astype(np.float32)
        scores = evaluate(CombinedModel((theta,)), model, x, y)
        losses.append(scores["loss"])
        accuracies.append(scores["accuracy"])
    line = (1.0 - alphas) * losses[0] + alphas * losses[-1]
    return {
        "alpha": alphas.tolist(),
        "test_loss": losses,
        "test_accuracy": accuracies,
        "loss_barrier": float(np.max(np.asarray(losses) - line)),
        "accuracy_drop": float(min(accuracies[0], accuracies[-1]) - min(accuracies)),
    }


def worker_diagnostics(model: Model, rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict:
    """Diagnostics for ``rows`` (one parameter vector per worker) on (x, y)."""
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
        out["interpolation"] = interpolation_path(model, rows[0], rows[1], x, y)
    return out
