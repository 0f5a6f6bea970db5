"""A Ray cluster of two nodes on loopback, for the cluster tests: `python ray_nodes.py`.

Run as a child of the test (never imported by it), so that the test process is no Ray driver:
it prints one JSON line (the head's address and both node ids), then obeys lines on stdin:
`kill b` removes node B (its raylet and every worker on it, as a machine lost), `stop` shuts
the whole cluster down (as the cluster going away). Node A, the head, has 2 logical CPUs and the
label `mmserve-test/node=a`; node B has 1 CPU and `mmserve-test/node=b`. Both listen on
127.0.0.1 only, with a small object store (the tests move only small objects). With
`--client-port N` the head also runs a Ray Client server on that port (`ray://127.0.0.1:N`).
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster

LABEL = "mmserve-test/node"
OBJECT_STORE = 80 * 2**20  # bytes; Ray's minimum is 75 MiB


def node_args(label: str, cpus: int) -> dict[str, object]:
    return {
        "num_cpus": cpus,
        "labels": {LABEL: label},
        "object_store_memory": OBJECT_STORE,
        "node_ip_address": "127.0.0.1",
        "include_dashboard": False,
    }


def main() -> None:
    head_args = node_args("a", 2)
    if len(sys.argv) > 1:  # --client-port N: the head also serves Ray Client (ray://) there
        head_args["ray_client_server_port"] = int(sys.argv[2])
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    node_b = cluster.add_node(**node_args("b", 1))
    cluster.wait_for_nodes()
    head = cluster.head_node
    print(
        json.dumps({"address": cluster.address, "a": head.node_id, "b": node_b.node_id}),
        flush=True,
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "kill b":
            cluster.remove_node(node_b, allow_graceful=False)
        elif command == "stop":
            cluster.shutdown()
            print(json.dumps({"stopped": True}), flush=True)
            return
        print(json.dumps({"done": command}), flush=True)
    cluster.shutdown()  # the test went away without saying stop


if __name__ == "__main__":
    main()
