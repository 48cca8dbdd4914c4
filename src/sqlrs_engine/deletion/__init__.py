"""Deleting instances, states and jobs safely (SPEC §6, §4.7, §4.11)."""
