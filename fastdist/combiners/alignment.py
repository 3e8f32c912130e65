"""Permutation-aligned weight averaging: Git Re-Basin (Ainsworth, Hayase and Srinivasa,
"Git Re-Basin: Merging Models modulo Permutation Symmetries", ICLR 2023).

Hidden units (or channels) can be permuted without changing the function a network
computes, so two independently initialised networks may solve the task with their
units in different orders, and averaging them unit by unit mixes unrelated features.
Git Re-Basin permutes the units of one network to match another's, then averages:

- weight matching (the paper's Algorithm 1): maximise the inner product of all the
  parameters, one permutation at a time (a linear assignment, solved with the Hungarian
  method) with the others held fixed, over the permutations in random order until none
  improves;
- activation matching (Section 3.1): maximise the inner product of each layer's unit
  activations on the same training rows; the activations of one layer do not depend on
  how the other layers are ordered, so this is one linear assignment per permutation;
- MergeMany (Algorithm 3), for more than two networks: visit the networks in random
  order and match each to the mean of all the others (as aligned so far), until a whole
  sweep moves no unit; then average. Matching every network to one reference instead
  (``method=reference``) is the simpler baseline.

Which axes may be permuted is the model's business: its record's
:meth:`~fastdist.models.base.Model.permutation_spec` lists, per permutation, the
``(tensor, axis)`` pairs it reorders. Convention: ``perms[j]`` is the permutation named
``spec.names[j]``; unit ``a`` of the permuted network is unit ``perms[j][a]`` of the
original, so every listed axis is indexed with ``perms[j]``.
"""

from __future__ import annotations

import numpy as np

from fastdist.combiners.averaging import weighted_mean_of_rows
from fastdist.combiners.base import (
    CombinedModel,
    Combiner,
    FinalizeInputs,
    check_init,
)
from fastdist.combiners.exchange import no_exchange
from fastdist.errors import ConfigError
from fastdist.models.base import Model, PermutationSpec

__all__ = [
    "permute",
    "weight_matching",
    "activation_matching",
    "unit_activations",
    "supports_activations",
    "merge_many",
    "aligned_avg",
    "require_permutation_spec",
]

METHODS = ("merge_many", "reference")
MATCHINGS = ("weight", "activation")
# Training rows whose activations activation matching compares (a fixed seeded subset,
# drawn evenly from the workers' shards; the paper uses training data, never test data).
ACTIVATION_ROWS = 512
# A conv layer contributes one sample per row and position; above this many, a fixed
# subset of them (the same for every network) keeps the cost bounded.
_MAX_ACTIVATION_SAMPLES = 32768
# How much the weights weigh in activation matching, relative to the activations: only
# enough to break ties (see _activation_reps).
TIE_BREAK = 1e-6

Tensors = dict[str, np.ndarray]
Perms = dict[str, np.ndarray]


def require_permutation_spec(model: Model) -> PermutationSpec:
    spec = model.permutation_spec()
    if spec is None:
        raise ConfigError(
            f"aligned_avg needs to know which axes of model {model.name} may be permuted "
            "(its record declares no permutation_spec)"
        )
    return spec


def _perm_size(model: Model, spec: PermutationSpec, perm: str) -> int:
    tensor, axis = spec.axes(perm)[0]
    return model.layout.shape(tensor)[axis]


def _perm_sizes(model: Model, spec: PermutationSpec) -> dict[str, int]:
    return {p: _perm_size(model, spec, p) for p in spec.names}


def _check_perms(model: Model, spec: PermutationSpec, perms: list) -> list[np.ndarray]:
    if len(perms) != len(spec.names):
        raise ValueError(f"need {len(spec.names)} permutations, got {len(perms)}")
    checked = []
    for j, perm in enumerate(perms):
        perm = np.asarray(perm)
        width = _perm_size(model, spec, spec.names[j])
        if perm.shape != (width,) or not np.array_equal(np.sort(perm), np.arange(width)):
            raise ValueError(
                f"perms[{j}] is not a permutation of the {width} units of {spec.names[j]}"
            )
        checked.append(perm)
    return checked


