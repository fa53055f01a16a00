"""A throwaway one-node Ray cluster on loopback for the Ray launcher tests (as ../shared/ci-notes/ray_up.sh).

Every port is a free one and the temp dir is new and short (unix socket paths must stay < 108 chars), so it
can run beside other Ray clusters on the same machine. It is stopped by process id: `ray stop` would kill every
Ray process on the machine, other people's clusters included. The processes are found by a marker variable
that `ray start` passes to everything it starts (GCS, raylet, dashboard, workers), plus their descendants.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MARKER = "MEDSCALE_TEST_RAY_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit --address` / JobSubmissionClient
    gcs: str  # 127.0.0.1:PORT, for ray.init(address=...)
    temp_dir: Path
    marker: str

    def processes(self) -> list:
        """This cluster's processes: those carrying our marker, and their descendants."""
        import psutil

        ours: dict[int, psutil.Process] = {}
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARKER) == self.marker:
                    ours[p.pid] = p
                    for c in p.children(recursive=True):
                        ours[c.pid] = c
            except (psutil.Error, OSError):
                continue
        ours.pop(os.getpid(), None)
        return list(ours.values())

    def owns(self, pid: int) -> bool:
        return any(p.pid == pid for p in self.processes())


def _wait_for_dashboard(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray dashboard at {url} did not answer within {timeout:.0f} s")
        time.sleep(1)


def _stop(cluster: RayCluster, grace_s: float = 5) -> None:
    import psutil

    procs = cluster.processes()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2, object_store_bytes: int = 500_000_000, start_timeout: float = 180):
    """Start `ray start --head` on 127.0.0.1 with free ports; yield a RayCluster; stop exactly its processes."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    marker = temp_dir.name
    port, dash = free_port(), free_port()
    # RAY_AUTH_MODE pinned: left unset, `ray start` turns token auth on whenever ~/.ray/auth_token exists (Ray 2.60
    # writes it on the first local `ray.init()`), and then the dashboard answers 401 to every unauthenticated call
    env = {**os.environ, MARKER: marker, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--num-cpus", str(num_cpus),
           "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
           "--metrics-export-port", str(free_port()), "--node-manager-port", str(free_port()),
           "--object-manager-port", str(free_port()), "--temp-dir", str(temp_dir),
           "--object-store-memory", str(object_store_bytes), "--disable-usage-stats"]
    cluster = RayCluster(f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}", temp_dir, marker)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=start_timeout)
        if p.returncode != 0:
            raise RuntimeError(f"ray start failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        _wait_for_dashboard(cluster.dashboard, start_timeout)
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":  # manual use: python tests/ray_cluster.py  (Ctrl-C or SIGTERM stops it)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below on a plain `kill` too
    with ray_cluster() as c:
        print(f"dashboard {c.dashboard}  gcs {c.gcs}  temp {c.temp_dir}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
