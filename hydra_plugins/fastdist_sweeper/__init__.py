"""fastdist's Hydra sweeper: Hydra's basic sweeper, composing each job's config once."""
