"""The cluster plan behind `examples/deploy/nats/*.conf`: three hosts, JetStream R3, `sync_interval: always`.

Rewrite the configs after editing the plan: `.venv/bin/python examples/deploy/plan.py` (a test fails when the
committed configs differ from what this plan writes)."""
from __future__ import annotations

from pathlib import Path

from cellmono.transports.cluster import ClusterNode, ClusterPlan, cluster_mermaid, node_config

PLAN = ClusterPlan(name="cellmono", nodes=tuple(
    ClusterNode(name=f"n{number}", host=f"nats-{number}", client_port=4222, cluster_port=6222, monitor_port=8222,
                store_dir="/var/lib/nats/jetstream") for number in (1, 2, 3)))


def write(folder: Path = Path(__file__).parent / "nats") -> list[Path]:
    """One config file per node."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for node in PLAN.nodes:
        path = folder / f"{node.name}.conf"
        path.write_text(node_config(PLAN, node.name))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
    print(cluster_mermaid(PLAN, clients=["app, gateways, workers"]))
