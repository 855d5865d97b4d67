"""Agent-side SDK: build, validate and publish usage events; provider adapters; the enforcement guard.

Kept import-light on purpose: importing ``producers`` must not pull in Kafka or Avro. Import submodules
(``producers.adapters``, ...) directly.
"""
