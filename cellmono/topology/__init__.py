"""Where each cell runs: the app's security services, placements, worker processes and replicas."""

__all__: list[str] = []
