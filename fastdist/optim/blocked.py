"""The block walk every fused optimizer update shares: ``[lo, hi)`` in blocks of
:data:`BLOCK` floats, each handed to the optimizer's elementwise block kernel, with the
gradient either the caller's own or the mean of the workers' rows.

A block kernel has the signature ``kernel(start, stop, g, *args)``: ``g`` is the
gradient of the block as a 0-based view, and the kernel slices its own vectors (the
parameters, its state) to ``[start, stop)`` before its loop; ``args`` is the tuple of
everything else it takes, in order. For example::

    @njit(cache=True, nogil=True)
    def sgd_update(params, momentum, grad, lr, mu, weight_decay, nesterov, scale, lo, hi):
        for_blocks(_sgd_block, grad, lo, hi, (params, momentum, scale, lr, ...))

The drivers are ``inline="always"``: Numba pastes them into the calling ``@njit``
function, so the kernel is a compile-time constant there. Passed as a value to a
compiled (not inlined) driver instead, a kernel makes the caller hold a dynamic global
and Numba refuses to cache it (``cache=True`` warns and compiles again in every
process). The caller's cache does not see edits to this file (Numba only checks the
cached function's own source file): clear ``__pycache__`` after changing it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from fastdist.engine.allreduce import block_mean

__all__ = ["BLOCK", "for_blocks", "for_blocks_of_mean"]

# Kernels loop over 0-based views of a block: with a loop variable known to be
# non-negative Numba drops its negative-index wraparound check and LLVM vectorises the
# loop (measured 3x faster than indexing the full arrays from ``lo``). A block of the
# averaged gradient (4096 floats, 16 KiB) stays in L1 between the reduction and the
# update.
BLOCK = 4096


@njit(inline="always")
def for_blocks(kernel, grad, lo, hi, args):
    """``kernel(start, stop, grad[start:stop], *args)`` for every block of ``[lo, hi)``."""
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        kernel(start, stop, grad[start:stop], *args)


@njit(inline="always")
def for_blocks_of_mean(kernel, grads, lo, hi, args):
    """The same walk with the block's gradient = the mean over the rows of ``grads``,
    summed in row order (:func:`~fastdist.engine.allreduce.block_mean`): bitwise the
    same whatever the slice bounds."""
    acc = np.empty(BLOCK, np.float32)
    for start in range(lo, hi, BLOCK):
        stop = min(start + BLOCK, hi)
        block_mean(grads, start, stop, acc)
        kernel(start, stop, acc[: stop - start], *args)
