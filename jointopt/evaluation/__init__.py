"""Scoring a Policy on a dataset: one drive path, and the statistics of its results."""
