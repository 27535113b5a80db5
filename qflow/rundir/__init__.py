"""The run directory: lock, write-ahead journal of external resources, state for resume."""
