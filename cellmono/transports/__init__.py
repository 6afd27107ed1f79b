"""Broker transports: `brokers` (what they share), `jetstream` + `nats` (NATS, JetStream for durable subjects), `redis_pubsub` + `redis` (Redis/Valkey, Streams for durable subjects)."""

__all__: list[str] = []
