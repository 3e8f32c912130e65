"""What a worker sends at a sync, compressed (``compress=``), with error feedback.

Workers publish one float32 vector each (a gradient, or an update theta_i - anchor)
into their own row of a shared ``(workers, P)`` array. fastdist simulates a compressed
exchange on that memory: a worker replaces its row by the decompressed value of what it
would have sent, and :meth:`Compression.bytes_per_vector` says how many bytes a network
would have carried. What the rows then meet (the mean, or an aggregation rule) sees
exactly what a real receiver would decode.

Element-wise compressors act on one worker's own row before the rows meet
(:func:`compress_row`): ``fp16``, ``bf16``, ``int8`` (one float32 scale per ``chunk``
values), ``topk`` and ``randk`` (a fraction ``ratio`` of the coordinates). With error
feedback (Seide et al. 2014, Karimireddy et al. 2019) a worker keeps what it did not
send in its residual row and adds it to its next vector, so nothing is lost, only late.

PowerSGD (Vogels et al. 2019) is a collective: the workers exchange rank-``rank``
factors of each weight matrix in two extra rounds and decode the mean together. Its
settings, its bytes and its arena arrays are here (:class:`Compression`,
:func:`powersgd_matrices`: which tensors it factors); the exchange itself is
:mod:`fastdist.combiners.powersgd`. Both kinds are bitwise reproducible.

The residuals and PowerSGD's warm-start Q live in the arena (:meth:`Compression.arrays`)
and checkpoints keep them (:attr:`Compression.checkpointed`), so a resumed run is
bitwise the run that was not interrupted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from fastdist.errors import ConfigError

__all__ = [
    "KINDS",
    "POWERSGD_STREAM",
    "RANDK_STREAM",
    "Compression",
    "bf16",
    "compress_row",
    "fp16",
    "int8",
    "none",
    "powersgd",
    "powersgd_matrices",
    "randk",
    "topk",
]

KINDS = ("none", "fp16", "bf16", "int8", "topk", "randk", "powersgd")

# The streams of np.random.default_rng that compress= draws from, side by side so that
# they never coincide with each other or with another use of the run's seed: randk's
# coordinates at a step are default_rng([seed, step, RANDK_STREAM]) (compress_row),
# PowerSGD's first Q default_rng([seed, POWERSGD_STREAM]) (fastdist.combiners.powersgd).
# Every worker draws the same numbers.
RANDK_STREAM = 0x72616E64  # "rand"
POWERSGD_STREAM = 0x70736764  # "psgd"

# 0-based loops over block views: see the note in fastdist.optim.blocked (vectorisation).
_BLOCK = 4096


def _show(value) -> str:
    """A setting's value as the error message prints it (0, not 0.0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return repr(value)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"compress.{name} must be an integer >= 1, got {_show(value)}")


