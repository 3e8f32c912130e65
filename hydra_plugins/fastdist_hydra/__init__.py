"""fastdist's Hydra plugins: the multirun sweeper (:mod:`.compose_once`) and the source
of its typed config schemas (:mod:`.schemas`). Hydra discovers plugins only in the
``hydra_plugins`` namespace, so they live here, beside the ``fastdist`` package."""
