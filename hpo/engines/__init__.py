"""Engines: the two search engines' side of a trial, Optuna's objective and keras-tuner's tuner, both on hpo.trial."""
