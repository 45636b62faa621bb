"""Inference: generation (greedy, beam, sampling) over any model with a cached step, attention maps."""
