"""sqlrs-engine: prepare reproducible PostgreSQL states and hand out cheap, isolated instances."""

__all__ = ["__version__"]

__version__ = "0.1.0"
