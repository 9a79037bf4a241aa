"""Fuzzing of the four untrusted-input surfaces: event decoder, rules loader,
expression language and templates (issue 11).

Run short in ``make test`` (a fixed, derandomized set of examples per target) and
long in ``make fuzz`` (``TETIK_FUZZ_EXAMPLES`` examples per target, random, with
failures kept in ``.hypothesis/fuzz`` and replayed first next time). See
:mod:`tests.fuzz.support` for the settings and shared strategies.

Counts and time per target: add ``--hypothesis-show-statistics``, e.g.
``TETIK_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -m fuzz -p no:randomly
tests/fuzz/test_decoder.py --hypothesis-show-statistics``.
"""
