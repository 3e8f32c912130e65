"""One evaluation pipeline: the ``eval`` settings, the one scorer, and metrics.json's
evaluations read from the same scored rows as history.csv.

During training, at an evaluation step each worker copies the row its exchange says is
the model to score (its own parameter row, the one shared row, or a round's server
model: ``Exchange.evaluated_row``) into the arena's ``snapshots`` (run/history.py); the
coordinator copies them out and, after training, scores each step's rows with
:func:`combined_scorer`: the combiner's own ``finalize`` (exactly what the run ends
with), then the validation split (when there is one) and the test set. Those scores
fill history.csv's ``val_*``/``test_*`` columns, and :func:`evaluations` turns the same
rows into metrics.json's ``evaluations`` and time-to-accuracy: one array, one scorer,
one writer.

``eval.every``: steps between scores (null: once per epoch; 0: never).
``eval.at_sync``: score at the first sync at or past every ``eval.every`` steps (the
model the workers agree on right after it) instead of at the step itself.
``eval.target_accuracy``: metrics.json reports the first scored step, time and bytes
at which the accuracy reached it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fastdist.combiners.base import Combiner, FinalizeInputs
from fastdist.combiners.evaluate import evaluate

__all__ = ["EvalConfig", "combined_scorer", "evaluations"]


@dataclass
class EvalConfig:
    # steps between scores of the combined model; null = once per epoch, 0 = never
    every: int | None = None
    # score at the first sync at or past every `every` steps instead of at the step
    at_sync: bool = False
    # metrics.json: the first scored step/time/bytes at or above this accuracy
    target_accuracy: float | None = None


def combined_scorer(combiner: Combiner, model, data, seed: int, base=None) -> Callable:
    """``score(rows, samples_seen) -> {val_/test_ loss/accuracy}`` of the combiner's
    finalize applied to parameter rows (``base``: FinalizeInputs.base)."""

    def score(rows: np.ndarray, samples_seen: np.ndarray) -> dict:
        inputs = FinalizeInputs(
            rows, model, samples_seen, data.shard_arrays(), data.validation, seed, base=base
        )
        combined = combiner.finalize(inputs)
        out = {}
        if data.validation is not None:
            val = evaluate(combined, model, *data.validation)
            out.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        test = evaluate(combined, model, data.dataset.x_test, data.dataset.y_test)
        out.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        return out

    return score


def evaluations(
    rows: list[dict], start_step: int, syncs: np.ndarray, cumulative: np.ndarray, target
) -> dict:
    """metrics.json's ``eval_split``, ``evaluations`` and time-to-accuracy keys, from the
    history rows scored after ``start_step`` (the starting point is no evaluation of
    training); ``syncs`` are the steps after which the workers synced and
    ``cumulative`` each worker's mean bytes sent after each of them."""
    scored = [r for r in rows if r.get("test_accuracy") is not None and r["step"] > start_step]
    split = "validation" if any(r.get("val_accuracy") is not None for r in scored) else "test"
    key = "val" if split == "validation" else "test"
    out = []
    for row in scored:
        done = int(row["step"])
        n_syncs = int(np.searchsorted(syncs, done - 1, side="right"))
        out.append(
            {
                "step": done,
                "seconds": round(float(row["wall_time"]), 6),
                "accuracy": row[f"{key}_accuracy"],
                "loss": row[f"{key}_loss"],
                "syncs": n_syncs,
                "bytes_per_worker": float(cumulative[n_syncs - 1]) if n_syncs else 0.0,
            }
        )
    metrics = {"eval_split": split if out else "none", "evaluations": out}
    if target is not None:
        hit = next((e for e in out if e["accuracy"] >= float(target)), None)
        metrics.update(
            target_accuracy=float(target),
            time_to_accuracy_step=None if hit is None else hit["step"],
            time_to_accuracy_seconds=None if hit is None else hit["seconds"],
            time_to_accuracy_bytes_per_worker=None if hit is None else hit["bytes_per_worker"],
        )
    return metrics
