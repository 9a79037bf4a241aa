"""The standing fault suite, ``tetik chaos`` (see docs/chaos.md).

Real servers, injected faults (engine SIGKILLs, Redis frozen or restarted, the
broker restarted or slow, poison events), and every action the engine emits
compared with what ``tetik replay`` computes from the same log.

Modules: ``workload`` (rules, clickstream, poison), ``feed`` (the storefront
thread), ``watch`` (reads actions and dead letters), ``child`` (the engine
process), ``servers`` (fresh servers per scenario), ``run`` (one deployment),
``compare`` (the pure tally), ``scenarios``, ``report`` and ``cli``.
"""
