"""`POST /v1/runs` (SPEC §5): request validation (pure) and the streamed run executor."""
