"""The engine: shared memory, worker processes, barriers, allreduce, thread pinning,
cleanup and fault injection. It knows nothing of models, data or combiners."""
