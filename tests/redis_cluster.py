"""A real three-node Redis Cluster on loopback for tests: three `redis-server
--cluster-enabled yes` joined with `redis-cli --cluster create` (no replicas)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests import procs


def cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are free and valid too."""
    found: list[int] = []
    rng = random.Random()
    while len(found) < n:
        port = rng.randrange(20_000, 40_000)
        if port not in found and all(_free(p) for p in (port, port + 10_000)):
            found.append(port)
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisClusterProcs:
    def __init__(self, tmp: Path, ports: list[int]) -> None:
        from tests.conftest import redis_server_binary

        self.ports = ports
        for port in ports:
            d = tmp / str(port)
            d.mkdir()
            procs.spawn([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
                         "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                         "--save", "", "--appendonly", "no"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, long_lived=True)
        for port in ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping())
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli (Debian's redis-tools) is needed to join the cluster"
        done = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                               "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # Every node has to know every slot's owner before clients route by the map.
        self._wait(lambda: all(redis.Redis(port=p).cluster("info").get("cluster_state") == "ok" for p in ports))
        self.url = f"redis://127.0.0.1:{ports[0]}/0"

    @staticmethod
    def _wait(cond, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster did not come up")
            time.sleep(0.05)

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.ports[0])

    def node_client(self, key: str) -> redis.Redis:
        """A plain client on the one node that holds `key`'s hash slot."""
        node = self.client().get_node_from_key(key)
        return redis.Redis(host=node.host, port=node.port)