def _permuted(
    tensor: np.ndarray, axes: dict[int, str], perms: Perms, skip: int | None
) -> np.ndarray:
    for axis, perm in axes.items():
        if axis != skip:
            tensor = np.take(tensor, perms[perm], axis=axis)
    return tensor


def _permute_tensors(spec: PermutationSpec, tensors: Tensors, perms: Perms) -> Tensors:
    return {t: _permuted(a, spec.of_tensor(t), perms, None) for t, a in tensors.items()}


def permute(model: Model, flat: np.ndarray, perms: list[np.ndarray]) -> np.ndarray:
    """A copy of ``flat`` with every permutation of the model's spec applied; the
    network computes exactly the same function."""
    spec = require_permutation_spec(model)
    by_name = dict(zip(spec.names, _check_perms(model, spec, perms)))
    out = flat.copy()
    layout = model.layout
    for tensor in layout.names:
        axes = spec.of_tensor(tensor)
        if axes:
            layout.view(out, tensor)[...] = _permuted(
                layout.view(flat, tensor), axes, by_name, None
            )
    return out


def _is_identity(perms: Perms) -> bool:
    return all(np.array_equal(p, np.arange(len(p))) for p in perms.values())


def _units_moved(perms: Perms) -> int:
    return int(sum((p != np.arange(len(p))).sum() for p in perms.values()))


def _check_max_iter(max_iter: int) -> None:
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def _match(
    spec: PermutationSpec,
    sizes: dict[str, int],
    ref: Tensors,
    oth: Tensors,
    max_iter: int,
    seed: int,
) -> Perms:
    """The permutations of ``oth``'s units that best match ``ref`` (coordinate ascent
    on the summed inner product of every tensor the spec permutes).

    For each permutation, in a random order per sweep, the similarity of reference unit
    ``a`` and other unit ``b`` is the inner product of every tensor slice the
    permutation touches (the other permutations' current values applied to the other
    axes), and the best permutation is a linear assignment. Sweeps stop when none
    improves, or after ``max_iter``. Weight matching runs it on the parameters,
    activation matching on the units' activations (one tensor per permutation).
    """
    from scipy.optimize import linear_sum_assignment

    perms = {p: np.arange(sizes[p]) for p in spec.names}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter if spec.names else 0):
        improved = False
        for j in rng.permutation(len(spec.names)):
            p = spec.names[j]
            n = sizes[p]
            # cost[a, b]: reference unit a against other unit b of permutation p.
            cost = np.zeros((n, n))
            for tensor, axis in spec.axes(p):
                w_ref = np.moveaxis(ref[tensor], axis, 0).reshape(n, -1)
                w_oth = _permuted(oth[tensor], spec.of_tensor(tensor), perms, skip=axis)
                cost += w_ref @ np.moveaxis(w_oth, axis, 0).reshape(n, -1).T
            _, best = linear_sum_assignment(cost, maximize=True)
            units = np.arange(n)
            old, new = cost[units, perms[p]].sum(), cost[units, best].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p] = best
                improved = True
        if not improved:
            break
    return perms


def _weights(model: Model, flat: np.ndarray) -> Tensors:
    return {t: model.layout.view(flat, t).astype(np.float64) for t in model.layout.names}


