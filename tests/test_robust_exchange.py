"""aggregate=, compress= and byzantine.* in real runs: the reduction reaches every
averaging combiner, the bytes are counted, attacks are recorded and reproducible,
compressed runs resume bitwise, and what cannot work is refused in one line."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from conftest import small_run

import fastdist
from fastdist.combiners.aggregators import aggregate_rows, median
from fastdist.errors import ConfigError, DivergenceError
from fastdist.run.preparation import init_seed

TINY = small_run("optimizer.momentum=0.0", "optimizer.lr=0.1", "steps=12")


@functools.cache
def _run(overrides: tuple[str, ...]):
    return fastdist.train(fastdist.compose([*TINY, *overrides]))


def _train(*overrides):
    """Runs are deterministic: tests that need the same run share it."""
    return _run(tuple(overrides))


def test_the_default_reduction_changes_nothing():
    plain = _train("workers=3", "combiner=grad_avg")
    said = _train("workers=3", "combiner=grad_avg", "aggregate=mean", "compress=none")
    np.testing.assert_array_equal(plain.worker_params, said.worker_params)
    assert plain.metrics["aggregate"] == "mean" and plain.metrics["byzantine"] is None


@pytest.mark.parametrize(
    "combiner",
    [
        ["combiner=grad_avg"],
        ["combiner=local_sgd", "combiner.period=3"],
        ["combiner=fedavg", "combiner.period=3"],
        ["combiner=diloco", "combiner.period=3"],
        ["combiner=weight_avg"],
    ],
)
def test_every_averaging_combiner_takes_a_robust_rule(combiner):
    """The median of three differs from their mean, and the run stays deterministic."""
    mean = _train("workers=3", *combiner)
    robust = _train("workers=3", *combiner, "aggregate=median")
    again = fastdist.train(fastdist.compose([*TINY, "workers=3", *combiner, "aggregate=median"]))
    assert robust.metrics["aggregate"] == "median"
    model, same_model = robust.combined.members[0], again.combined.members[0]
    assert not np.array_equal(model, mean.combined.members[0])
    np.testing.assert_array_equal(model, same_model)
    assert math.isfinite(robust.metrics["test_loss"])


def test_one_shot_median_is_the_start_plus_the_median_update():
    result = _train("workers=3", "combiner=weight_avg", "aggregate=median")
    anchor = result.model.init(init_seed(0, 0, "shared"))  # where every worker started
    expected = anchor + aggregate_rows(median(), result.worker_params - anchor)
    np.testing.assert_array_equal(result.combined.members[0], expected)


def test_median_of_two_workers_is_their_mean_to_rounding():
    mean = _train("workers=2", "combiner=grad_avg")
    robust = _train("workers=2", "combiner=grad_avg", "aggregate=median")
    np.testing.assert_allclose(robust.worker_params, mean.worker_params, rtol=1e-5, atol=1e-6)


ATTACKED = ("workers=5", "combiner=grad_avg", "byzantine.count=1", "steps=30")


def test_a_scaled_attacker_breaks_the_mean_and_not_the_median():
    honest = _train("workers=5", "combiner=grad_avg", "steps=30")
    attack = ("byzantine.attack=scaled", "byzantine.scale=-50")
    under_median = _train(*ATTACKED, *attack, "aggregate=median")
    assert under_median.metrics["test_accuracy"] >= honest.metrics["test_accuracy"] - 0.1
    with pytest.raises(DivergenceError):
        _train(*ATTACKED, *attack, "aggregate=mean", "optimizer.lr=1.0")


@pytest.mark.parametrize("attack", ["sign_flip", "gaussian", "alie", "ipm", "label_flip"])
def test_every_attack_is_recorded_and_reproducible(attack):
    overrides = [*ATTACKED, "steps=8", f"byzantine.attack={attack}", "aggregate=trimmed_mean"]
    a = _train(*overrides)
    b = fastdist.train(fastdist.compose([*TINY, *overrides]))
    np.testing.assert_array_equal(a.worker_params, b.worker_params)
    record = a.metrics["byzantine"]
    assert record["attack"] == attack and len(record["workers"]) == 1
    assert all(row["byzantine"] == f"{attack}:{record['workers'][0]}" for row in a.history)
    honest = _train(*ATTACKED[:2], "steps=8", "aggregate=trimmed_mean")
    assert not np.array_equal(a.worker_params, honest.worker_params)  # it did attack


def test_the_gaussian_attack_draws_from_the_seed():
    """The same attacker (byzantine.workers) under another seed draws other noise."""
    fixed = [*ATTACKED[:2], "steps=8", "byzantine.workers=[2]", "byzantine.attack=gaussian"]
    one = _train(*fixed, "aggregate=trimmed_mean")
    other = _train(*fixed, "aggregate=trimmed_mean", "seed=1")
    assert one.metrics["byzantine"]["workers"] == other.metrics["byzantine"]["workers"] == [2]
    assert not np.array_equal(one.worker_params, other.worker_params)


def test_explicit_attackers_and_the_summary_line(caplog):
    with caplog.at_level("INFO", logger="fastdist"):
        result = _train(*ATTACKED[:2], "byzantine.workers=[1,3]", "steps=6")
    assert result.metrics["byzantine"]["workers"] == [1, 3]
    line = [r.getMessage() for r in caplog.records if "test_accuracy" in r.getMessage()]
    assert "the mean is not robust" in line[-1] and "sign_flip" in line[-1]


@pytest.mark.parametrize(
    ("compress", "sent"),
    [
        ("fp16", lambda p: 2 * p),
        ("bf16", lambda p: 2 * p),
        ("int8", lambda p: p + 4 * math.ceil(p / 1024)),
        ("topk", lambda p: 8 * math.ceil(0.01 * p)),
        ("randk", lambda p: 4 * math.ceil(0.01 * p)),
    ],
)
def test_compressed_bytes_are_counted_in_metrics_and_history(compress, sent):
    result = _train("workers=2", "combiner=grad_avg", f"compress={compress}")
    p = result.metrics["n_params"]
    assert result.metrics["comm_bytes_per_sync"] == sent(p)
    assert result.metrics["comm_compression_ratio"] == pytest.approx(4 * p / sent(p))
    last = result.history[-1]
    assert last["bytes_synchronised"] == 12 * 2 * sent(p)


def test_powersgd_counts_its_factors():
    result = _train("workers=2", "combiner=grad_avg", "compress=powersgd", "compress.rank=2")
    # The 10-12-3 MLP: W1 (10, 12) and W2 (12, 3) are sent as rank-2 factors (fewer
    # floats than the matrices), the biases as they are.
    expected = 4 * ((10 + 12) * 2 + 12 + (12 + 3) * 2 + 3)
    assert result.metrics["comm_bytes_per_sync"] == expected
    assert math.isfinite(result.metrics["test_loss"])


def test_compression_reaches_the_local_update_family():
    plain = _train("workers=2", "combiner=fedavg", "combiner.period=3")
    sent = _train("workers=2", "combiner=fedavg", "combiner.period=3", "compress=topk")
    assert sent.metrics["comm_bytes_per_sync"] < plain.metrics["comm_bytes_per_sync"]
    assert not np.array_equal(sent.worker_params, plain.worker_params)


@pytest.mark.parametrize(
    "extra",
    [
        ["combiner=grad_avg", "compress=topk", "compress.ratio=0.2"],
        [
            "combiner=local_sgd",
            "combiner.period=3",
            "compress=int8",
            "compress.error_feedback=true",
        ],
        ["combiner=grad_avg", "compress=powersgd", "compress.rank=1"],
        ["combiner=grad_avg", "aggregate=centered_clip", "aggregate.tau=0.5"],
        ["combiner=fedavg", "combiner.period=3", "compress=randk", "compress.ratio=0.3"],
    ],
)
def test_a_resumed_compressed_run_is_bitwise_equal(tmp_path, extra):
    """Residuals, PowerSGD's warm start and centered clipping's centre are checkpointed.
    (The first run stops at the end of a round: a federated run always ends on one.)"""
    common = [*TINY, "workers=2", *extra]
    ckpt = tmp_path / "ckpt.npz"
    whole = fastdist.train(fastdist.compose([*common, "steps=25"]))
    fastdist.train(
        fastdist.compose([*common, "steps=15", "checkpoint.every=5", f"checkpoint.path={ckpt}"])
    )
    resumed = fastdist.train(fastdist.compose([*common, "steps=25", f"resume={ckpt}"]))
    assert resumed.metrics["resumed_from_step"] == 15
    np.testing.assert_array_equal(resumed.worker_params, whole.worker_params)


def test_error_feedback_changes_the_trajectory():
    with_ef = _train("workers=2", "combiner=grad_avg", "compress=topk", "compress.ratio=0.05")
    without = _train(
        "workers=2",
        "combiner=grad_avg",
        "compress=topk",
        "compress.ratio=0.05",
        "compress.error_feedback=false",
    )
    assert not np.array_equal(with_ef.worker_params, without.worker_params)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["combiner=ensemble", "aggregate=median"], "does not"),
        (["combiner=hogwild", "byzantine.count=1"], "does not"),
        (["combiner=weight_avg", "compress=topk"], "sends nothing until the end"),
        (["combiner=grad_avg", "compress=powersgd", "aggregate=median"], "aggregate=mean"),
        (["combiner=grad_avg", "workers=4", "aggregate=krum"], "krum"),
        (["combiner=grad_avg", "workers=2", "byzantine.count=2"], "byzantine"),
        (["combiner=grad_avg", "byzantine.attack=bogus", "byzantine.count=1"], "bogus"),
        (["combiner=fedavg", "combiner.weighting=samples", "aggregate=median"], "weighting"),
        (["combiner=grad_avg", "compress.ratio=0", "compress=topk"], "ratio"),
    ],
)
def test_what_cannot_work_is_refused_in_one_line(overrides, says):
    with pytest.raises(ConfigError) as info:
        fastdist.train(fastdist.compose([*TINY, *overrides]))
    message = str(info.value)
    assert says in message and "\n" not in message
