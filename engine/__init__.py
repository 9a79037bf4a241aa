"""tetik engine."""
