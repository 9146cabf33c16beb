"""Launch: `hpo launch` (launcher, its checks, the optuna and keras-tuner engines' launches), what
starts workers (worker_processes: local processes, containers), what supervises them (supervisor,
worker_group), and the worker loop (worker)."""
