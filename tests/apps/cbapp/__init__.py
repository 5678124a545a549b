"""The same application, run with ``python -m cbapp``."""
