"""Corpus mode: datasets of many texts, jobs that analyse them in batches, dataset-level head statistics.

Imports app.inspect, never FastAPI. What crosses the boundary: dataset ids and texts in, per-head
statistics (mean, std, n, bootstrap CI), top examples and averaged similarity out.
"""
