"""The cold path: the flusher that moves usage from Redis to PostgreSQL exactly once."""
