"""A throwaway PostgreSQL server for the registry tests: initdb + pg_ctl into one short temp dir."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

ROLE, PASSWORD, DATABASE = "medscale", "s3cret-pw", "medscale_test"


class PgServerError(RuntimeError):
    """A PostgreSQL step failed; the message carries the command's output and the server log tail."""


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl (Debian keeps them off PATH), or None when not installed."""
    candidates = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                             check=True).stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (pg_ctl start is retried if another process takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, lines: int = 30) -> str:
    """The end of the server log, for error messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _run(cmd: list[str], log: Path, cwd: Path) -> None:
    """Run one step (as the postgres user when we are root: postgres refuses to run as root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, "LC_ALL": "C"}, timeout=120)
    if r.returncode:
        raise PgServerError(f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout}{r.stderr}\n"
                            f"--- server log tail ({log}) ---\n{_tail(log)}")


@contextlib.contextmanager
def postgres_server(base_dir: Path) -> Iterator[str]:
    """Start a private server in base_dir (keep it short: the socket lives there), yield its SQLAlchemy URL, then stop it and remove base_dir."""
    import psycopg

    base_dir = Path(base_dir).resolve()
    bindir = find_pg_bin()
    if bindir is None:
        raise PgServerError("PostgreSQL binaries not found (install Debian's `postgresql` package)")
    if len(str(base_dir)) + len("/.s.PGSQL.65535") >= 108:
        raise PgServerError(f"{base_dir} is too long for a unix socket path (< 108 chars)")
    base_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(base_dir, pw.pw_uid, pw.pw_gid)
    data, log = base_dir / "data", base_dir / "server.log"
    pg_ctl = str(bindir / "pg_ctl")
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
              "--auth-local=trust", "--auth-host=scram-sha-256"], log, base_dir)
        with open(data / "postgresql.conf", "a") as f:  # fast and private: TCP on loopback only, socket in base_dir
            f.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{base_dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n")
        for attempt in range(3):
            port = _free_port()
            try:
                _run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", f"-p {port}", "start"],
                     log, base_dir)
                started = True
                break
            except PgServerError:
                if attempt == 2:
                    raise
        try:
            with psycopg.connect(host=str(base_dir), port=port, user="postgres", dbname="postgres",
                                 autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
                conn.execute(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        except psycopg.Error as e:
            raise PgServerError(f"creating role/database failed: {e}\n--- server log tail ---\n{_tail(log)}") from e
        yield f"postgresql+psycopg://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
    finally:
        try:
            if started:
                try:
                    _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], log, base_dir)
                except PgServerError:
                    _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], log, base_dir)
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)
