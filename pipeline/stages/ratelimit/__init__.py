"""Rate limiting: the configured limits (limits) and the bucket steps (stage); the GCRA itself is
:mod:`pipeline.gcra`, shared with the scheduler and the callbacks stage."""
