"""The recipe: configuration, the coordinator, the worker loop, supervision, MPI,
checkpoints, combining and metrics."""
