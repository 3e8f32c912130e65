"""JAX/XLA MLP forward/backward behind the same interface as :class:`NumbaKernel`.

One ``jax.jit``-compiled function takes the *flat* float32 parameter vector, slices and
reshapes it into the layout's tensors (``w{l}``/``b{l}``) with static offsets inside the
trace, and returns ``jax.value_and_grad`` of the mean softmax cross-entropy with respect
to those *tensors* (not the flat vector: see :func:`jit_loss_and_predict` for why) plus
the number of correct argmax predictions; each tensor's gradient is then copied into its
slice of the flat gradient. Prediction is a second jitted function.

Copies, per ``loss_and_grad`` call:

* **In (NumPy -> XLA), zero or one copy per argument.** ``params``, ``x`` and ``y``
  arrive as NumPy views (shared memory). On the CPU backend, XLA aliases a C-contiguous
  NumPy buffer that is 64-byte aligned instead of copying it. The arena aligns every
  array to 64 bytes, so row 0 of ``params`` is zero-copy; row ``k`` of a 2-D arena
  array is aligned only if its row size is a multiple of 64 bytes (not the case for
  the W1 MLP: 1,863,690 floats). An unaligned or non-contiguous argument is copied
  once into an XLA buffer (about 1 ms for the W1 parameters).
* **Out (XLA -> arena), exactly one copy.** JAX arrays are immutable and XLA allocates
  its own output buffers (there is no ``out=``; buffer donation only recycles *JAX*
  input buffers, never foreign NumPy memory), so the gradient cannot be computed into
  ``grad_out`` directly. ``np.asarray`` of each tensor's CPU result is a zero-copy
  read-only view, and copying it into its slice of ``grad_out`` is the single copy of
  the parameter count of floats into the worker's shared gradient slot, which the
  other workers read.

Compilation: a jitted function is traced (and compiled, or loaded from the persistent
cache) once per distinct input shape. The training loop always passes ``max_batch``
rows, so after the warm-up call ``compile_count`` stays constant; a smaller batch
compiles once more for its own shape. ``logits`` pads its last, short chunk to
``max_batch`` rows, so prediction compiles once whatever ``n`` is.

Threads and caches: XLA reads ``XLA_FLAGS`` when its CPU client starts and JAX reads its
``JAX_*`` variables when it is imported, so :func:`configure_jax_threads` returns the
environment a worker must set *before* importing JAX. That is why JAX itself is imported
lazily (inside the functions that need it): importing this module only checks that
JAX is installed, and raises :class:`ConfigError` if it is not.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from fastdist.errors import ConfigError
from fastdist.models.kernels.jax_dense import dense_forward

__all__ = [
    "JaxKernel",
    "configure_jax_threads",
    "enable_compilation_cache",
    "jit_loss_and_predict",
    "mlp_forward",
    "split_flat",
]

_MISSING_JAX = "backend=jax needs JAX: pip install 'fastdist[jax]'"

# Fail at import time of the kernel, without loading JAX (which would read its
# environment too early): find_spec only looks the packages up.
try:
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("jaxlib") is None:
        raise ImportError("jax")
except ImportError as exc:  # also raised by find_spec for a broken parent package
    raise ConfigError(_MISSING_JAX) from exc


def _import_jax():
    """``jax`` and ``jax.numpy``, imported on first use."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise ConfigError(_MISSING_JAX) from exc
    return jax, jnp


# XLA flags this module manages; any earlier value of these in XLA_FLAGS is replaced.
_ONE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
_DEVICE_FLAG = "--xla_force_host_platform_device_count=1"


def _flag_name(token: str) -> str:
    return token.lstrip("-").split("=", 1)[0]


