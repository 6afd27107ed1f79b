"""Broker transports: `transports.nats` (NATS + JetStream) and `transports.redis` (Redis/Valkey + Streams)."""

__all__: list[str] = []
