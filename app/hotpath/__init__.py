"""The hot path: validation, the Redis key layout, the ingest script and its callers."""
