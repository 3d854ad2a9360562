"""Real multi-process Redis topologies: a three-master cluster, and a master with a replica watched by
three sentinels. Each runs from its own temporary folders on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from testkit.ports import cluster_port, free_port
from testkit.redis_server import RedisServer
from testkit.waiting import eventually_sync

__all__ = ["ClusterServers", "SentinelServers"]

# redis-cli fails while a server is still coming up or failing over: "not yet", not an error.
NOT_YET = (subprocess.SubprocessError, OSError)


class ClusterServers:
    """Three redis-server masters joined into one cluster with `redis-cli --cluster create`."""

    def __init__(self, *extra_args: str) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", *extra_args, port=cluster_port()
            )
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        eventually_sync(
            lambda: all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes),
            "every node reports cluster_state:ok",
            timeout=20,
            ignoring=NOT_YET,
        )

    def flush(self) -> None:
        for node in self.nodes:
            node.cli("FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class SentinelServers:
    """A master, one replica, and three sentinels watching them as `mymaster`."""

    master_name = "mymaster"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer()
        self.directory = Path(tempfile.mkdtemp(prefix="redis-sentinel-"))
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        self.master.start()
        self.replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica.start()
        eventually_sync(
            lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
            "the replica has synced with the master",
            timeout=20,
            ignoring=NOT_YET,
        )
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.directory}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(config), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        eventually_sync(
            self._sentinels_ready,
            "every sentinel sees the replica and the other two sentinels",
            timeout=20,
            ignoring=NOT_YET,
        )

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            info = self.sentinel_cli(port, "SENTINEL", "MASTER", self.master_name)
            fields = info.split("\n")
            values = dict(zip(fields[::2], fields[1::2], strict=False))
            if values.get("num-slaves") != "1" or values.get("num-other-sentinels") != "2":
                return False
        return True

    def sentinel_cli(self, port: int, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5, check=True
        )
        return result.stdout.strip()

    def current_master_port(self) -> int:
        reply = self.sentinel_cli(
            self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(reply.split()[1])

    def cleanup(self) -> None:
        for process in self.sentinels:
            process.kill()
            process.wait(timeout=10)
        self.master.cleanup()
        self.replica.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)
