"""Benchmarks run single-threaded math unless a benchmark says otherwise: the pin must
be in the environment before NumPy/SciPy load their BLAS (see fastdist.engine.threads)."""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
