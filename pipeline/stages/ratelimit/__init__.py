"""Rate limiting: the GCRA (gcra), the configured limits (limits) and the bucket steps (stage)."""
