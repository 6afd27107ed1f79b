"""The security layer: capabilities and roles, signed tokens, the guard on every delivery, the hash-chained audit log and the encrypted store."""

__all__: list[str] = []
