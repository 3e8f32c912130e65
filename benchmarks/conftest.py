"""Benchmarks run single-threaded math unless a benchmark says otherwise: the pin must
be in the environment before NumPy/SciPy load their BLAS (see fastdist.engine.threads)."""

from benchmarks.child_env import pin_this_process

pin_this_process()
