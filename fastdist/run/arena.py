"""Step 2 of the recipe: what the shared arena holds, how it is filled, and what a
checkpoint puts back into it."""

from __future__ import annotations

import logging
import math

import numpy as np

from fastdist.combiners.base import Combiner
from fastdist.engine.barrier import barrier_shape
from fastdist.engine.memory import check_memory_plan
from fastdist.engine.rows import segment_bytes
from fastdist.errors import ConfigError
from fastdist.models.base import Model
from fastdist.optim.base import Optimizer
from fastdist.run.placement import Placement, RunPlan
from fastdist.run.preparation import init_seed, shared_data_bytes, validation_rows

__all__ = [
    "arena_arrays",
    "fill_arena",
    "check_data_memory",
    "data_memory_plan",
    "resume_into",
    "starting_point",
]

log = logging.getLogger("fastdist")


def arena_arrays(
    model: Model,
    optimizer: Optimizer,
    combiner: Combiner,
    place: Placement,
    plan: RunPlan,
) -> dict:
    """Name -> (shape, dtype) of everything the workers share but the data (which live
    in the run's RowStore, see run/preparation.py).

    Per-worker rows (parameters, optimizer state, gradients, the exchange's own) have
    one row per global worker: under dist=mpi each node holds every worker's row, its
    own workers write theirs and its node coordinator gathers the rest at a sync."""
    exchange, size = combiner.exchange, model.layout.size
    workers = place.total_workers
    param_rows = 1 if exchange.shares_parameters else workers
    state_rows = 1 if exchange.shares_state else workers
    n_state = len(optimizer.state_names)
    arrays = {
        "params": ((param_rows, size), np.float32),
        # (state vector, row, P): a state vector's rows are contiguous, so averaging it
        # across workers is the same reduction as averaging the parameters.
        "opt_state": ((n_state, state_rows, size), np.float32),
        "grads": ((workers, size), np.float32),
        "progress": ((place.workers, 8), np.int64),  # steps done per worker (a cache line)
    }
    if optimizer.clip_norm is not None:
        # Each worker's partial sum of squares of the averaged gradient (one cache line).
        arrays["grad_norm_parts"] = ((place.workers, 8), np.float64)
    if place.mpi:  # the node's workers and its coordinator meet here at every sync
        arrays["node_barrier"] = (barrier_shape(place.workers + 1), np.int64)
    if plan.eval_every:  # run/evaluation.py: the rows to score at an evaluation step
        arrays["snapshots"] = arrays["params"]
    arrays.update(exchange.arrays(workers, size, n_state))
    return arrays


def fill_arena(arena, model, combiner, seed: int, base: np.ndarray | None = None) -> None:
    """Each parameter row's initialisation (the training rows are in the data's store):
    ``base`` (init_from: a saved model) for every row, else the model's own; then the
    exchange's own arrays."""
    for row in range(arena["params"].shape[0]):
        if base is None:
            model.init(init_seed(seed, row, combiner.init), out=arena["params"][row])
        else:
            arena["params"][row] = base
    combiner.exchange.init_arena(arena)


def starting_point(arena, combiner, base: np.ndarray | None) -> np.ndarray | None:
    """The parameters every worker starts from, taken once the arena is filled (before
    a checkpoint overwrites the rows): ``base`` (init_from), else the shared
    initialisation; None when every worker starts from its own (combiner.init)."""
    if base is not None:
        return np.array(base, dtype=np.float32)
    if combiner.init != "shared":
        return None
    return arena["params"][0].copy()


def data_memory_plan(cfg, fraction: float) -> tuple[int, int] | None:
    """(shared, private): the bytes that :func:`prepare_data` will put in /dev/shm and
    keep in the coordinator's own memory, when they are known before loading; None when
    they are not (built-in sets, small; files the loader has yet to check).

    ``dataset=synthetic`` is generated into one segment, test rows included, and its
    test split is then copied out. ``dataset=npy`` maps its features (page cache,
    counted nowhere) and reads its labels into memory: both splits' are private, the
    training labels are shared once more, and the validation rows are gathered out of
    the map."""
    from fastdist.data.npy_files import declared_shape

    data = cfg.dataset
    if str(data.name) == "synthetic":
        n_train, n_test, n_features = int(data.n_train), int(data.n_test), int(data.n_features)
        x_segment = segment_bytes((n_train + n_test, n_features), np.float32)
        shared = shared_data_bytes(n_train, fraction, x_segment)
        return shared, n_test * (n_features * 4 + 4)
    if str(data.name) == "npy":
        train, test = declared_shape(data, "x_train"), declared_shape(data, "x_test")
        if not train or not test:
            return None
        n_train, n_val = train[0], validation_rows(train[0], fraction)
        labels = 4 * (n_train + test[0])  # both splits', int32
        validation = n_val * (4 * math.prod(train[1:]) + 4)  # float32 rows and labels
        return shared_data_bytes(n_train, fraction), labels + validation
    return None


def check_data_memory(cfg, fraction: float) -> None:
    """Before loading or generating the data: refuse, in one line, a data set whose
    plan (:func:`data_memory_plan`) cannot fit."""
    plan = data_memory_plan(cfg, fraction)
    if plan is not None:
        check_memory_plan(*plan, what=f"dataset={cfg.dataset.name}")


def resume_into(cfg, arena, combiner, state: dict | None, total_steps: int) -> int:
    """Put the checkpoint read at start-up into the arena; the step to start from (0
    without one)."""
    if state is None:
        return 0
    if (state["params"].shape, state["opt_state"].shape) != (
        arena["params"].shape,
        arena["opt_state"].shape,
    ):
        raise ConfigError(f"resume={cfg.resume}: the checkpoint's shapes do not match this model")
    for name in (name for name in combiner.exchange.checkpointed if name in arena):
        kept = state["extra"].get(name)
        if kept is None or kept.shape != arena[name].shape:
            raise ConfigError(f"resume={cfg.resume}: the checkpoint lacks this combiner's {name}")
        arena[name][:] = kept
    arena["params"][:], arena["opt_state"][:] = state["params"], state["opt_state"]
    if state["step"] >= total_steps:
        raise ConfigError(
            f"resume={cfg.resume}: the checkpoint is at step {state['step']}, the run "
            f"has {total_steps} steps; ask for more steps"
        )
    log.info("resuming from %s at step %d", cfg.resume, state["step"])
    return state["step"]
