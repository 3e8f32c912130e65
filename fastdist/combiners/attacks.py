"""Simulated Byzantine workers: some workers publish an attack instead of their result.

Every worker writes a float32 vector into its own row of an arena array ``rows`` (N, P):
a gradient, or a model update theta_i - anchor. Under :class:`Byzantine`, the ranks in
``workers`` replace what they publish, so robust aggregation rules can be studied
against known attacks. The attacks come in three kinds, by what the attacker needs:

* on its own row (``sign_flip``: -u; ``scaled``: scale * u; ``gaussian``: N(0, sigma^2)
  noise instead of u, Blanchard et al. 2017): :func:`attack_own_row`, called by the
  attacker on its own vector before the rows meet;
* on the honest rows (``alie``: mu - z * sd, Baruch et al. 2019; ``ipm``: -epsilon * mu,
  Xie et al. 2020), *omniscient*: they read every honest row, so they run after every
  row is written and before anyone reduces (:func:`attack_omniscient`, one slice of
  columns per worker, like the allreduce);
* on its data (``label_flip``: y -> n_classes - 1 - y): :func:`flip_labels` on the
  attacker's labels; it then trains and publishes honestly.

Randomness comes from the run's seed only (the choice of ranks from [seed, stream], the
gaussian noise from [seed, step, rank, stream]), never from timing or the process, so
an attacked run is as reproducible as a clean one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numba import njit

from fastdist.errors import ConfigError

__all__ = [
    "ATTACKS",
    "Byzantine",
    "alie_z",
    "attack_omniscient",
    "attack_own_row",
    "byzantine",
    "flip_labels",
]

ATTACKS = ("sign_flip", "gaussian", "scaled", "label_flip", "alie", "ipm")
_ON_OWN_ROW = ("sign_flip", "scaled", "gaussian")
_OMNISCIENT = ("alie", "ipm")
_ON_DATA = ("label_flip",)
# The parameters each attack reads: record() and describe() show these and no others.
_PARAMETERS = {"scaled": ("scale",), "gaussian": ("sigma",), "alie": ("z",), "ipm": ("epsilon",)}

# Keeps the attack's random streams apart from every other use of the seed (partitions,
# participation, shuffling draw from [seed, ...] with other tags or lengths).
_STREAM = 0xB42A

# Columns per block of the omniscient kernel: 4096 float64 means and sums of squares
# (2 x 32 KiB) plus one float32 block of each honest row, revisited for the second pass.
_BLOCK = 4096


@dataclass(frozen=True)
class Byzantine:
    """Which workers attack, and how. Picklable (it travels to the workers).

    Build it with :func:`byzantine`, which validates; the default attacks nobody.
    """

    workers: tuple[int, ...] = ()  # the attacking global ranks, sorted
    attack: str = "sign_flip"
    scale: float = 10.0  # scaled: publish scale * u
    sigma: float = 1.0  # gaussian: publish N(0, sigma^2) noise instead of u
    z: float | None = None  # alie: None -> alie_z(n, f), the z_max of Baruch et al.
    epsilon: float = 0.1  # ipm: publish -epsilon * (mean of the honest rows)
    seed: int = 0

    @property
    def active(self) -> bool:
        """Some worker attacks."""
        return bool(self.workers)

    # The three kinds below are False when nobody attacks, so a caller can test the
    # kind alone before adding a phase (an omniscient attack costs a barrier per step).
    @property
    def omniscient(self) -> bool:
        """The attackers read the honest rows (alie, ipm): they run after every row is
        written, with :func:`attack_omniscient`."""
        return self.active and self.attack in _OMNISCIENT

    @property
    def on_own_row(self) -> bool:
        """Each attacker alters its own published vector (sign_flip, scaled, gaussian),
        with :func:`attack_own_row`."""
        return self.active and self.attack in _ON_OWN_ROW

    @property
    def on_data(self) -> bool:
        """Each attacker trains on poisoned data (label_flip), with :func:`flip_labels`."""
        return self.active and self.attack in _ON_DATA

    def resolved_z(self, n_workers: int) -> float:
        """alie's z: the configured one, else Baruch et al.'s z_max for ``n_workers``
        workers of which ``len(workers)`` attack."""
        return float(self.z) if self.z is not None else alie_z(n_workers, len(self.workers))

    def _parameters(self) -> dict:
        return {name: getattr(self, name) for name in _PARAMETERS.get(self.attack, ())}

    def describe(self) -> str:
        """A short line for logs, e.g. ``workers 2, 5 attack with scaled (scale=10)``."""
        if not self.active:
            return "no Byzantine workers"
        ranks = ", ".join(str(w) for w in self.workers)
        who = f"worker {ranks} attacks" if len(self.workers) == 1 else f"workers {ranks} attack"
        params = ", ".join(
            f"{k}={'z_max' if v is None else format(v, 'g')}" for k, v in self._parameters().items()
        )
        return f"{who} with {self.attack}" + (f" ({params})" if params else "")

    def record(self, n_workers: int | None = None) -> dict:
        """A JSON-able dict for metrics.json: the workers, the attack and its own
        parameters. alie's z is null when it is z_max, unless ``n_workers`` is given:
        then it is the value z_max takes."""
        out: dict = {"workers": list(self.workers), "attack": self.attack}
        out.update(self._parameters())
        if self.attack == "alie" and self.z is None and n_workers is not None:
            out["z"] = self.resolved_z(n_workers)
        return out


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_real(name: str, value, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"byzantine.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        want = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"byzantine.{name} must be {want}, got {value!r}")
    return float(value)


def byzantine(
    count: int = 0,
    workers: list[int] | None = None,
    attack: str = "sign_flip",
    scale: float = 10.0,
    sigma: float = 1.0,
    z: float | None = None,
    epsilon: float = 0.1,
    *,
    n_workers: int,
    seed: int,
) -> Byzantine:
    """Validate the configuration and choose the attackers.

    ``workers`` names the attacking ranks (then ``count`` is 0 or their number); else
    ``count`` ranks are drawn from ``seed`` (the same seed, the same ranks). At least
    one worker stays honest. Every refusal is a one-line :class:`ConfigError`.
    """
    if not _is_int(n_workers) or n_workers < 1:
        raise ConfigError(f"byzantine needs a worker count >= 1, got {n_workers!r}")
    if not _is_int(seed):
        raise ConfigError(f"byzantine needs an integer seed, got {seed!r}")
    if attack not in ATTACKS:
        raise ConfigError(f"byzantine.attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    if not _is_int(count) or count < 0:
        raise ConfigError(f"byzantine.count must be an integer >= 0, got {count!r}")
    scale = _check_real("scale", scale, positive=False)
    sigma = _check_real("sigma", sigma, positive=True)
    epsilon = _check_real("epsilon", epsilon, positive=True)
    if z is not None:
        z = _check_real("z", z, positive=False)

    if workers is not None:
        ranks = list(workers)
        for w in ranks:
            if not _is_int(w) or not 0 <= w < n_workers:
                raise ConfigError(
                    f"byzantine.workers: {w!r} is not a worker rank in [0, {n_workers})"
                )
        if len(set(ranks)) != len(ranks):
            raise ConfigError(f"byzantine.workers lists a rank twice: {[int(w) for w in ranks]}")
        if count not in (0, len(ranks)):
            raise ConfigError(
                f"byzantine.count={count} but byzantine.workers lists {len(ranks)} ranks; "
                "give one of them"
            )
        if len(ranks) >= n_workers:
            raise ConfigError(
                f"byzantine.workers names all {n_workers} workers; at least one must be honest"
            )
        chosen = sorted(int(w) for w in ranks)
    else:
        if count >= n_workers:
            raise ConfigError(
                f"byzantine.count={count} leaves no honest worker among {n_workers} "
                "(it must be < the number of workers)"
            )
        rng = np.random.default_rng([int(seed), _STREAM])
        chosen = sorted(int(w) for w in rng.choice(n_workers, count, replace=False))
    return Byzantine(
        workers=tuple(chosen),
        attack=attack,
        scale=scale,
        sigma=sigma,
        z=z,
        epsilon=epsilon,
        seed=int(seed),
    )


def alie_z(n: int, f: int) -> float:
    """z_max of "A Little Is Enough" (Baruch et al. 2019) for ``f`` attackers of ``n``.

    The attackers need s = floor(n/2 + 1) - f honest "supporters" to make a majority
    with them; z_max is the largest z with Phi(z) < (n - s)/n, i.e. Phi^{-1}((n - s)/n).
    For example n=50, f=24: s=2, Phi^{-1}(0.96) = 1.7507.

    Edge cases, where the formula leaves [0, inf):

    * f = 0 (no attacker; also n = 1, nobody to hide among): 0. The formula would give
      a negative value ((n - s)/n < 1/2 exactly when f = 0), which would only reverse
      the direction of an attack nobody makes; 0 keeps z_max >= 0 and non-decreasing
      in f.
    * s <= 0 (f >= floor(n/2 + 1): the attackers are a majority and need no
      supporter): (n - s)/n >= 1 and the bound is infinite. We use s = 1, the largest
      finite value the formula takes (one supporter, Phi^{-1}((n - 1)/n)): an infinite
      or huge z would turn ALIE into a plain large-perturbation attack (or write inf),
      which is not what the attack studies. So z_max is constant once f passes n/2.

    With 1 <= f and n >= 2, s <= floor(n/2) <= n - 1, so (n - s)/n > 0 always: no lower
    clamp is needed. Plain ValueError outside 0 <= f <= n, n >= 1 (a caller's bug:
    :func:`byzantine` has validated the configuration).
    """
    if not (_is_int(n) and _is_int(f) and n >= 1 and 0 <= f <= n):
        raise ValueError(f"alie_z needs integers n >= 1 and 0 <= f <= n, got n={n!r}, f={f!r}")
    if f == 0 or n == 1:
        return 0.0
    s = max(math.floor(n / 2 + 1) - f, 1)
    return NormalDist().inv_cdf((n - s) / n)


def attack_own_row(byz: Byzantine, row: np.ndarray, rank: int, step: int) -> None:
    """Replace, in place, the vector ``row`` that attacker ``rank`` publishes at
    ``step`` (sign_flip, scaled, gaussian; the caller checks that ``rank`` attacks).

    gaussian draws float32 noise from [seed, step, rank, stream]: reproducible from the
    seed, independent of timing and of the other workers.
    """
    if byz.attack == "sign_flip":
        np.negative(row, out=row)
    elif byz.attack == "scaled":
        np.multiply(row, row.dtype.type(byz.scale), out=row)
    elif byz.attack == "gaussian":
        rng = np.random.default_rng([int(byz.seed), int(step), int(rank), _STREAM])
        rng.standard_normal(dtype=row.dtype, out=row)
        np.multiply(row, row.dtype.type(byz.sigma), out=row)
    else:
        raise ValueError(f"attack {byz.attack!r} does not act on the attacker's own row")


@njit(cache=True, nogil=True)
def _omniscient_block(rows, honest, attackers, start, stop, a, b, mu, ss):
    """Columns [start, stop): every attacker row <- a * mu + b * sd over the honest rows.

    Two passes per column, both in float64 and in the order of ``honest``: the sum
    (then the mean), then the sum of squared deviations from that mean. Two-pass
    rather than Welford: it needs no division per element (so it vectorises) and is
    at least as accurate; the block's honest rows were just read, so the second pass
    mostly hits cache. Each column's arithmetic depends only on that column, so the
    result is bitwise the same whatever the block and slice boundaries.
    """
    n = stop - start
    h = honest.shape[0]
    m = mu[:n]
    first = rows[honest[0], start:stop]
    for i in range(n):
        m[i] = first[i]
    for r in range(1, h):
        row = rows[honest[r], start:stop]
        for i in range(n):
            m[i] += row[i]
    for i in range(n):
        m[i] /= h
    if b != 0.0:
        q = ss[:n]
        for i in range(n):
            q[i] = 0.0
        for r in range(h):
            row = rows[honest[r], start:stop]
            for i in range(n):
                d = row[i] - m[i]
                q[i] += d * d
        for i in range(n):
            m[i] = a * m[i] + b * np.sqrt(q[i] / h)
    else:
        for i in range(n):
            m[i] = a * m[i]
    for r in range(attackers.shape[0]):
        row = rows[attackers[r], start:stop]
        for i in range(n):
            row[i] = m[i]


@njit(cache=True, nogil=True)
def _omniscient(rows, honest, attackers, lo, hi, a, b):
    mu = np.empty(_BLOCK, np.float64)
    ss = np.empty(_BLOCK, np.float64)
    for start in range(lo, hi, _BLOCK):
        _omniscient_block(rows, honest, attackers, start, min(start + _BLOCK, hi), a, b, mu, ss)


def attack_omniscient(
    byz: Byzantine, rows: np.ndarray, members: np.ndarray, lo: int, hi: int, z: float
) -> None:
    """Write columns [lo, hi) of every attacker's row among ``members``.

    ``rows`` (N, P) holds a row per global rank; ``members`` are the ranks taking part
    (all of them, or a round's participants). The honest members are the others; over
    them, per column: mu = mean, sd = population std (float64, in rank order). alie
    writes mu - z * sd (``z``: :meth:`Byzantine.resolved_z`), ipm -epsilon * mu; every
    attacker gets the same values. Each worker passes its own slice of columns, after
    every row is written and before anyone reduces: the slices read the honest rows
    and write only the attackers' rows, so they never race. Without an honest member,
    or an attacker, nothing changes.
    """
    if byz.attack == "alie":
        a, b = 1.0, -float(z)
    elif byz.attack == "ipm":
        a, b = -float(byz.epsilon), 0.0
    else:
        raise ValueError(f"attack {byz.attack!r} is not omniscient")
    if rows.ndim != 2 or not 0 <= lo <= hi <= rows.shape[1]:
        raise ValueError(f"columns [{lo}, {hi}) are not within rows of shape {rows.shape}")
    members = np.unique(np.asarray(members, dtype=np.int64))  # sorted: rank order
    bad = np.isin(members, np.asarray(byz.workers, dtype=np.int64))
    honest, attackers = members[~bad], members[bad]
    if honest.size == 0 or attackers.size == 0 or lo == hi:
        return
    _omniscient(rows, honest, attackers, int(lo), int(hi), a, b)


def flip_labels(y: np.ndarray, n_classes: int) -> None:
    """label_flip: y <- n_classes - 1 - y, in place (an involution on [0, n_classes))."""
    np.subtract(y.dtype.type(n_classes - 1), y, out=y)
