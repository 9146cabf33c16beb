"""Registry: promotion of a study's best model, and pulling and using registered models."""
