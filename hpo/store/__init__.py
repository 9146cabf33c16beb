"""Store: where studies live (SQLite, PostgreSQL, the gRPC proxy), with retries, heartbeats and the start lock."""
