"""Trial: one training run of one config from start to end, for any engine, recorded or not."""
