"""Fuzzing of the four untrusted-input surfaces: event decoder, rules loader,
expression language and templates (issue 11).

Run short in ``make test`` (a fixed, derandomized set of examples per target) and
long in ``make fuzz`` (``TETIK_FUZZ_EXAMPLES`` examples per target, random, with
failures kept in ``.hypothesis/fuzz`` and replayed first next time). See
:mod:`tests.fuzz.support` for the settings and shared strategies.
"""
