"""The live dataflow: Kafka events -> shards of shoppers (state and timers in Redis) -> actions."""