def configure_jax_threads(n_threads: int, cache_dir: str | None = None) -> dict[str, str]:
    """Environment variables that a worker must set *before* importing JAX.

    * ``JAX_PLATFORMS=cpu``: never probe for accelerators.
    * ``XLA_FLAGS``: one CPU device (``--xla_force_host_platform_device_count=1``) and,
      for ``n_threads == 1``, Eigen's multi-threading off with an intra-op pool of one
      thread (``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``).
      Flags already in ``os.environ["XLA_FLAGS"]`` are kept, except earlier values of
      the flags set here.
    * Caveat, measured with jaxlib 0.10.2: these flags no longer pin XLA. Its CPU
      runtime sizes its compute thread pool from the CPUs the process may run on, so
      with the flags set the W1 MLP still kept two threads fully busy on a 2-CPU
      machine. What does pin it is the CPU affinity: restrict it (``taskset``, or
      ``os.sched_setaffinity(0, cpus)`` in the worker before its first JAX computation,
      which is when the CPU client starts) to ``n_threads`` CPUs; that is also the only
      way to ask for N > 1 threads, for which XLA has no flag.
    * ``JAX_COMPILATION_CACHE_DIR`` (when ``cache_dir`` is given) with the minimum
      compile time and entry size lowered, so that even these small CPU programs are
      written to the persistent cache and a restarted worker loads them instead of
      recompiling. See also :func:`enable_compilation_cache` for a process that has
      already imported JAX.
    """
    if n_threads < 1:
        raise ConfigError(f"need at least one thread, got {n_threads}")
    ours = [_DEVICE_FLAG]
    if n_threads == 1:
        ours += list(_ONE_THREAD_FLAGS)
    managed = {_flag_name(flag) for flag in (*_ONE_THREAD_FLAGS, _DEVICE_FLAG)}
    kept = [t for t in os.environ.get("XLA_FLAGS", "").split() if _flag_name(t) not in managed]
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(kept + ours)}
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = os.fspath(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def enable_compilation_cache(cache_dir: str) -> None:
    """Turn on JAX's persistent compilation cache in this process.

    Must run before the first compilation; caches every program, however quick to
    compile (JAX's default skips programs that compile in under a second, which is
    all of ours on CPU).
    """
    jax, _ = _import_jax()
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def mlp_forward(mlp):
    """The MLP's forward pass as a traceable function of (tensors by layout name, x)."""
    names = [(f"w{layer}", f"b{layer}") for layer in range(mlp.n_layers)]

    def forward(tensors, x):
        return dense_forward(x, [(tensors[w], tensors[b]) for w, b in names])

    return forward


def split_flat(layout, flat):
    """The layout's tensors as slices of the flat vector, by name (traceable: static
    Python offsets, so plain slices and reshapes, no gathers)."""
    tensors = {}
    for name, shape in layout.shapes:
        start, stop = layout.bounds(name)
        tensors[name] = flat[start:stop].reshape(shape)
    return tensors


def jit_loss_and_predict(forward, layout, traces: dict[str, int]):
    """The jitted (loss, #correct, grads by tensor name) and logits functions of
    ``forward`` (tensors by ``layout`` name, x) -> logits, for any architecture.

    Both take the *flat* parameter vector and slice it into the layout's tensors inside
    the trace, but the gradient is taken with respect to those slices, not the flat
    vector: the transpose of "slice a flat vector" is "pad the slice's gradient to the
    full vector and add", so a gradient w.r.t. the flat vector costs one full-length
    pad and add per tensor (measured, W1 MLP, batch 256, one CPU: 34 ms of CPU time per
    call instead of 20 ms; XLA's dot itself is as fast as OpenBLAS's). The caller
    copies each tensor's gradient into its slice of the flat gradient instead.

    ``traces`` counts how often each Python body runs, i.e. how often JAX traced (and
    then compiled or loaded from the persistent cache) a new specialisation.
    """
    jax, jnp = _import_jax()

    def mean_loss(tensors, x, y):
        logits = forward(tensors, x)
        logp = jax.nn.log_softmax(logits, axis=1)
        picked = jnp.take_along_axis(logp, y[:, None], axis=1)
        # The batch size is static; max() keeps an empty batch at 0 rather than NaN.
        return -jnp.sum(picked) / max(x.shape[0], 1), logits

    def loss_and_grad(params, x, y):
        traces["loss_and_grad"] += 1
        value_and_grad = jax.value_and_grad(mean_loss, has_aux=True)
        (loss, logits), grads = value_and_grad(split_flat(layout, params), x, y)
        correct = jnp.sum(jnp.argmax(logits, axis=1) == y, dtype=jnp.int32)
        return loss, correct, grads

    def predict(params, x):
        traces["predict"] += 1
        return forward(split_flat(layout, params), x)

    return jax.jit(loss_and_grad), jax.jit(predict)


class JaxKernel:
    """XLA-compiled loss/gradient and prediction for one :class:`~fastdist.models.mlp.MLP`.

    Same calls and semantics as :class:`~fastdist.models.kernels.numba_mlp.NumbaKernel`:
    ``loss_and_grad`` writes the gradient of the mean loss into ``grad_out`` in place
    and returns ``(mean loss, #correct)``; ``logits`` fills ``out`` in chunks
    of at most ``max_batch`` rows.
    """

    name = "jax"

    def __init__(self, mlp, max_batch: int) -> None:
        self.model = mlp
        self.max_batch = int(max_batch)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._traces = {"loss_and_grad": 0, "predict": 0}
        self._loss_and_grad, self._predict = jit_loss_and_predict(
            self._forward(mlp), mlp.layout, self._traces
        )
        # Where each tensor's gradient goes in the flat gradient.
        self._grad_slices = {name: slice(*mlp.layout.bounds(name)) for name in mlp.layout.names}
        self._pad: np.ndarray | None = None  # the short last chunk of logits()

    def _forward(self, model):
        """The traceable forward pass; other architectures' kernels override this."""
        return mlp_forward(model)

    @property
    def compile_count(self) -> int:
        """How many times this kernel's jitted functions were traced and compiled
        (or loaded from the persistent cache): one per distinct input shape."""
        return sum(self._traces.values())

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray, grad_out: np.ndarray
    ) -> tuple[float, int]:
        """Write d(mean loss)/d(params) into ``grad_out``; return (mean loss, #correct)."""
        batch = x.shape[0]
        if batch > self.max_batch:
            raise ValueError(f"batch of {batch} exceeds the workspace ({self.max_batch})")
        if batch == 0:  # defined like the other kernels, without compiling a 0-row program
            grad_out[:] = 0.0
            return 0.0, 0
        # No-ops for the float32/int32 arrays of the training loop; other dtypes would
        # otherwise trace a new specialisation.
        params = np.asarray(params, dtype=np.float32)
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int32)
        loss, correct, grads = self._loss_and_grad(params, x, y)
        # The one copy: XLA's immutable output buffers -> the shared gradient slot.
        # np.asarray is a zero-copy view on CPU (and waits for the computation).
        for name, where in self._grad_slices.items():
            grad_out[where] = np.asarray(grads[name]).reshape(-1)
        return float(loss), int(correct)

    def logits(self, params: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
        """Logits of ``x`` into ``out``, in chunks of ``max_batch`` rows.

        A last chunk shorter than ``max_batch`` is copied into a padded buffer, so only
        the ``max_batch``-row program is ever compiled (rows are independent: padding
        rows do not affect the real ones).
        """
        params = np.asarray(params, dtype=np.float32)
        n = x.shape[0]
        for lo in range(0, n, self.max_batch):
            hi = min(lo + self.max_batch, n)
            if hi - lo == self.max_batch:
                chunk = np.asarray(x[lo:hi], dtype=np.float32)
            else:
                if self._pad is None:
                    self._pad = np.zeros((self.max_batch, self.model.n_inputs), np.float32)
                self._pad[: hi - lo] = x[lo:hi]
                chunk = self._pad
            out[lo:hi] = np.asarray(self._predict(params, chunk))[: hi - lo]
