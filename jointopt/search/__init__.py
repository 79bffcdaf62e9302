"""The study: config, search space, objective, Optuna study, workers, record, compare."""
