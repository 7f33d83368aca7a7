"""The Ray pool's view of the cluster, on a real two-node `ray.cluster_utils.Cluster`."""

from __future__ import annotations

import ray

from fpnstream.cluster.ray_pool import room_for


def test_room_for_a_worker_is_free_resources_of_one_node_not_their_sum():
    """Two 1-CPU nodes, each 0.6 taken: 0.8 CPU is free in all, but no node can place a
    0.6-CPU worker, and the pool must not start one (it was never placed and, joining for
    ever, held the pool's growth back)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="ERROR")

        @ray.remote(num_cpus=0.6)
        class Tenant:
            def node(self) -> str:
                return ray.get_runtime_context().get_node_id()

        tenants = [Tenant.options(scheduling_strategy="SPREAD").remote() for _ in range(2)]
        assert len(set(ray.get([t.node.remote() for t in tenants]))) == 2  # one on each node
        assert abs(ray.available_resources()["CPU"] - 0.8) < 1e-6  # the sum would have said yes
        assert not room_for({"CPU": 0.6}) and not room_for({"CPU": 0.6, "GPU": 0})
        assert room_for({"CPU": 0.4})  # what one node has left
        assert not room_for({"CPU": 0.4, "GPU": 1})  # and no node has a GPU
        for t in tenants:
            ray.kill(t)
    finally:
        ray.shutdown()
        cluster.shutdown()
