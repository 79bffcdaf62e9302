"""Difficulty sources: how an input gets its bin (label, probe, predictor, oracle)."""
