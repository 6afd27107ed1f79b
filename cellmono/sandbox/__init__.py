"""The sandbox layer: policies, host tools and the WASM, bubblewrap and gVisor backends that run risky code."""

__all__: list[str] = []
