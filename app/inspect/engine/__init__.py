"""The intervention engine: hook contexts, head gates, resume-from-block, batched rows, next-token statistics,
runs and their cache, and the protocol for work done in slices."""
