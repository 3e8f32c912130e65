"""Steps 4 and 5 of the recipe: combine the trained workers, score the result, and
assemble metrics.json. ``fastdist-combine`` calls :func:`combine` on saved states, so
an ablation over combiners differs in nothing else."""

from __future__ import annotations

import numpy as np

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs
from fastdist.combiners.evaluate import evaluate
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.run.diagnostics import worker_diagnostics
from fastdist.run.preparation import PreparedData

__all__ = ["combine", "describe_model"]


def describe_model(model: Model) -> str:
    summary = model.describe()
    return "-".join(map(str, summary)) if isinstance(summary, list) else str(summary)


def combine(
    combiner: Combiner,
    worker_params: np.ndarray,
    model: Model,
    data: PreparedData,
    samples_seen: np.ndarray,
    seed: int,
    diagnostics: bool = True,
) -> dict:
    """Finalize ``combiner`` on trained worker states and score it on the test set."""
    if combiner.needs_validation and data.validation is None:
        raise ConfigError(f"{combiner.name} needs a validation split: set validation_fraction")
    inputs = FinalizeInputs(
        worker_params, model, samples_seen, data.shard_arrays(), data.validation, seed
    )
    combined: CombinedModel = combiner.finalize(inputs)
    x_test, y_test = data.dataset.x_test, data.dataset.y_test
    scores = evaluate(combined, model, x_test, y_test)
    metrics = {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "combiner": combiner.name,
        "members": len(combined.members),
        **{f"combiner_{k}": v for k, v in combined.info.items()},
    }
    independent_rows = worker_params.shape[0] > 1
    if diagnostics and independent_rows:
        diag = worker_diagnostics(model, worker_params, x_test, y_test)
        metrics.update(diag)
        if len(combined.members) > 1:
            metrics["ensemble_gain_over_best_member"] = (
                scores["accuracy"] - diag["best_member_test_accuracy"]
            )
    return metrics
