"""LLM-native backends as a cellular monolith: typed cells on an in-memory bus, one MCP gateway, sandboxes, capabilities, audit, and promotion to NATS or Redis without code change.

Modules:

- `cellmono.transports.brokers`: What the NATS and Redis transports share: the broker errors, subject namespacing on the wire, dead letters, and the runner that answers requests inline and drains on close.
- `cellmono.transports.nats`: `NatsTransport`: the `Transport` protocol over NATS, core NATS for events and requests, JetStream for durable subjects.
- `cellmono.transports.redis`: `RedisTransport`: the `Transport` protocol over Redis or Valkey: pub/sub for events and requests, Streams with consumer groups for durable subjects."""

__version__ = "0.0.1"
