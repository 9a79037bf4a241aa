"""tetik bench."""
