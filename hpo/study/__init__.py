"""Study: what an Optuna study is made of: creation from a space, samplers and pruners by name, budget, status."""
