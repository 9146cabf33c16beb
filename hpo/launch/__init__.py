"""Launch: the worker loop and what starts workers (local processes, GPU groups, containers, keras-tuner)."""
