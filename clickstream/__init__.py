"""The seeded, calibrated clickstream generator (events for demos, benches and tests)."""