@dataclass(frozen=True)
class Compression:
    """What each worker sends at a sync. Picklable: workers receive it.

    ``kind`` is one of :data:`KINDS`; ``ratio``: the fraction of coordinates topk and
    randk send; ``rank``: PowerSGD's rank; ``error_feedback``: carry what was not sent
    into the next vector; ``chunk``: values per float32 scale of int8. The factories
    below (one per kind, the Hydra schemas) take only their kind's options.
    """

    kind: str = "none"
    ratio: float = 0.01
    rank: int = 4
    error_feedback: bool = False
    chunk: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"compress must be one of {', '.join(KINDS)}, got {self.kind!r}")
        ratio = self.ratio
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, int | float | np.floating | np.integer)
            or not 0 < ratio <= 1
        ):
            raise ConfigError(f"compress.ratio must be in (0, 1], got {_show(ratio)}")
        _check_positive_int("rank", self.rank)
        _check_positive_int("chunk", self.chunk)
        if not isinstance(self.error_feedback, bool | np.bool_):
            raise ConfigError(
                f"compress.error_feedback must be true or false, got {self.error_feedback!r}"
            )
        if self.kind == "none":
            # float32 arrives as it was sent: there is nothing to feed back, and no
            # residual row to allocate or checkpoint.
            object.__setattr__(self, "error_feedback", False)

    @property
    def is_collective(self) -> bool:
        """Whether the workers compress together (PowerSGD) rather than each its own
        row (:func:`compress_row`)."""
        return self.kind == "powersgd"

    def kept(self, size: int) -> int:
        """k, the coordinates topk and randk send of a vector of ``size`` floats:
        max(1, ceil(ratio * size)), at most ``size``."""
        # ratio*size is rounded to 6 decimals first, so that 0.1 * 30 (which is
        # 3.0000000000000004 in binary) keeps 3 coordinates, not 4.
        return min(int(size), max(1, math.ceil(round(float(self.ratio) * size, 6))))

    def matrix_rank(self, n: int, m: int) -> int:
        """PowerSGD's rank for an (n, m) matrix: ``rank``, at most min(n, m)."""
        return min(int(self.rank), int(n), int(m))

    def bytes_per_vector(self, size: int, matrices=()) -> int:
        """Bytes one worker sends for one vector of ``size`` float32 values.

        ``matrices``: PowerSGD's (offset, n, m) (:func:`powersgd_matrices`); entries
        outside them are sent as float32.
        """
        size = int(size)
        kind = self.kind
        if kind == "none":
            return 4 * size
        if kind in ("fp16", "bf16"):
            return 2 * size
        if kind == "int8":
            return size + 4 * -(-size // int(self.chunk))
        if kind == "topk":
            return 8 * self.kept(size)  # a float32 value and an int32 index each
        if kind == "randk":
            # The indices come from a seed every worker shares: only values travel.
            return 4 * self.kept(size)
        sent, covered = 0, 0
        for _, n, m in matrices:
            sent += (n + m) * self.matrix_rank(n, m)  # P_i (n, r) and Q_i (m, r)
            covered += n * m
        return 4 * (sent + size - covered)

    def arrays(self, workers: int, size: int, matrices=()) -> dict:
        """The arena arrays the compressor needs, name -> (shape, dtype).

        ``compress_residuals``: each worker's error-feedback residual. PowerSGD adds each
        worker's P_i (``compress_p``) and Q_i (``compress_q``) rows, and its own copy of
        the warm-start Q (``compress_warm_q``): every worker computes the same Q, and
        keeping one row each means no two processes ever write the same memory.
        """
        out = {}
        if self.error_feedback:
            out["compress_residuals"] = ((workers, size), np.float32)
        if self.is_collective:
            n_p = sum(n * self.matrix_rank(n, m) for _, n, m in matrices)
            n_q = sum(m * self.matrix_rank(n, m) for _, n, m in matrices)
            if n_q:  # nothing to factor: PowerSGD is the plain mean, with no rounds
                out["compress_p"] = ((workers, n_p), np.float32)
                out["compress_q"] = ((workers, n_q), np.float32)
                out["compress_warm_q"] = ((workers, n_q), np.float32)
        return out

    @property
    def checkpointed(self) -> tuple[str, ...]:
        """The arena arrays a checkpoint keeps so a resumed run is bitwise equal (those
        :meth:`arrays` allocated; P and Q rows are scratch within one sync)."""
        kept = ("compress_residuals",) if self.error_feedback else ()
        return kept + (("compress_warm_q",) if self.is_collective else ())


# The factories: ``compress=<kind>``. Their keyword arguments are the kind's options
# (fastdist.run.record_schemas turns them into the Hydra schema).


def none() -> Compression:
    """``compress=none``: workers send float32 (nothing is compressed)."""
    return Compression()


def fp16(error_feedback: bool = False) -> Compression:
    """``compress=fp16``: float16, round to nearest even; finite values beyond its
    range saturate at +-65504 (PyTorch DDP's fp16 hook)."""
    return Compression("fp16", error_feedback=bool(error_feedback))


def bf16(error_feedback: bool = False) -> Compression:
    """``compress=bf16``: bfloat16 (the top 16 bits of float32), round to nearest even."""
    return Compression("bf16", error_feedback=bool(error_feedback))


def int8(error_feedback: bool = False, chunk: int = 1024) -> Compression:
    """``compress=int8``: int8 with one float32 scale (max |x| / 127) per ``chunk``
    values, round half to even."""
    return Compression("int8", error_feedback=bool(error_feedback), chunk=chunk)


def topk(ratio: float = 0.01, error_feedback: bool = True) -> Compression:
    """``compress=topk``: the ``ratio`` of coordinates largest in magnitude, with their
    indices."""
    return Compression("topk", ratio=ratio, error_feedback=bool(error_feedback))


def randk(ratio: float = 0.01, error_feedback: bool = True) -> Compression:
    """``compress=randk``: ``ratio`` of the coordinates, the same random ones in every
    worker at a step (only values travel), not rescaled."""
    return Compression("randk", ratio=ratio, error_feedback=bool(error_feedback))


def powersgd(rank: int = 4, error_feedback: bool = True) -> Compression:
    """``compress=powersgd``: rank-``rank`` factors of each weight matrix, warm started
    (Vogels et al. 2019); other tensors are sent as float32."""
    return Compression("powersgd", rank=rank, error_feedback=bool(error_feedback))


def powersgd_matrices(layout, rank: int) -> tuple[tuple[int, int, int], ...]:
    """(offset, n, m) of each tensor of the flat ``layout`` PowerSGD factors: ndim >= 2,
    viewed as (shape[0], prod(shape[1:])), where the factors are smaller than the
    matrix, (n + m) * rank < n * m. Everything else is sent uncompressed."""
    out = []
    for name in layout.names:
        shape = layout.shape(name)
        if len(shape) < 2:
            continue
        n, m = int(shape[0]), math.prod(int(d) for d in shape[1:])
        if (n + m) * int(rank) < n * m:
            out.append((layout.bounds(name)[0], n, m))
    return tuple(out)


# Element-wise compressors -------------------------------------------------------------

_HALF = np.float32(0.5)
_I8_MAX = np.float32(127.0)
_I8_MIN = np.float32(-127.0)
_F16_MIN_NORMAL_BITS = 0x38800000  # 2**-14, float16's smallest normal value
_F16_MAX_BITS = 0x477FE000  # 65504, float16's largest finite value


@njit(inline="always")
def _elementwise(round_block, row, residual, feedback, block, arg):
    """row <- C(x) and, with ``feedback``, residual <- x - C(x), where x = row (+
    residual), one block of ``block`` values at a time (it stays in L1 between the
    loops). ``round_block(x, x_bits, c, c_bits, arg)`` writes C(x) into c; the bits are
    uint32 views of the same buffers."""
    x = np.empty(block, np.float32)
    c = np.empty(block, np.float32)
    x_bits, c_bits = x.view(np.uint32), c.view(np.uint32)
    for start in range(0, row.shape[0], block):
        stop = min(start + block, row.shape[0])
        n = stop - start
        r = row[start:stop]
        if feedback:
            e = residual[start:stop]
            for i in range(n):
                x[i] = r[i] + e[i]
        else:
            for i in range(n):
                x[i] = r[i]
        round_block(x[:n], x_bits[:n], c[:n], c_bits[:n], arg)
        for i in range(n):
            r[i] = c[i]
        if feedback:
            for i in range(n):
                e[i] = x[i] - c[i]


@njit(cache=True, nogil=True)
def _fp16_block(x, x_bits, c, c_bits, _arg):
    for i in range(x.shape[0]):
        b = x_bits[i]
        a = b & 0x7FFFFFFF
        if a >= 0x7F800000:  # inf and NaN are sent as they are: a divergence stays seen
            c_bits[i] = b
        elif a >= _F16_MIN_NORMAL_BITS:
            # float16 keeps 10 of float32's 23 fraction bits: round the dropped 13 to
            # nearest, ties to even (the kept part's lowest bit), carrying into the
            # exponent. Finite values beyond float16's range SATURATE at +-65504 rather
            # than becoming inf (one large coordinate must not poison the mean).
            a = (a + 0xFFF + ((a >> 13) & 1)) & 0xFFFFE000
            c_bits[i] = (b & 0x80000000) | min(a, _F16_MAX_BITS)
        else:
            # float16's subnormals are multiples of 2**-24: adding 0.5 in float32 (ulp
            # 2**-24 there) rounds |x| to one, ties to even, and subtracting is exact.
            v = x[i]
            c[i] = math.copysign((abs(v) + _HALF) - _HALF, v)


@njit(cache=True, nogil=True)
def _bf16_block(x, x_bits, c, c_bits, _arg):
    for i in range(x.shape[0]):
        b = x_bits[i]
        if (b & 0x7FFFFFFF) > 0x7F800000:
            # NaN: truncating could clear every fraction bit (inf); set the quiet bit.
            c_bits[i] = (b | 0x00400000) & 0xFFFF0000
        else:
            # Round the low 16 bits to nearest, ties to even (bit 16). The same bits
            # work for subnormals and signs; the largest values round to inf, as
            # bfloat16 does.
            c_bits[i] = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000


@njit(cache=True, nogil=True)
def _int8_block(x, x_bits, c, c_bits, chunk):
    # The block holds whole chunks (compress_row sizes it so): a chunk's scale is
    # computed from its own values only.
    for start in range(0, x.shape[0], chunk):
        xs = x[start : start + chunk]
        cs = c[start : start + chunk]
        amax = np.float32(0.0)
        for i in range(xs.shape[0]):
            a = abs(xs[i])
            if not a <= amax:  # takes NaN too, which then spreads to the whole chunk
                amax = a
        scale = amax / _I8_MAX  # the float32 sent beside the chunk's int8 values
        if scale == 0:
            # An all-zero chunk (or one too small for a nonzero float32 scale) decodes
            # to zeros.
            for i in range(xs.shape[0]):
                cs[i] = 0.0
        else:
            for i in range(xs.shape[0]):
                q = np.rint(xs[i] / scale)  # round half to even
                cs[i] = min(max(q, _I8_MIN), _I8_MAX) * scale


@njit(cache=True, nogil=True)
def _fp16_row(row, residual, feedback):
    _elementwise(_fp16_block, row, residual, feedback, _BLOCK, 0)


@njit(cache=True, nogil=True)
def _bf16_row(row, residual, feedback):
    _elementwise(_bf16_block, row, residual, feedback, _BLOCK, 0)


@njit(cache=True, nogil=True)
def _int8_row(row, residual, feedback, chunk):
    block = chunk * max(1, _BLOCK // chunk)  # whole chunks per block
    _elementwise(_int8_block, row, residual, feedback, block, chunk)


_NO_RESIDUAL = np.empty(0, np.float32)


def _top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest |x|; ties go to the lowest index, NaN counts as the
    largest (it is sent, so the divergence is seen). O(P): one partition."""
    a = np.abs(x)
    a[np.isnan(a)] = np.inf
    if k >= a.size:
        return np.arange(a.size)
    kth = a.size - k
    threshold = np.partition(a, kth)[kth]  # the k-th largest magnitude
    above = np.flatnonzero(a > threshold)  # fewer than k
    ties = np.flatnonzero(a == threshold)[: k - above.size]
    return np.concatenate((above, ties))


def _random_indices(size: int, k: int, seed: int, step: int) -> np.ndarray:
    """k distinct coordinates, the same in every worker at ``step``: Generator.choice
    without replacement is O(k) (Floyd's algorithm) or O(P) (a partial shuffle)."""
    rng = np.random.default_rng([int(seed), int(step), RANDK_STREAM])
    return rng.choice(size, k, replace=False, shuffle=False)


def compress_row(
    comp: Compression, row: np.ndarray, residual: np.ndarray | None, seed: int, step: int
) -> None:
    """This worker's ``row`` becomes what it sends, decompressed, in place.

    With ``residual`` (error feedback): x = row + residual (in float32), row <- C(x),
    residual <- x - C(x). What holds exactly, in float32: for topk and randk every
    coordinate is either sent (residual 0) or not (sent 0), so sent + residual == x
    bitwise; for fp16, bf16 and int8 C(x) lies within a factor 2 of x or is 0, so x -
    C(x) is exact (Sterbenz) and again sent + residual == x, except where fp16
    saturates or bf16 rounds to inf. Without ``residual``: row <- C(row).

    ``seed`` and ``step`` choose randk's coordinates (the same in every worker).
    """
    kind = comp.kind
    if kind == "none":
        return
    if comp.is_collective:
        raise ValueError(f"compress={kind} is a collective: use PowerSGDWorker")
    if row.dtype != np.float32 or row.ndim != 1 or not row.flags.c_contiguous:
        raise ValueError("compress_row needs a contiguous 1-d float32 row")
    feedback = residual is not None
    if feedback and (residual.shape != row.shape or residual.dtype != np.float32):
        raise ValueError("the residual must be a float32 row of the row's shape")
    res = residual if feedback else _NO_RESIDUAL
    if kind == "fp16":
        _fp16_row(row, res, feedback)
    elif kind == "bf16":
        _bf16_row(row, res, feedback)
    elif kind == "int8":
        _int8_row(row, res, feedback, int(comp.chunk))
    else:
        x = row + residual if feedback else row
        k = comp.kept(row.shape[0])
        idx = _top_indices(x, k) if kind == "topk" else _random_indices(row.shape[0], k, seed, step)
        sent = x[idx]  # a copy
        if feedback:
            residual[:] = x
            residual[idx] = 0.0
        row[:] = 0.0
        row[idx] = sent
