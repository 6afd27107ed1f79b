"""Operations: the offline docs site (`docs`, with `pages` and `diagrams`); telemetry, triggers, promotion, runbooks and GenOps join it."""

__all__: list[str] = []
