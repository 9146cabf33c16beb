"""Study: storages, samplers and pruners by name, the worker loop, the launcher and status."""
