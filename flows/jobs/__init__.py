"""The jobs behind the command line: run, deliver, ingest, produce, replay, demo, state."""
