"""Real multi-process Redis topologies for the tests: a three-master cluster, and a master with a
replica watched by three sentinels. Each runs from its own temporary folder on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import RedisServer, free_port


def _wait(condition: str, check: object, timeout: float = 20) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {condition}")


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterServers:
    """Three redis-server masters joined into one cluster with `redis-cli --cluster create`."""

    def __init__(self) -> None:
        self.nodes = [
            RedisServer("--cluster-enabled", "yes", "--cluster-node-timeout", "2000") for _ in range(3)
        ]
        for node in self.nodes:
            node.port = cluster_port()

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
        _wait(
            "the cluster to be ok",
            lambda: all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes),
        )

    def flush(self) -> None:
        for node in self.nodes:
            node.cli("FLUSHALL")

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
        _wait(
            "the replica to sync",
            lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
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
        _wait("the sentinels to see the replica and each other", self._sentinels_ready)

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
