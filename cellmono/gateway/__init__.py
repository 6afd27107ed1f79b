"""The DMZ gateway: MCP over HTTP and stdio, authentication, limits, metrics and its bridge to the security layer."""

__all__: list[str] = []
