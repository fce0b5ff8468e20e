"""Interventions: rows run by the engine (ablation, the sweep, importance, pruning, patching) and generation."""
