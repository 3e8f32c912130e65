"""Local-update combiners: rounds of local steps, then an outer optimizer step on the
pseudo-gradient (FedAvg, FedAvgM, SlowMo, FedAdam/FedYogi/FedAdagrad, DiLoCo, FedProx,
SCAFFOLD), with optional partial participation.

A round is ``period`` steps (the last round of a run may be shorter: every run ends on
a sync). The server model ``theta`` (the arena's ``anchor``) is where every worker
starts a round. Workers taking part in round r run their local steps; at its end

    g = theta - mean_{i in S_r} theta_i        (the pseudo-gradient; weighted by shard
                                                size when weighting=samples)
    theta <- outer.update(theta, g)            (outer=average: theta <- the mean)

and every worker restarts from the new ``theta``. Both the mean and the outer step are
done in shared memory, worker k on slice k, between two barriers (the same O(P/N)
pattern as parameter averaging), by the exchange :class:`fastdist.combiners.rounds.Rounds`.

* ``outer``: ``average`` (FedAvg / local SGD), ``nesterov`` (DiLoCo), ``adam`` /
  ``yogi`` / ``adagrad`` (Reddi et al. 2021), or the name of ANY optimizer record in
  ``conf/optimizer/`` (``sgd`` = FedAvgM / SlowMo; ``adamw`` once it exists), built
  with the ``outer_*`` options its factory accepts.
* ``prox_mu`` > 0: FedProx (Li et al. 2020): each local gradient gets
  ``mu * (theta_i - theta)`` (the gradient of ``mu/2 ||theta_i - theta||^2``).
* ``scaffold``: SCAFFOLD (Karimireddy et al. 2020): local gradients are corrected by
  ``c - c_i``; after a round, ``c_i <-`` the mean of worker i's raw local gradients
  over the round (= option II's ``c_i - c + (theta - theta_i)/(K*lr)`` under plain SGD,
  and still a gradient estimate under momentum or Adam), and
  ``c <- c + (1/N) * sum_{i in S}(delta c_i)``. Control variates live in the arena.
* ``participation`` < 1: each round a seeded sample of ``round(participation*N)``
  workers (at least one) trains; the others idle (no compute, no data) and restart
  from the new ``theta``, as FedAvg's unsampled clients do.
* ``inner_state``: ``keep`` (each worker keeps its optimizer state across rounds;
  DiLoCo), ``average`` (averaged like the parameters) or ``reset`` (zeroed each round).
"""

from __future__ import annotations

import inspect

from fastdist.combiners.base import CombinedModel, Combiner, FinalizeInputs, require_shared
from fastdist.combiners.rounds import Rounds
from fastdist.errors import ConfigError
from fastdist.optim.base import Optimizer

__all__ = ["federated", "build_outer"]


def _shared_outer_kwargs(factory, options: dict) -> dict:
    """The ``outer_*`` options the factory accepts (``nesterov`` only when asked)."""
    accepted = inspect.signature(factory).parameters
    if options.get("nesterov") and "nesterov" not in accepted:
        raise ConfigError("this outer optimizer has no nesterov option; use outer=nesterov")
    return {k: v for k, v in options.items() if k in accepted}


def build_outer(name: str, **options) -> Optimizer | None:
    """The outer optimizer ``name`` (see the module docstring) with ``options``
    (lr, momentum, nesterov, beta1, beta2, tau; each factory takes what it knows)."""
    from fastdist.optim import server

    if name == "average":
        return None
    if name in ("adam", "yogi", "adagrad"):
        return server.server_adaptive(name, **_shared_outer_kwargs(server.server_adaptive, options))
    if name == "nesterov":
        return server.nesterov_sgd(**_shared_outer_kwargs(server.nesterov_sgd, options))
    from fastdist.conf import registered, resolve

    targets = registered("optimizer")
    if name not in targets:
        known = ["average", "nesterov", "adam", "yogi", "adagrad", *targets]
        raise ConfigError(f"combiner.outer must be one of {known}, got {name!r}")
    factory = resolve(targets[name])
    record = factory(**_shared_outer_kwargs(factory, options))
    if not isinstance(record, Optimizer):
        raise ConfigError(f"combiner.outer={name} does not build an optimizer")
    return record


def _server_model(inputs: FinalizeInputs) -> CombinedModel:
    # Every run ends on a sync, after which every row holds the server model.
    return CombinedModel((inputs.worker_params[0].copy(),))


def federated(
    period: int = 8,
    outer: str = "average",
    outer_lr: float = 1.0,
    outer_momentum: float = 0.0,
    outer_nesterov: bool = False,
    outer_beta1: float = 0.9,
    outer_beta2: float = 0.99,
    outer_tau: float = 1e-3,
    prox_mu: float = 0.0,
    scaffold: bool = False,
    participation: float = 1.0,
    weighting: str = "uniform",
    inner_state: str = "keep",
    name: str = "fedavg",
    init: str = "shared",
) -> Combiner:
    """Rounds of ``period`` local steps, then ``outer`` on the pseudo-gradient (see the
    module docstring). ``conf/combiner/{fedavg,fedavgm,fedadam,fedyogi,slowmo,diloco,
    fedprox,scaffold}.yaml`` are presets of this one factory; ``name`` labels the run."""
    if not isinstance(period, int) or period < 1:
        raise ConfigError(f"combiner.period must be a positive integer, got {period!r}")
    if not 0 < participation <= 1:
        raise ConfigError(f"combiner.participation must be in (0, 1], got {participation}")
    if prox_mu < 0:
        raise ConfigError(f"combiner.prox_mu must be >= 0, got {prox_mu}")
    if weighting not in ("uniform", "samples"):
        raise ConfigError(f"combiner.weighting must be uniform or samples, got {weighting!r}")
    if inner_state not in ("keep", "average", "reset"):
        raise ConfigError(
            f"combiner.inner_state must be keep, average or reset, got {inner_state!r}"
        )
    if scaffold and weighting != "uniform":
        raise ConfigError("SCAFFOLD's server update is a uniform mean: use weighting=uniform")
    options = {
        "lr": outer_lr,
        "momentum": outer_momentum,
        "nesterov": outer_nesterov,
        "beta1": outer_beta1,
        "beta2": outer_beta2,
        "tau": outer_tau,
    }
    rounds = Rounds(
        period=period,
        outer=build_outer(str(outer), **options),
        prox_mu=float(prox_mu),
        scaffold=bool(scaffold),
        participation=float(participation),
        weighting=weighting,
        inner_state=inner_state,
    )
    return Combiner(str(name), rounds, _server_model, init=require_shared(init, str(name)))