def weight_matching(
    model: Model,
    reference_flat: np.ndarray,
    other_flat: np.ndarray,
    max_iter: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Permutations that map ``other_flat``'s units onto ``reference_flat``'s:
    ``permute(model, other_flat, perms)`` is the aligned network.

    Git Re-Basin's weight matching (Ainsworth et al. 2023, Algorithm 1): coordinate
    ascent on the inner product of all parameters, one linear assignment per
    permutation, permutations in a random order per sweep (``seed``), at most
    ``max_iter`` sweeps. Computed in float64.
    """
    _check_max_iter(max_iter)
    spec = require_permutation_spec(model)
    ref, oth = _weights(model, reference_flat), _weights(model, other_flat)
    perms = _match(spec, _perm_sizes(model, spec), ref, oth, max_iter, seed)
    return [perms[p] for p in spec.names]


# --- activation matching ---------------------------------------------------------------


def supports_activations(model: Model) -> bool:
    """Whether ``model``'s record gives its units' activations (``unit_activations``)."""
    return type(model).unit_activations is not Model.unit_activations


def _activation_spec(spec: PermutationSpec) -> PermutationSpec:
    """Permutation ``p`` reorders the columns (axis 1) of the activations ``act:p``, as
    well as its weight axes."""
    return PermutationSpec(tuple((p, (*spec.axes(p), (f"act:{p}", 1))) for p in spec.names))


def _activation_reps(
    model: Model, rows: list[np.ndarray], x: np.ndarray
) -> tuple[PermutationSpec, list[Tensors]]:
    """What activation matching compares, per network: its units' activations on ``x``
    (``act:<perm>``), and its weights scaled so that their inner products weigh
    ``TIE_BREAK`` times the activations' in total. The weights only break ties: units
    that never fire on ``x`` (dead ReLUs) have identical, all-zero activations, and
    would otherwise be paired arbitrarily."""
    spec = require_permutation_spec(model)
    acts = [unit_activations(model, row, x) for row in rows]
    weights = [_weights(model, row) for row in rows]
    act_norm = sum(float(np.vdot(a, a)) for rep in acts for a in rep.values())
    weight_norm = sum(float(np.vdot(w, w)) for rep in weights for w in rep.values())
    scale = np.sqrt(TIE_BREAK * act_norm / weight_norm) if weight_norm > 0 else 0.0
    reps = [
        {**{t: w * scale for t, w in ws.items()}, **{f"act:{p}": z for p, z in act.items()}}
        for ws, act in zip(weights, acts)
    ]
    return _activation_spec(spec), reps


def _fixed_subset(samples: np.ndarray) -> np.ndarray:
    """At most ``_MAX_ACTIVATION_SAMPLES`` rows, the same ones for every network."""
    if len(samples) <= _MAX_ACTIVATION_SAMPLES:
        return samples
    rows = np.random.default_rng(0).choice(len(samples), _MAX_ACTIVATION_SAMPLES, replace=False)
    return samples[np.sort(rows)]


def unit_activations(model: Model, params: np.ndarray, x: np.ndarray) -> Tensors:
    """Per permutation of the model's spec, its units' outputs on ``x`` (the record's
    ``unit_activations``, float64 ``(samples, units)``), conv maps cut to a fixed subset
    of at most ``_MAX_ACTIVATION_SAMPLES`` (row, position) samples."""
    acts = model.unit_activations(params, x)
    if acts is None:
        raise ConfigError(f"aligned_avg matching=activation cannot read model {model.name}'s units")
    return {name: _fixed_subset(np.asarray(z, dtype=np.float64)) for name, z in acts.items()}


def activation_matching(
    model: Model,
    reference_flat: np.ndarray,
    other_flat: np.ndarray,
    x: np.ndarray,
    max_iter: int = 100,
    seed: int = 0,
) -> list[np.ndarray]:
    """Permutations that map ``other_flat``'s units onto ``reference_flat``'s by their
    activations on ``x`` (training rows): per permutation, the linear assignment that
    maximises the inner product of matched units' activations, i.e. minimises
    ``||Z_ref - Z_other P||^2`` (Ainsworth et al. 2023, Section 3.1). One layer's
    activations do not depend on the other layers' order, so one assignment each would
    do; the weights, added as a tie-break (:func:`_activation_reps`), couple them again,
    hence sweeps as in weight matching (at most ``max_iter``)."""
    _check_max_iter(max_iter)
    spec, (ref, oth) = _activation_reps(model, [reference_flat, other_flat], x)
    perms = _match(spec, _perm_sizes(model, spec), ref, oth, max_iter, seed)
    return [perms[p] for p in spec.names]


def _activation_rows(inputs: FinalizeInputs, rows: int = ACTIVATION_ROWS) -> np.ndarray:
    """A fixed seeded subset of at most ``rows`` training rows, drawn evenly from the
    workers' shards (never the test set)."""
    shards = [x for x, _ in inputs.shards if len(x)]
    if not shards:
        raise ConfigError("aligned_avg matching=activation needs the workers' training shards")
    rng = np.random.default_rng(inputs.seed)
    per_shard = -(-rows // len(shards))
    picked = []
    for x in shards:
        index = np.sort(rng.choice(len(x), min(len(x), per_shard), replace=False))
        picked.append(np.asarray(x[index], dtype=np.float64))
    return np.concatenate(picked)[:rows]


# --- MergeMany ---------------------------------------------------------------------------


def merge_many(
    spec: PermutationSpec,
    sizes: dict[str, int],
    reps: list[Tensors],
    max_iter: int = 100,
    seed: int = 0,
    start: list[Perms] | None = None,
) -> tuple[list[Perms], int, bool]:
    """MergeMany (Ainsworth et al. 2023, Algorithm 3): the permutations that align
    every network of ``reps`` (each its tensors, keyed as ``spec`` names them) with the
    others, then ``(perms per network, sweeps run, converged)``.

    Each sweep visits the networks in a random order and matches network ``i`` to the
    mean of the other networks as currently aligned (``_match``, at most ``max_iter``
    sweeps of its own): matching to that mean maximises the sum of ``i``'s inner
    products with every other network, so the sum over all pairs never decreases. It
    stops after a sweep that moves no unit, or after ``max_iter`` sweeps.

    ``start``: the permutations to start from (the paper starts from the networks as
    they are; :func:`aligned_avg` starts from every network matched to one of them,
    since matching to the mean of unaligned networks is matching to a blur, which can
    leave coordinate ascent in a poor local optimum).
    """
    _check_max_iter(max_iter)
    n = len(reps)
    if start is None:
        start = [{p: np.arange(sizes[p]) for p in spec.names} for _ in reps]
    perms = [dict(found) for found in start]
    aligned = [_permute_tensors(spec, rep, found) for rep, found in zip(reps, perms)]
    total = {t: sum(r[t] for r in aligned) for t in aligned[0]} if n else {}
    rng = np.random.default_rng(seed)
    for sweep in range(1, max_iter + 1):
        moved = False
        for i in rng.permutation(n) if n > 1 else ():
            target = {t: (total[t] - aligned[i][t]) / (n - 1) for t in total}
            found = _match(spec, sizes, target, aligned[i], max_iter, int(rng.integers(2**31)))
            if _is_identity(found):
                continue
            moved = True
            perms[i] = {p: perms[i][p][found[p]] for p in spec.names}
            new = _permute_tensors(spec, reps[i], perms[i])
            total = {t: total[t] - aligned[i][t] + new[t] for t in total}
            aligned[i] = new
        if not moved:
            return perms, sweep, True
    return perms, max_iter, False


def _in_order_of(perms: list[Perms], k: int) -> list[Perms]:
    """``perms`` composed with the inverse of network ``k``'s: the same alignment,
    expressed in network ``k``'s unit order (network ``k`` is not moved)."""
    undo = {p: np.argsort(q) for p, q in perms[k].items()}
    return [{p: q[undo[p]] for p, q in found.items()} for found in perms]


# --- the combiner -------------------------------------------------------------------------


def _check_options(method: str, matching: str, max_iter: int, reference: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"combiner.method must be one of {', '.join(METHODS)}, got {method!r}")
    if matching not in MATCHINGS:
        raise ConfigError(
            f"combiner.matching must be one of {', '.join(MATCHINGS)}, got {matching!r}"
        )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"combiner.max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 0:
        raise ConfigError(f"combiner.reference must be a worker index >= 0, got {reference!r}")


def aligned_avg(
    init: str = "independent",
    reference: int = 0,
    method: str = "merge_many",
    matching: str = "weight",
    max_iter: int = 100,
) -> Combiner:
    """Git Re-Basin (Ainsworth et al. 2023): permute every worker's units into one
    order, then average the aligned parameter vectors (in float64, weighted by samples
    seen exactly as ``weight_avg``: the plain mean unless a worker failed and the others
    went on).

    ``method``: ``merge_many`` (Algorithm 3: each worker matched to the mean of the
    others until no unit moves) or ``reference`` (every worker matched to worker
    ``reference``). With two workers both are the same: the other worker matched to
    worker ``reference``. MergeMany starts from the ``reference`` method's alignment
    (:func:`merge_many`), and either way the result keeps worker ``reference``'s unit
    order. ``matching``: ``weight`` (weight
    matching) or ``activation`` (activation matching on a fixed seeded subset of
    ``ACTIVATION_ROWS`` training rows from the shards). ``max_iter`` bounds the
    MergeMany sweeps and the sweeps of each weight matching. Deterministic for the
    run's seed.

    ``info["units_moved"]`` reports, per worker, how many units alignment moved (in
    worker ``reference``'s order); merge_many over more than two workers adds ``sweeps``
    and ``converged`` (whether a sweep ended that moved no unit).
    """
    _check_options(method, matching, max_iter, reference)
    init = check_init(init)

    def check_model(model: Model) -> None:
        require_permutation_spec(model)
        if matching == "activation" and not supports_activations(model):
            raise ConfigError(
                f"aligned_avg matching=activation cannot read model {model.name}'s unit "
                "activations (its record has no unit_activations): use matching=weight"
            )

    def finalize(inputs: FinalizeInputs) -> CombinedModel:
        rows, model = inputs.worker_params, inputs.model
        if reference >= len(rows):
            raise ConfigError(f"combiner.reference={reference} but there are {len(rows)} workers")
        check_model(model)
        perms, info = _align(model, rows, inputs, method, matching, max_iter, reference)
        spec = model.permutation_spec()
        aligned = [permute(model, row, [p[n] for n in spec.names]) for row, p in zip(rows, perms)]
        mean = weighted_mean_of_rows(np.stack(aligned), inputs.samples_seen)
        return CombinedModel(
            (mean,), info={"units_moved": [_units_moved(p) for p in perms], **info}
        )

    return Combiner("aligned_avg", no_exchange(), finalize, init=init, check_model=check_model)


def _align(
    model: Model,
    rows: np.ndarray,
    inputs: FinalizeInputs,
    method: str,
    matching: str,
    max_iter: int,
    reference: int,
) -> tuple[list[Perms], dict]:
    """Every worker's permutations, in worker ``reference``'s unit order, and what to
    report about them."""
    spec = require_permutation_spec(model)
    sizes = _perm_sizes(model, spec)
    if matching == "activation":
        spec, reps = _activation_reps(model, list(rows), _activation_rows(inputs))
    else:
        reps = [_weights(model, row) for row in rows]
    perms = []
    for k, rep in enumerate(reps):
        if k == reference:
            perms.append({p: np.arange(sizes[p]) for p in spec.names})
        else:
            perms.append(_match(spec, sizes, reps[reference], rep, max_iter, inputs.seed + k))
    if method == "reference" or len(rows) <= 2:
        return perms, {}
    perms, sweeps, converged = merge_many(spec, sizes, reps, max_iter, inputs.seed, perms)
    return _in_order_of(perms, reference), {"sweeps": sweeps, "converged": converged}
