"""Kafka plumbing for every job: the topic layout (topics.py), the producer (producer.py)."""
