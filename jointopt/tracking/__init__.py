"""Observers of a study: MLflow runs, plots and reports."""
