"""The processes that wire it all: `serve` runs an app behind the gateway."""

__all__: list[str] = []
