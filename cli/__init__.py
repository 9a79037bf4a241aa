"""The ``tetik`` command line: the entry point (main.py) and the commands that need
more than a line of wiring (rules.py, deliver.py)."""
