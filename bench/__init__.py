"""HeadScope benchmark harness: `python -m bench` measures issue 5's targets against baselines run alongside.

Every ratio compares two things timed in the same process, interleaved rep by rep, so machine load
hits both alike; peak memory rows each run in a fresh subprocess (`python -m bench.mem`).
"""
