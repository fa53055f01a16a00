"""A throwaway one-node SLURM cluster (munged + slurmctld + slurmd in the foreground) for the launcher tests.

Like ../shared/ci-notes/slurm_up.sh (Debian 12, slurm 22.05, no systemd or cgroups), but everything lives in
one short temp dir (munge key and socket, state, spool, logs), the daemons use free ports, and they are
stopped by pid at the end, so a second cluster on the same machine does not collide with this one.

Also a command for trying things by hand:
    python3 tests/slurm_cluster.py /tmp/sl   # prints `export SLURM_CONF=...`; Ctrl-C or kill PID stops it
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "the test cluster runs its daemons as root"
    gone = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if gone:
        return (f"{', '.join(gone)} not installed (apt-get install slurmd slurmctld slurm-client munge)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def write_conf(base: Path, cpus: int, mem_mb: int) -> Path:
    host = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(f"""\
ClusterName=medscale-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket.2
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# CR_CPU: a 2-CPU node is 2 schedulable CPUs whatever its core/thread layout, so one task with
# --cpus-per-task=2 (the launcher of a 2-process DDP job) fits on a 2-core machine.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
# The node's CPUs as written below even where the machine has fewer (a 2-process job needs 2).
SlurmdParameters=config_overrides
# Jobs may be requeued (the scripts requeue themselves on exit 75). slurmctld then holds a requeued job until
# BeginTime = now + AuthInfo's cred_expire + 1 s (121 s by default). Left at the default, as on a real cluster
# (a short cred_expire would also cut the time a step launch may take): tests/test_slurm.py clears the hold.
JobRequeue=1
# Keep finished jobs visible to scontrol/squeue for a while (no accounting database here).
MinJobAge=600
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _wait(cond, timeout: float, what: str, logs: Path) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.2)
    tails = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-2000:] for p in sorted(logs.glob("*.log")))
    raise RuntimeError(f"SLURM test cluster: timed out waiting for {what}{tails}")


@contextlib.contextmanager
def slurm_cluster(base: Path, cpus: int | None = None) -> Iterator[dict]:
    """Start munged, slurmctld and slurmd under `base` (keep it short: the munge socket path must stay under
    108 characters); yield the environment to reach the cluster ({"SLURM_CONF": ...}); stop all at the end."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # munged (user munge) must reach its socket dir; mkdtemp makes 0700
    for d in ("munge", "state", "spool", "log", "run"):
        (base / d).mkdir(parents=True, exist_ok=True)
    shutil.chown(base / "munge", "munge", "munge")
    os.chmod(base / "munge", 0o711)
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))  # a key of our own: /etc/munge is left alone
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    cpus = cpus or max(2, os.cpu_count() or 1)
    mem_mb = int(int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
                 / 1024 * 0.8)
    conf = write_conf(base, cpus, mem_mb)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    log = open(base / "log" / "daemons.out", "ab")
    try:
        procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", _bin("munged"), "--foreground", f"--socket={base}/munge/munge.socket.2",
             f"--key-file={key}", f"--pid-file={base}/munge/munged.pid", f"--log-file={base}/munge/munged.log",
             f"--seed-file={base}/munge/munged.seed"], stdout=log, stderr=log))
        _wait(lambda: (base / "munge" / "munge.socket.2").exists(), 30, "munged", base / "log")
        procs.append(subprocess.Popen([_bin("slurmctld"), "-D", "-f", str(conf)], env=env, stdout=log, stderr=log))
        procs.append(subprocess.Popen([_bin("slurmd"), "-D", "-f", str(conf)], env=env, stdout=log, stderr=log))

        def idle() -> bool:
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"SLURM test cluster: {p.args[0]} exited with {p.returncode}; see {base}/log")
            r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return r.returncode == 0 and "idle" in r.stdout

        _wait(idle, 60, "the node to be idle", base / "log")
        yield {"SLURM_CONF": str(conf)}
    finally:
        # Jobs first (their processes are slurmstepd's children, not ours), then the daemons, newest first.
        if procs and procs[-1].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
            end = time.time() + 30
            while time.time() < end:
                q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        # munged runs under runuser, which forwards the SIGTERM; should it outlive runuser, its pid file names it
        # (checked against its command line, so a reused pid is never hit).
        with contextlib.suppress(OSError, ValueError):
            pid = int((base / "munge" / "munged.pid").read_text().strip())
            if str(base) in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
                os.kill(pid, signal.SIGTERM)
        log.close()


if __name__ == "__main__":
    # SIGINT or SIGTERM stops the cluster (a background `&` job ignores SIGINT: use kill PID).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))
    where = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/slurm_dev")
    with slurm_cluster(where) as e:
        print(f"export SLURM_CONF={e['SLURM_CONF']}", flush=True)
        while True:
            signal.pause()
