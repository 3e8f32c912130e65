"""Communication accounting, timing and the partition's record, for metrics.json, with
the evaluations of the run's history (run/evaluation.py).

Bytes are what a worker WOULD send over a network, counted by the combiner's exchange
(``Exchange.sync_at``, ``vectors_per_sync``, ``participants``)
(the workers themselves share memory): at every sync a taking-part worker uploads
``vectors x 4 x P`` bytes (its gradient, or its parameters / pseudo-gradient plus
whatever else the method averages: SCAFFOLD's control-variate change, averaged
optimizer state) -- the federated-learning convention of client upload. A
bandwidth-optimal ring allreduce of the same vectors would send ``2 (N-1)/N`` times
that; ``comm_ring_bytes_per_sync`` reports it. Hogwild counts one gradient per step;
combiners without in-training sync (weight_avg, ensembles, soups) count none (their
one final collection is not a sync). history.csv's ``bytes_synchronised`` is the same
count (run/history.bytes_per_sync).
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.exchange import Exchange, communication_bytes
from fastdist.data.partitions import label_histograms
from fastdist.run.evaluation import evaluations

__all__ = ["sync_steps", "run_accounting"]


def sync_steps(exchange: Exchange, start: int, total: int) -> np.ndarray:
    """The (0-based) steps in ``[start, total)`` after which the workers sync."""
    steps = [s for s in range(start, total) if exchange.sync_at(s, total)]
    return np.array(steps, dtype=np.int64)


def _communication(exchange: Exchange, n_state, size, workers, start, total):
    """(metrics, steps of the syncs, mean bytes per worker after each of them)."""
    syncs = sync_steps(exchange, start, total)
    payload = communication_bytes(exchange, size, n_state)
    taking_part = exchange.participants(workers)
    per_worker = payload * taking_part / workers  # mean over workers, per sync
    cumulative = per_worker * np.arange(1, len(syncs) + 1)
    metrics = {
        "comm_syncs": len(syncs),
        "comm_vectors_per_sync": exchange.vectors_per_sync(n_state),
        "comm_bytes_per_sync": payload,
        # What compression saves: float32 bytes of the same vectors over bytes sent.
        "comm_compression_ratio": 4 * size * exchange.vectors_per_sync(n_state) / payload
        if payload
        else 1.0,
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


def run_accounting(cfg, combiner, optimizer, model, data, spec, done, history: list) -> dict:
    """The partition, communication, timing and evaluation keys of metrics.json (the
    evaluations are ``history``'s scored rows: run/evaluation.py)."""
    workers = len(data.shards)  # every node's under dist=mpi
    comm, syncs, cumulative = _communication(
        combiner.exchange,
        len(optimizer.state_names),
        model.layout.size,
        workers,
        spec.start_step,
        spec.total_steps,
    )
    partition = cfg.get("partition") or {"_target_": "iid"}
    target = cfg.eval.target_accuracy
    return {
        "partition": str(partition["_target_"]).rsplit(".", 1)[-1],
        "partition_options": {str(k): v for k, v in partition.items() if k != "_target_"},
        "shard_sizes": [hi - lo for lo, hi in data.shards],
        "shard_label_histograms": label_histograms(
            np.asarray(data.y_train), data.shards, data.dataset.n_classes
        ),
        **comm,
        **_timing(done),
        **evaluations(history, spec.start_step, syncs, cumulative, target),
    }
