"""The security layer, in dependency order: `files` (private atomic files, shared SQLite), `capabilities`
(the grammar and `Roles`, the one role resolver), `signing` (the Ed25519 key ring), `tokens` (signed,
attenuable capability tokens), `guard` (enforcement on every delivery, `[security]` settings), `records`
(the one audit record and its builder), `chain` (hash chain, anchors, verification), `audit` (the log in
SQLite), `keys` (key-encryption keys and their rotation) and `store` (the encrypted store per namespace)."""

__all__: list[str] = []
