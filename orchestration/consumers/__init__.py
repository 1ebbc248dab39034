"""Kafka consumers built from small arroyo processing steps (one step per file in steps/)."""
