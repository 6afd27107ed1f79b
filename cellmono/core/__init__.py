"""The core layer: envelope, subjects, the transport protocol and its memory transport, the bus, settings, cells and the app."""

__all__: list[str] = []
