"""Redis-backed stores: shopper states and timers, the outbox, deliveries, rules, deployment."""
