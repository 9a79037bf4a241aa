"""tetik flows."""
