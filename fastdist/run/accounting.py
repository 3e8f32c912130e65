"""Communication accounting, periodic evaluation and the partition's record, for
metrics.json (one compact entry per evaluation, ready to be routed into a history).

Bytes are what a worker WOULD send over a network, counted from the sync schedule
(the workers themselves share memory): at every sync a taking-part worker uploads
``vectors x 4 x P`` bytes (its gradient, or its parameters / pseudo-gradient plus
whatever else the method averages: SCAFFOLD's control-variate change, averaged
optimizer state) -- the federated-learning convention of client upload. A
bandwidth-optimal ring allreduce of the same vectors would send ``2 (N-1)/N`` times
that; ``comm_ring_bytes_per_sync`` reports it. Hogwild counts one gradient per step;
combiners without in-training sync (weight_avg, ensembles, soups) count none (their
one final collection is not a sync).

Periodic evaluation is light by construction: worker 0 copies the synced model (the
shared vector, the average, or the server model) into an arena slot after the first
sync at or past every ``eval_every`` steps -- O(P), no barrier -- and the coordinator
scores the copies after training, off the clock, on the validation split (or the test
set when there is none; ``eval_split`` says which).
"""

from __future__ import annotations

import time

import numpy as np

from fastdist.combiners.base import CombinedModel
from fastdist.combiners.evaluate import evaluate
from fastdist.combiners.exchange import Exchange, Sync, communication_bytes
from fastdist.data.partitions import label_histograms

__all__ = ["Snapshots", "eval_arrays", "sync_steps", "run_accounting"]


def eval_arrays(eval_every: int | None, total_steps: int, size: int, sync: Sync) -> dict:
    """The arena slots for periodic evaluation (none without in-training sync)."""
    if not eval_every or sync in (Sync.NONE, Sync.ASYNC):
        return {}
    n = total_steps // int(eval_every)
    # eval_marks rows: (steps done, nanoseconds since the workers' clock started)
    return {"eval_models": ((n, size), np.float32), "eval_marks": ((n, 2), np.int64)}


class Snapshots:
    """Worker 0's side: copy the synced model into slot m-1 at the first sync at or past
    m * every steps. Slots are a function of the step, so a respawned or resumed run
    writes the same slots."""

    def __init__(self, arena, every: int | None, exchange: Exchange, spec) -> None:
        has = "eval_models" in arena
        self.models = arena["eval_models"] if has else None
        self.marks = arena["eval_marks"] if has else None
        self.every, self.exchange, self.total = every, exchange, spec.total_steps
        self.synced = exchange.synced_model(arena) if has else None
        self.due = (spec.start_step // every + 1) * every if every else 0

    def maybe_take(self, step: int, start: float) -> None:
        done = step + 1
        if self.models is None or done < self.due:
            return
        if not self.exchange.sync_at(step, self.total):
            return
        slot = done // self.every - 1
        self.models[slot] = self.synced
        self.marks[slot] = (done, int((time.monotonic() - start) * 1e9))
        self.due = (done // self.every + 1) * self.every


def sync_steps(exchange: Exchange, start: int, total: int) -> np.ndarray:
    """The (0-based) steps in ``[start, total)`` after which the workers sync."""
    steps = [s for s in range(start, total) if exchange.sync_at(s, total)]
    return np.array(steps, dtype=np.int64)


def _communication(exchange: Exchange, n_state, size, workers, start, total):
    """(metrics, steps of the syncs, mean bytes per worker after each of them)."""
    syncs = sync_steps(exchange, start, total)
    payload = communication_bytes(exchange, workers, size, n_state)
    taking_part = exchange.participants(workers)
    per_worker = payload * taking_part / workers  # mean over workers, per sync
    cumulative = per_worker * np.arange(1, len(syncs) + 1)
    metrics = {
        "comm_syncs": len(syncs),
        "comm_vectors_per_sync": payload // (4 * size),
        "comm_bytes_per_sync": payload,
        "comm_ring_bytes_per_sync": payload * 2 * (workers - 1) / workers,
        "comm_participants_per_sync": taking_part,
        "comm_bytes_per_worker": float(per_worker * len(syncs)),
        "comm_bytes_total": float(per_worker * len(syncs) * workers),
    }
    return metrics, syncs, cumulative


def _timing(done: dict) -> dict:
    finished = [d for d in done.values() if "sync_seconds" in d]
    if not finished:
        return {}
    sync = float(np.mean([d["sync_seconds"] for d in finished]))
    wall = float(np.mean([d["end"] - d["start"] for d in finished]))
    return {
        "time_sync_seconds": sync,
        "time_compute_seconds": wall - sync,
        "time_sync_fraction": sync / wall if wall > 0 else 0.0,
    }


def _evaluations(arena, model, data, syncs, cumulative) -> tuple[list[dict], str]:
    if "eval_marks" not in arena:
        return [], "none"
    if data.validation is not None:
        (x, y), split = data.validation, "validation"
    else:
        x, y, split = data.dataset.x_test, data.dataset.y_test, "test"
    out = []
    for vector, (done, nanos) in zip(arena["eval_models"], arena["eval_marks"]):
        if done <= 0:
            continue
        scores = evaluate(CombinedModel((vector.copy(),)), model, x, y)
        n_syncs = int(np.searchsorted(syncs, done - 1, side="right"))
        out.append(
            {
                "step": int(done),
                "seconds": round(nanos / 1e9, 6),
                "accuracy": scores["accuracy"],
                "loss": scores["loss"],
                "syncs": n_syncs,
                "bytes_per_worker": float(cumulative[n_syncs - 1]) if n_syncs else 0.0,
            }
        )
    return out, split


def _time_to_accuracy(evaluations: list[dict], target: float | None) -> dict:
    if target is None:
        return {}
    hit = next((e for e in evaluations if e["accuracy"] >= target), None)
    return {
        "target_accuracy": target,
        "time_to_accuracy_step": None if hit is None else hit["step"],
        "time_to_accuracy_seconds": None if hit is None else hit["seconds"],
        "time_to_accuracy_bytes_per_worker": None if hit is None else hit["bytes_per_worker"],
    }


def run_accounting(cfg, arena, combiner, optimizer, model, data, spec, done) -> dict:
    """The partition, communication, timing and evaluation keys of metrics.json."""
    workers = len(data.shards)  # every node's under dist=mpi
    comm, syncs, cumulative = _communication(
        combiner.exchange,
        len(optimizer.state_names),
        model.layout.size,
        workers,
        spec.start_step,
        spec.total_steps,
    )
    evaluations, split = _evaluations(arena, model, data, syncs, cumulative)
    partition = cfg.get("partition") or {"_target_": "iid"}
    target = cfg.get("target_accuracy")
    return {
        "partition": str(partition["_target_"]).rsplit(".", 1)[-1],
        "partition_options": {str(k): v for k, v in partition.items() if k != "_target_"},
        "shard_sizes": [hi - lo for lo, hi in data.shards],
        "shard_label_histograms": label_histograms(
            np.asarray(data.y_train), data.shards, data.dataset.n_classes
        ),
        **comm,
        **_timing(done),
        "eval_split": split,
        "evaluations": evaluations,
        **_time_to_accuracy(evaluations, None if target is None else float(target)),
    }
