"""The extension points of docs/design.md, exercised with records that are not part of
fastdist (tests/toy_records.py + tests/extensions/conf): a model, an optimizer and a
combiner plugged in through Hydra's search path only, trained end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdist
from fastdist.errors import ConfigError

HERE = Path(__file__).parent
SEARCH_PATH = f"hydra.searchpath=[file://{HERE / 'extensions' / 'conf'}]"
TOY = [
    SEARCH_PATH,
    "model=linear_softmax",
    "optimizer=sign_sgd",
    "optimizer.lr=0.02",
    "dataset=synthetic",
    "dataset.n_train=512",
    "dataset.n_test=128",
    "dataset.n_features=10",
    "dataset.n_classes=3",
    "batch_size=16",
    "diagnostics=false",
]


def _train(*overrides: str):
    return fastdist.train(fastdist.compose([*TOY, "epochs=4", *overrides]))


def test_a_toy_model_optimizer_and_combiner_train_end_to_end():
    run = _train("combiner=coordinate_median", "workers=3")
    metrics = run.metrics
    assert metrics["combiner"] == "coordinate_median"
    assert metrics["combiner_rule"] == "median"
    assert (metrics["model"], metrics["optimizer"]) == ("linear_softmax", "sign_sgd")
    assert run.worker_params.shape == (3, 10 * 3 + 3)
    expected = np.median(run.worker_params, axis=0)
    assert not np.allclose(run.worker_params[0], run.worker_params[1])  # trained apart
    assert metrics["test_accuracy"] > 0.6, metrics  # 3 classes: chance is 1/3
    assert np.isfinite(expected).all()


def test_the_toy_model_and_optimizer_work_under_gradient_averaging():
    run = _train("combiner=grad_avg", "workers=2")
    assert run.worker_params.shape[0] == 1
    assert run.metrics["test_accuracy"] > 0.6, run.metrics


def test_the_extension_is_reached_from_the_command_line(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    args = [*TOY, "epochs=2", "combiner=coordinate_median", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, "-m", "fastdist", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["combiner"] == "coordinate_median"


@pytest.mark.parametrize("workers", [2, 3])
def test_a_syncing_combiner_written_against_the_protocol_trains(workers):
    """median_grad (toy_records.py, one YAML) syncs every step through the exchange
    protocol alone: the run equals a NumPy replay of its rule (the median of the
    workers' gradients, then plain SGD on the one shared vector)."""
    from fastdist.run.worker import epoch_order

    steps = 6
    result = _train(
        f"workers={workers}", f"steps={steps}", "combiner=median_grad", "optimizer=sgd",
        "optimizer.momentum=0", "optimizer.lr=0.1", "validation_fraction=0",
    )  # fmt: skip
    assert result.metrics["comm_syncs"] == steps and result.metrics["comm_vectors_per_sync"] == 1
    assert result.worker_params.shape[0] == 1  # one shared vector
    # The replay: the same shards and batches, the median, an SGD step.
    cfg = fastdist.compose([*TOY, f"workers={workers}", f"steps={steps}"])
    from fastdist.run.preparation import prepare_data
    from fastdist.run.records import build_model

    with prepare_data(cfg, workers, 0.0) as data:
        model = build_model(cfg.model, data.dataset.input_shape, data.dataset.n_classes)
        theta = model.init(int(cfg.seed)).astype(np.float32)
        x_all, y_all = np.asarray(data.dataset.x_train), np.asarray(data.dataset.y_train)
        order = np.asarray(data.rows)
        for step in range(steps):
            grads = []
            for k, (lo, hi) in enumerate(data.shards):
                perm = epoch_order(int(cfg.seed), k, 0, hi - lo)
                idx = order[lo:hi][perm[step * 16 : (step + 1) * 16]]
                grads.append(model.reference_loss_and_grad(theta, x_all[idx], y_all[idx])[1])
            theta = theta - np.float32(0.1) * np.median(np.stack(grads), axis=0)
    np.testing.assert_allclose(result.worker_params[0], theta, rtol=1e-4, atol=1e-6)


def test_a_user_factory_that_builds_the_wrong_record_is_one_line():
    cfg = fastdist.compose([*TOY, "combiner=coordinate_median"])
    cfg.combiner._target_ = "toy_records.linear_softmax"
    with pytest.raises(ConfigError, match="must build a Combiner|bad combiner settings"):
        fastdist.train(cfg)


def test_design_doc_examples_are_the_tested_code():
    """Every code block docs/design.md shows as a worked example is text of the files
    these tests run, so the document cannot drift from working code."""
    doc = (HERE.parent / "docs" / "design.md").read_text()
    sources = (HERE / "toy_records.py").read_text() + "".join(
        p.read_text() for p in sorted((HERE / "extensions" / "conf").rglob("*.yaml"))
    )
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 6, "the design doc lost its worked examples"
    for block in blocks:
        assert block.strip() in sources, f"docs/design.md example not in the tested code:\n{block}"
