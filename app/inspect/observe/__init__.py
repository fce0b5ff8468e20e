"""Observation: what one run shows without changing it (metrics, roles, similarity, logit lens, DLA, token view)."""
