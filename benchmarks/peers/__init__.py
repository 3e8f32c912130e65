"""Peer baselines that train fastdist's reference workload W1 (see README.md).

Each module in :data:`PEERS` exposes ``run(steps, warmup, workers, batch=256,
sizes=(784, 1024, 1024, 10), seed=0) -> dict`` and ``available() -> bool``.

``PEERS`` (name -> module) is built on first access (PEP 562), so that
``python -m benchmarks.peers.X`` does not import X twice; torch and jax are only
imported inside ``run``, so importing any peer module is cheap.
"""

from __future__ import annotations

import importlib

PEER_NAMES = ("torch_single", "torch_ddp", "jax_single", "naive_pool")

__all__ = ["PEERS", "PEER_NAMES", "available_peers"]


def __getattr__(name: str):
    if name == "PEERS":
        peers = {n: importlib.import_module(f"{__name__}.{n}") for n in PEER_NAMES}
        return globals().setdefault("PEERS", peers)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _peers() -> dict:
    return globals()["PEERS"] if "PEERS" in globals() else __getattr__("PEERS")


def available_peers() -> dict:
    """The subset of ``PEERS`` whose library is importable here."""
    return {name: mod for name, mod in _peers().items() if mod.available()}
