"""Training: objectives, learning-rate schedules, one model-agnostic loop, checkpoints, data parallelism."""
