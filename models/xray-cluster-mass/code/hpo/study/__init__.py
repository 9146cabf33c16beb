"""Study: storages (with retries and heartbeats), samplers and pruners by name, the worker loop,
the launchers (local processes, docker containers), the storage proxy and status."""
