"""Shared fixtures: an isolated MEDSCALE_HOME, a tiny random Qwen3, and the real data under ../shared."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEDSCALE_SHARED", REPO.parent / "shared"))
REALDATA = SHARED / "realdata"
QWEN3_TOKENIZER = REALDATA / "qwen3_tokenizer"


def needs_realdata(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the test cleanly when it is absent."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/realdata is optional)")
    return path


_ISOLATED = ("MEDSCALE_SHARED", "MEDSCALE_TEST_PG_URL")


def pytest_configure(config):
    """Before any fixture, of any scope, runs: this whole process (and every process, Ray worker or SLURM job it
    starts) gets a throwaway MEDSCALE_HOME, and none of the person's own medscale settings (a registry URL pointing
    at their team's PostgreSQL, say). Tests must never touch the user's home or registry."""
    import tempfile

    for key in [k for k in os.environ if k.startswith("MEDSCALE_") and k not in _ISOLATED]:
        del os.environ[key]
    os.environ["MEDSCALE_HOME"] = tempfile.mkdtemp(prefix="medscale-test-home-")


@pytest.fixture(autouse=True)
def medscale_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDSCALE_HOME", str(home))
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from medscale.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(needs_realdata("qwen3_tokenizer"))


def cli(*args: str, env: dict | None = None, input: str | None = None):
    """Run `medscale ARGS` in this process (typer's CliRunner): `.returncode`, `.stdout`, `.stderr` like run_cli,
    without a Python start-up per call. Use run_cli where a real process is the point (signals, exit codes)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from medscale.cli import app

    r = CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run `python -m medscale.cli ARGS` as a real process; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "medscale.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL for the registry: $MEDSCALE_TEST_PG_URL, else a throwaway server; under CI a missing one fails, never skips."""
    if url := os.environ.get("MEDSCALE_TEST_PG_URL"):
        yield url
        return
    import tempfile

    from pg_server import find_pg_bin, postgres_server

    if find_pg_bin() is None:
        reason = "PostgreSQL binaries not found (apt-get install postgresql, or set MEDSCALE_TEST_PG_URL)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}", pytrace=False)
        pytest.skip(reason)
    with postgres_server(Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))) as url:  # short: unix socket path < 108
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """Each registry test runs on SQLite and on PostgreSQL, starting from an empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    url = request.getfixturevalue("postgres_url")  # only here, so SQLite-only runs never start a server
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)  # every table, alembic_version included
        meta.drop_all(engine)
    finally:
        engine.dispose()
    yield url
