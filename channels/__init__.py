"""tetik channels."""
