"""Operations: the offline docs site (telemetry, triggers, promotion, runbooks and GenOps join it)."""

__all__: list[str] = []
