"""Cache capacity: policy (pure), enforcement and status (SPEC §10)."""
